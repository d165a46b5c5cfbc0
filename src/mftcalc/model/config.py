"""Model configuration: dataclasses for the backbone and heads, and the named size presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from mftcalc.schema import option


@dataclass
class BackboneConfig:
    """DPA3-style backbone sizes and cutoffs (lengths in Å).

    ``n_dim``/``e_dim``/``a_dim``: widths of node, edge and angle features. ``e_rcut``/``a_rcut``: edge and angle
    cutoffs, with the switch starting at ``*_rcut_smth``. ``a_compress``: number of node channels (and, unless
    ``a_compress_e`` is set, edge channels) fed to the angle block (DPA3's ``a_compress_use_split``; 0 = all).
    ``a_compress_e``: number of edge channels fed to the angle block when it differs from ``a_compress`` (0 = as
    ``a_compress``; DPA3's ``a_dim / (2 c) · c_e``). ``a_compress_linear``: compress with bias-free linear maps to
    those widths instead of taking the first channels (DPA3 with ``a_compress_use_split: false``).
    ``e_sel_norm``/``a_sel_norm``: normalisation constants of the edge->node and angle->edge sums (DPA3's
    ``sel / sel_reduce_factor``). ``switch``: ``poly`` (quintic, 1 below ``*_rcut_smth``) or ``exp`` (deepmd-kit's
    ``use_exp_switch``), for the edge, angle and environment weights. ``edge_std``/``h2_std``: the edge input
    ``s/r`` and the equivariant ``s·r⃗/r²`` are divided by these constants (DPA3's ``fix_stat_std``, 0.3 there; 1 =
    no normalisation). ``activation``: ``silut:T`` (also ``custom_silu:T``), ``silu`` or ``tanh``.
    ``angle_backend``: implementation of the angle block (``auto`` takes the fused C++ operator when it builds,
    on CPU).
    """

    n_dim: int = option(64, "width of the node features")
    e_dim: int = option(32, "width of the edge features")
    a_dim: int = option(16, "width of the angle features")
    n_layers: int = option(6, "repflow layers")
    e_rcut: float = option(6.0, "edge cutoff (Å)")
    e_rcut_smth: float = option(5.0, "the edge switch starts here (Å)")
    a_rcut: float = option(4.0, "angle cutoff (Å)")
    a_rcut_smth: float = option(3.5, "the angle switch starts here (Å)")
    axis_neuron: int = option(4, "axis channels of the grrg symmetrisation (node update)")
    a_compress: int = option(0, "node (and, unless a_compress_e is set, edge) channels fed to the angle block "
                                "(DPA3's a_compress_use_split; 0 = all)")
    update_residual: float = option(0.1, "initial scale of the residual update weights")
    activation: str = option("silut:10", "'silut:T' (also 'custom_silu:T'), 'silu' or 'tanh'")
    e_sel_norm: float = option(12.0, "normalisation of the edge -> node sums (DPA3's sel / sel_reduce_factor)")
    a_sel_norm: float = option(4.0, "normalisation of the angle -> edge sums")
    n_types: int = option(119, "element types of the embedding")
    angle_backend: str = option("auto", "'auto' (the fused C++ operator when it builds, on CPU), 'fused' or "
                                        "'reference' (plain torch); same values")
    switch: str = option("poly", "'poly' (quintic, 1 below *_rcut_smth) or 'exp' (deepmd-kit's use_exp_switch)")
    edge_std: float = option(1.0, "the edge input s/r is divided by this (DPA3's fix_stat_std, 0.3 there; 1 = none)")
    h2_std: float = option(1.0, "the equivariant input s·r⃗/r² is divided by this")
    a_compress_e: int = option(0, "edge channels fed to the angle block when they differ from a_compress (0 = as "
                                  "a_compress)")
    a_compress_linear: bool = option(False, "compress with bias-free linear maps instead of taking the first "
                                            "channels (DPA3's a_compress_use_split: false)")

    def __post_init__(self) -> None:
        if self.switch not in ("poly", "exp"):
            raise ValueError(f"backbone switch {self.switch!r} is not known; use 'poly' (quintic) or 'exp' "
                             "(deepmd-kit's use_exp_switch)")
        if not (self.edge_std > 0 and self.h2_std > 0):
            raise ValueError(f"backbone edge_std and h2_std must be > 0 (got {self.edge_std}, {self.h2_std}); "
                             "1.0 means no environment normalisation, DPA3's fix_stat_std is 0.3")
        if self.a_compress < 0 or self.a_compress_e < 0:
            raise ValueError("backbone a_compress and a_compress_e must be >= 0 (0 = all channels / as a_compress)")
        if self.a_compress_linear and self.a_compress == 0:
            raise ValueError("backbone a_compress_linear needs a_compress > 0 (the width the linear map compresses "
                             "node features to)")


@dataclass
class HeadConfig:
    """One head. ``kind``: ``forcefield`` | ``scalar`` | ``group`` | ``dipole`` | ``r2`` | ``knn_ood`` | ``interval``.

    ``extensive`` (scalar heads): sum over atoms, else mean. ``element_bias``: add a per-element bias fitted by
    least squares. ``unit``: unit of the head's output. ``n_datasets``: size of the dataset (case) embedding of a
    force-field head. ``resnet_dt``: hidden layers with deepmd-kit's timestep residuals (``MLP``); False for
    checkpoints written before the option existed. ``deepmd_fitting``: hidden layers exactly as deepmd-kit's
    fitting net (skip on equal/doubled widths always, ``idt`` only on those layers when ``resnet_dt``); False keeps
    mftcalc's first layout (``idt`` on every hidden layer with ``resnet_dt``, no skip without it).
    ``of``, ``score``, ``coverage`` (``interval`` heads): the half-width of a split-conformal prediction interval
    of property head ``of`` at ``coverage`` (e.g. 0.9), scaled by the applicability head ``score``
    (:mod:`mftcalc.model.intervals`). ``frame_params`` (scalar heads): ``{name: unit}`` of the per-structure
    conditions the head reads beside the structure (temperature, pressure, charge, ...;
    :mod:`mftcalc.data.frame_params`); empty for none. ``group`` heads predict one value per assembly of
    component structures (:mod:`mftcalc.data.assembly`): the components' mean node features, reduced over the
    group by their weights (``group_reduce``: ``mean`` = weighted mean, ``sum`` = weighted sum), then an MLP;
    they read frame parameters like scalar heads (one value per group).
    """

    kind: str = "scalar"
    unit: str = ""
    hidden: Tuple[int, ...] = (240, 240, 240)
    activation: str = "tanh"
    extensive: bool = False
    element_bias: bool = True
    n_datasets: int = 1
    resnet_dt: bool = False
    deepmd_fitting: bool = False
    of: str = ""
    score: str = ""
    coverage: float = 0.0
    frame_params: Dict[str, str] = field(default_factory=dict)
    group_reduce: str = "mean"

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        self.frame_params = {str(k): str(v) for k, v in dict(self.frame_params or {}).items()}
        if self.frame_params and self.kind not in ("scalar", "group"):
            raise ValueError(f"frame parameters {sorted(self.frame_params)} are read by scalar and group property "
                             f"heads only; a {self.kind!r} head takes none")
        if self.group_reduce not in ("mean", "sum"):
            raise ValueError(f"group_reduce must be 'mean' (weighted mean of the components) or 'sum' (weighted "
                             f"sum), got {self.group_reduce!r}")
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; use one of {', '.join(HEAD_KINDS)}")
        if self.kind == "interval" and not (self.of and self.score and 0.0 < float(self.coverage) < 1.0):
            raise ValueError(f"an interval head needs the property it bounds (of), the applicability head that "
                             f"scales it (score) and a coverage in (0, 1); got of={self.of!r}, "
                             f"score={self.score!r}, coverage={self.coverage!r}")


HEAD_KINDS = ("forcefield", "scalar", "group", "dipole", "r2", "knn_ood", "interval")


@dataclass
class ModelConfig:
    """Backbone plus named heads; ``datasets`` names the force-field datasets in embedding order."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    heads: Dict[str, HeadConfig] = field(default_factory=dict)
    datasets: List[str] = field(default_factory=lambda: ["default"])

    def to_dict(self) -> Dict[str, Any]:
        return {"backbone": asdict(self.backbone),
                "heads": {k: asdict(v) for k, v in self.heads.items()},
                "datasets": list(self.datasets)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelConfig":
        return cls(backbone=BackboneConfig(**data["backbone"]),
                   heads={k: HeadConfig(**v) for k, v in data["heads"].items()},
                   datasets=list(data["datasets"]))


PRESETS: Dict[str, Dict[str, Any]] = {
    # the CPU default: 3 layers and a 3.5 Å angle cutoff cut the per-angle work to ~0.36x of "dpa3-small"
    "cpu": dict(n_dim=64, e_dim=32, a_dim=16, n_layers=3, a_rcut=3.5, a_rcut_smth=3.0),
    # DPA3's small configuration (deepmd-kit 64/32/16 x 6, a_rcut 4 Å): the size of the speed comparisons
    "dpa3-small": dict(n_dim=64, e_dim=32, a_dim=16, n_layers=6, a_rcut=4.0, a_rcut_smth=3.5),
    # DPA3 paper size
    "paper": dict(n_dim=128, e_dim=64, a_dim=32, n_layers=16, a_rcut=4.0, a_rcut_smth=3.5),
    # DPA-3.1-3M (deepmd-kit v3.1, the OpenLAM foundation model of the paper), as published in deepmd-kit's
    # dpa_adapt defaults: 128/64/32 x 16, e_rcut 6 (smth 5.3), a_rcut 4 (smth 3.5), split compression
    # a_compress_rate 1 / a_compress_e_rate 2 (32 node and 32 edge channels), dynamic sel 1200/300 with
    # sel_reduce_factor 10 (norms 120/30), silut:3.0, exp switch, fix_stat_std 0.3; head: deepmd_forcefield_head()
    "dpa3-3.1-3m": dict(n_dim=128, e_dim=64, a_dim=32, n_layers=16, e_rcut=6.0, e_rcut_smth=5.3, a_rcut=4.0,
                        a_rcut_smth=3.5, axis_neuron=4, a_compress=32, a_compress_e=32, update_residual=0.1,
                        activation="silut:3.0", e_sel_norm=120.0, a_sel_norm=30.0, switch="exp", edge_std=0.3,
                        h2_std=0.3),
    # tiny, for tests
    "tiny": dict(n_dim=16, e_dim=8, a_dim=8, n_layers=2, e_rcut=4.0, e_rcut_smth=3.0, a_rcut=3.0, a_rcut_smth=2.5),
}


def backbone_preset(name: str, **overrides: Any) -> BackboneConfig:
    """Backbone config of a named preset (``cpu``, ``dpa3-small``, ``paper``, ``dpa3-3.1-3m``, ``tiny``) with
    optional overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    values: Dict[str, Any] = dict(PRESETS[name])
    values.update(overrides)
    return BackboneConfig(**values)


def default_forcefield_head(n_datasets: int = 1, hidden: Optional[Tuple[int, ...]] = None) -> HeadConfig:
    """Force-field head config (energy in eV)."""
    return HeadConfig(kind="forcefield", unit="eV", hidden=hidden or (128, 128), activation="silu",
                      extensive=True, element_bias=True, n_datasets=n_datasets)


def deepmd_forcefield_head(n_datasets: int = 1, hidden: Tuple[int, ...] = (240, 240, 240),
                           activation: str = "silut:3.0") -> HeadConfig:
    """Force-field head shaped as deepmd-kit's energy fitting net (energy in eV): by default DPA-3.1-3M's
    ``neuron [240, 240, 240]``, ``resnet_dt``, ``silut:3.0``, with the dataset one-hot as its case embedding."""
    return HeadConfig(kind="forcefield", unit="eV", hidden=hidden, activation=activation, extensive=True,
                      element_bias=True, n_datasets=n_datasets, resnet_dt=True, deepmd_fitting=True)
