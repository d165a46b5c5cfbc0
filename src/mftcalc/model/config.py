"""Model configuration: dataclasses for the backbone and heads, and the named size presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class BackboneConfig:
    """DPA3-style backbone sizes and cutoffs (lengths in Å).

    ``n_dim``/``e_dim``/``a_dim``: widths of node, edge and angle features. ``e_rcut``/``a_rcut``: edge and angle
    cutoffs, with the switch starting at ``*_rcut_smth``. ``a_compress``: number of node and edge channels fed to
    the angle block (DPA3's ``a_compress_use_split``; 0 = all). ``e_sel_norm``/``a_sel_norm``: normalisation
    constants of the edge->node and angle->edge sums (DPA3's ``sel / sel_reduce_factor``). ``angle_backend``:
    implementation of the angle block (``auto`` takes the fused C++ operator when it builds, on CPU).
    """

    n_dim: int = 64
    e_dim: int = 32
    a_dim: int = 16
    n_layers: int = 6
    e_rcut: float = 6.0
    e_rcut_smth: float = 5.0
    a_rcut: float = 4.0
    a_rcut_smth: float = 3.5
    axis_neuron: int = 4
    a_compress: int = 0
    update_residual: float = 0.1
    activation: str = "silut:10"
    e_sel_norm: float = 12.0
    a_sel_norm: float = 4.0
    n_types: int = 119
    angle_backend: str = "auto"   # "auto" | "fused" (C++ op) | "reference" (plain torch); same values


@dataclass
class HeadConfig:
    """One head. ``kind``: ``forcefield`` | ``scalar`` | ``dipole`` | ``r2``.

    ``extensive`` (scalar heads): sum over atoms, else mean. ``element_bias``: add a per-element bias fitted by
    least squares. ``unit``: unit of the head's output. ``n_datasets``: size of the dataset (case) embedding of a
    force-field head. ``resnet_dt``: hidden layers with deepmd-kit's timestep residuals (``MLP``); False for
    checkpoints written before the option existed.
    """

    kind: str = "scalar"
    unit: str = ""
    hidden: Tuple[int, ...] = (240, 240, 240)
    activation: str = "tanh"
    extensive: bool = False
    element_bias: bool = True
    n_datasets: int = 1
    resnet_dt: bool = False

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        if self.kind not in ("forcefield", "scalar", "dipole", "r2", "knn_ood"):
            raise ValueError(f"unknown head kind {self.kind!r}; use forcefield, scalar, dipole, r2 or knn_ood")


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
    # tiny, for tests
    "tiny": dict(n_dim=16, e_dim=8, a_dim=8, n_layers=2, e_rcut=4.0, e_rcut_smth=3.0, a_rcut=3.0, a_rcut_smth=2.5),
}


def backbone_preset(name: str, **overrides: Any) -> BackboneConfig:
    """Backbone config of a named preset (``cpu``, ``paper``, ``tiny``) with optional overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    values: Dict[str, Any] = dict(PRESETS[name])
    values.update(overrides)
    return BackboneConfig(**values)


def default_forcefield_head(n_datasets: int = 1, hidden: Optional[Tuple[int, ...]] = None) -> HeadConfig:
    """Force-field head config (energy in eV)."""
    return HeadConfig(kind="forcefield", unit="eV", hidden=hidden or (128, 128), activation="silu",
                      extensive=True, element_bias=True, n_datasets=n_datasets)
