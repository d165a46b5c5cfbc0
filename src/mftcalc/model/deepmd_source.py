"""Reading a deepmd-kit PyTorch training checkpoint: its tensors, each branch's model parameters (``shared_dict``
references resolved) and their translation to mftcalc options, refusing by name what mftcalc cannot reproduce.

Needs no deepmd-kit. The format read is what ``dp --pt train`` writes (``torch.save({"model": state_dict, ...})``,
``state_dict["_extra_state"] = {"model_params", "train_infos"}``, tensors under ``model.<branch>.atomic_model.``;
single-task files have the one branch ``Default``). Keys missing from the stored parameters take deepmd-kit 3.2's
argcheck defaults (``*_DEFAULTS`` below) and are listed in :attr:`BranchSpec.assumed`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from mftcalc.filehash import sha256_file
from mftcalc.model.config import BackboneConfig

REPFLOW_DEFAULTS: Dict[str, Any] = dict(
    n_dim=128, e_dim=64, a_dim=64, nlayers=6, a_compress_rate=0, a_compress_e_rate=1, a_compress_use_split=False,
    n_multi_edge_message=1, axis_neuron=4, fix_stat_std=0.3, update_angle=True, update_style="res_residual",
    update_residual=0.1, update_residual_init="const", optim_update=True, smooth_edge_update=False,
    edge_init_use_dist=False, use_exp_switch=False, use_dynamic_sel=False, sel_reduce_factor=10.0,
    sequential_update=False)
DPA3_DEFAULTS: Dict[str, Any] = dict(
    concat_output_tebd=False, add_chg_spin_ebd=False, activation_function="silu", precision="default",
    exclude_types=[], env_protection=0.0, use_econf_tebd=False, use_tebd_bias=False)
ENER_DEFAULTS: Dict[str, Any] = dict(
    type="ener", numb_fparam=0, numb_aparam=0, dim_case_embd=0, neuron=[120, 120, 120], activation_function="tanh",
    precision="default", resnet_dt=True, atom_ener=[], exclude_types=[])
MODEL_DEFAULTS: Dict[str, Any] = dict(type="standard", pair_exclude_types=[], atom_exclude_types=[],
                                      bridging_method="none")
REQUIRED_REPFLOW = ("e_rcut", "e_rcut_smth", "e_sel", "a_rcut", "a_rcut_smth", "a_sel")


class DeepmdImportError(ValueError):
    """A deepmd-kit checkpoint that cannot be read or holds an option mftcalc does not reproduce (named)."""


@dataclass
class DeepmdCheckpoint:
    """A deepmd-kit training checkpoint as read from disk.

    ``tensors``: the model state dict without ``_extra_state`` (names ``model.<branch>.atomic_model....``).
    ``branch_params``: each branch's model parameters with ``shared_dict`` references resolved, in file order.
    ``train_infos``: ``{"lr": ..., "step": ...}`` as stored. ``has_ema``: the file also holds EMA shadow weights.
    """

    path: Path
    sha256: str
    tensors: Dict[str, Tensor]
    branch_params: Dict[str, Dict[str, Any]]
    multi_task: bool
    train_infos: Dict[str, Any]
    has_ema: bool


@dataclass
class FittingSpec:
    """The energy fitting net of a branch: hidden widths, activation (mftcalc name), ``resnet_dt`` and the width
    of its case embedding (0 = none)."""

    hidden: Tuple[int, ...]
    activation: str
    resnet_dt: bool
    dim_case_embd: int


@dataclass
class BranchSpec:
    """What a branch translates to: the backbone config, the fitting net, the type map with its atomic numbers,
    ``caveats`` (what mftcalc does differently in some inputs) and ``assumed`` (keys absent, defaults taken)."""

    backbone: BackboneConfig
    fitting: FittingSpec
    type_map: List[str]
    numbers: List[int]
    precision: str
    caveats: List[str] = field(default_factory=list)
    assumed: List[str] = field(default_factory=list)


def read_deepmd_checkpoint(path: Any) -> DeepmdCheckpoint:
    """Load a deepmd-kit ``.pt`` training checkpoint (``weights_only=True``: no code in the file runs).

    Raises :class:`DeepmdImportError` for frozen ``.pth`` models, unreadable files and files without deepmd-kit's
    ``_extra_state.model_params``, naming the file and what to pass instead.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"deepmd-kit checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # frozen TorchScript files, truncated zips, foreign pickles
        hint = (" It looks like a frozen model (`dp --pt freeze` output, TorchScript); import the training "
                "checkpoint (model.ckpt-*.pt / model.ckpt.pt) instead." if path.suffix == ".pth" else "")
        raise DeepmdImportError(f"{path} is not a readable deepmd-kit PyTorch checkpoint "
                                f"({type(exc).__name__}: {exc}).{hint}") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not isinstance(state.get("_extra_state"), dict) \
            or "model_params" not in state["_extra_state"]:
        raise DeepmdImportError(f"{path} is not a deepmd-kit training checkpoint: it has no "
                                "_extra_state.model_params (written by `dp --pt train`); frozen .pth files and "
                                "TensorFlow/JAX models cannot be imported")
    extra = state["_extra_state"]
    params = extra["model_params"]
    tensors = {k: v for k, v in state.items() if k != "_extra_state" and isinstance(v, Tensor)}
    multi_task = "model_dict" in params
    branch_params = resolve_branches(params) if multi_task else {"Default": copy.deepcopy(params)}
    return DeepmdCheckpoint(path=path, sha256=sha256_file(path), tensors=tensors, branch_params=branch_params,
                            multi_task=multi_task, train_infos=dict(extra.get("train_infos", {})),
                            has_ema=isinstance(payload, dict) and "ema" in payload)


def resolve_branches(params: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Each branch of a multi-task ``model_params`` with string references into ``shared_dict`` (``"name"`` or
    ``"name:level"``) replaced by the shared entry (deepmd-kit's ``preprocess_shared_params`` does the same before
    training; stored files usually hold the result already)."""
    shared = params.get("shared_dict", {}) or {}
    out: Dict[str, Dict[str, Any]] = {}
    for branch, bp in params["model_dict"].items():
        bp = copy.deepcopy(bp)
        for key in ("type_map", "descriptor", "fitting_net"):
            ref = bp.get(key)
            if isinstance(ref, str):
                name = ref.split(":")[0]
                if name not in shared:
                    raise DeepmdImportError(f"branch {branch!r}: its {key} refers to shared_dict entry {name!r}, "
                                            f"which the file does not hold (it has {sorted(shared)})")
                bp[key] = copy.deepcopy(shared[name])
        out[branch] = bp
    return out


def _opt(section: Mapping[str, Any], key: str, defaults: Mapping[str, Any], where: str, assumed: List[str]) -> Any:
    if key in section:
        return section[key]
    assumed.append(f"{where}.{key} = {defaults[key]!r} (absent; deepmd-kit 3.2 default)")
    return defaults[key]


def activation_name(name: str, where: str) -> str:
    """mftcalc's name of a deepmd-kit activation: ``tanh``, ``silu``, ``silut:T`` (from ``silut[:T]`` or
    ``custom_silu[:T]``, T = 3 when absent, as in deepmd-kit); others are refused by name."""
    key = str(name).strip().lower()
    if key in ("tanh", "silu"):
        return key
    base, _, value = key.partition(":")
    if base in ("silut", "custom_silu"):
        return f"silut:{float(value) if value else 3.0!r}"
    raise DeepmdImportError(f"{where} activation_function {name!r} is not supported by mftcalc (tanh, silu, "
                            "silut:T / custom_silu:T are); the model cannot be imported")


def refuse(condition: bool, what: str) -> None:
    """Raise :class:`DeepmdImportError` saying ``what`` is unsupported when ``condition`` holds."""
    if condition:
        raise DeepmdImportError(f"unsupported deepmd-kit option: {what}. mftcalc reproduces standard DPA3 energy "
                                "models only; this checkpoint cannot be imported")


def atomic_numbers_of(type_map: List[str]) -> List[int]:
    """Atomic number of each deepmd-kit type name (element symbols, case as written); unknown or repeated names
    are refused."""
    from ase.data import atomic_numbers
    out = []
    for name in type_map:
        if name not in atomic_numbers or atomic_numbers[name] == 0:
            raise DeepmdImportError(f"type_map entry {name!r} is not an element symbol; mftcalc indexes atoms by "
                                    "atomic number, so every type must be named by its element (e.g. 'O', 'Cu')")
        out.append(atomic_numbers[name])
    if len(set(out)) != len(out):
        raise DeepmdImportError(f"type_map {type_map} names an element twice; mftcalc has one type per element")
    return out


def translate_branch(branch: str, params: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> BranchSpec:
    """Check a branch's options and translate them to a :class:`BranchSpec` (see the module docstring).

    Args:
        branch: branch name (for messages and tensor names ``model.<branch>.atomic_model.``).
        params: the branch's resolved model parameters.
        tensors: the checkpoint's tensors.
    """
    assumed: List[str] = []
    where = f"branch {branch!r}"
    model_type = _opt(params, "type", MODEL_DEFAULTS, "model", assumed)
    refuse(model_type != "standard", f"{where}: model type {model_type!r} (linear/frozen/ZBL models)")
    refuse("spin" in params, f"{where}: spin model (model.spin)")
    refuse("use_srtab" in params, f"{where}: ZBL / pair-table correction (model.use_srtab)")
    bridging = str(_opt(params, "bridging_method", MODEL_DEFAULTS, "model", assumed)).lower()
    refuse(bridging not in ("none", ""), f"{where}: bridging_method {bridging!r}")
    refuse(bool(params.get("modifier")), f"{where}: data modifier (model.modifier)")
    for key in ("pair_exclude_types", "atom_exclude_types"):
        refuse(bool(_opt(params, key, MODEL_DEFAULTS, "model", assumed)), f"{where}: model.{key}")
    desc = params.get("descriptor", {})
    refuse(desc.get("type") != "dpa3", f"{where}: descriptor type {desc.get('type')!r} (only dpa3)")
    d = lambda key: _opt(desc, key, DPA3_DEFAULTS, "descriptor", assumed)   # noqa: E731
    refuse(bool(d("add_chg_spin_ebd")), f"{where}: charge/spin embedding (descriptor.add_chg_spin_ebd)")
    refuse(bool(d("concat_output_tebd")), f"{where}: descriptor.concat_output_tebd")
    refuse(bool(d("use_econf_tebd")), f"{where}: electronic-configuration type embedding "
                                      "(descriptor.use_econf_tebd)")
    refuse(bool(d("exclude_types")), f"{where}: exclude types (descriptor.exclude_types)")
    refuse(float(d("env_protection")) != 0.0, f"{where}: descriptor.env_protection {d('env_protection')}")
    activation = activation_name(d("activation_function"), f"{where} descriptor")
    rf = desc.get("repflow", {})
    missing = [k for k in REQUIRED_REPFLOW if k not in rf]
    if missing:
        raise DeepmdImportError(f"{where}: descriptor.repflow lacks {missing}; the file is not a complete DPA3 "
                                "checkpoint")
    r = lambda key: _opt(rf, key, REPFLOW_DEFAULTS, "descriptor.repflow", assumed)   # noqa: E731
    refuse(not r("update_angle"), f"{where}: repflow.update_angle false")
    refuse(not r("smooth_edge_update"), f"{where}: non-smooth edge update (repflow.smooth_edge_update false)")
    refuse(r("update_style") != "res_residual", f"{where}: repflow.update_style {r('update_style')!r}")
    refuse(int(r("n_multi_edge_message")) != 1, f"{where}: repflow.n_multi_edge_message {r('n_multi_edge_message')}")
    refuse(bool(r("sequential_update")), f"{where}: repflow.sequential_update")
    refuse(bool(r("edge_init_use_dist")), f"{where}: repflow.edge_init_use_dist")
    e_sel, a_sel = rf["e_sel"], rf["a_sel"]
    e_sel = e_sel[0] if isinstance(e_sel, list) and len(e_sel) == 1 else e_sel
    if not isinstance(e_sel, int) or not isinstance(a_sel, int):
        raise DeepmdImportError(f"{where}: repflow e_sel/a_sel must be integers in a trained checkpoint "
                                f"(got {rf['e_sel']!r}, {rf['a_sel']!r})")
    n_dim, e_dim, a_dim = int(r("n_dim")), int(r("e_dim")), int(r("a_dim"))
    dynamic = bool(r("use_dynamic_sel"))
    srf = float(r("sel_reduce_factor"))
    rate, e_rate, split = int(r("a_compress_rate")), int(r("a_compress_e_rate")), bool(r("a_compress_use_split"))
    if rate == 0:
        a_compress, a_compress_e, linear = 0, 0, False
    else:
        a_compress, a_compress_e, linear = a_dim // rate, a_dim // (2 * rate) * e_rate, not split
    std = environment_std(tensors, f"model.{branch}.atomic_model.descriptor.repflows.", where)
    backbone = BackboneConfig(
        n_dim=n_dim, e_dim=e_dim, a_dim=a_dim, n_layers=int(r("nlayers")), e_rcut=float(rf["e_rcut"]),
        e_rcut_smth=float(rf["e_rcut_smth"]), a_rcut=float(rf["a_rcut"]), a_rcut_smth=float(rf["a_rcut_smth"]),
        axis_neuron=int(r("axis_neuron")), a_compress=a_compress, a_compress_e=a_compress_e,
        a_compress_linear=linear, update_residual=float(r("update_residual")), activation=activation,
        e_sel_norm=e_sel / srf if dynamic else float(e_sel), a_sel_norm=a_sel / srf if dynamic else float(a_sel),
        switch="exp" if r("use_exp_switch") else "poly", edge_std=std[0], h2_std=std[1])
    fit = params.get("fitting_net", {})
    f = lambda key: _opt(fit, key, ENER_DEFAULTS, "fitting_net", assumed)   # noqa: E731
    refuse(f("type") != "ener", f"{where}: fitting_net type {f('type')!r} (only ener)")
    refuse(int(f("numb_fparam")) > 0, f"{where}: frame parameters (fitting_net.numb_fparam {f('numb_fparam')})")
    refuse(int(f("numb_aparam")) > 0, f"{where}: atomic parameters (fitting_net.numb_aparam {f('numb_aparam')})")
    refuse(any(x is not None for x in (f("atom_ener") or [])), f"{where}: fitting_net.atom_ener")
    refuse(bool(fit.get("exclude_types")), f"{where}: fitting_net.exclude_types")
    refuse(fit.get("remove_vaccum_contribution") is not None, f"{where}: fitting_net.remove_vaccum_contribution")
    refuse(f"model.{branch}.atomic_model.fitting_net.filter_layers.networks.1.layers.0.matrix" in tensors,
           f"{where}: one fitting net per atom type (mixed_types false)")
    fitting = FittingSpec(hidden=tuple(int(x) for x in f("neuron")),
                          activation=activation_name(f("activation_function"), f"{where} fitting_net"),
                          resnet_dt=bool(f("resnet_dt")), dim_case_embd=int(f("dim_case_embd")))
    type_map = list(params["type_map"])
    caveats = [f"mftcalc keeps every neighbour; deepmd-kit keeps the nearest e_sel={e_sel} within e_rcut and "
               f"a_sel={a_sel} within a_rcut: atoms with more neighbours than that differ"]
    return BranchSpec(backbone=backbone, fitting=fitting, type_map=type_map, numbers=atomic_numbers_of(type_map),
                      precision=str(d("precision")), caveats=caveats, assumed=assumed)


def environment_std(tensors: Mapping[str, Tensor], prefix: str, where: str) -> Tuple[float, float]:
    """(edge_std, h2_std) from the repflow ``mean``/``stddev`` buffers [ntypes, e_sel, 4]: the mean must be zero
    and each std column (radial; the three angular ones) one constant (DPA3's ``fix_stat_std``), else refused."""
    mean, std = tensors.get(prefix + "mean"), tensors.get(prefix + "stddev")
    if mean is None or std is None:
        raise DeepmdImportError(f"{where}: the checkpoint has no {prefix}mean/stddev buffers; not a DPA3 file")
    refuse(bool((mean != 0).any()), f"{where}: non-zero environment mean (repflow set_davg_zero false)")
    radial, angular = std[..., 0], std[..., 1:]
    ok = bool((radial == radial.reshape(-1)[0]).all()) and bool((angular == angular.reshape(-1)[0]).all())
    refuse(not ok, f"{where}: data-based, per-type environment statistics (repflow fix_stat_std 0); only a "
                   "constant fix_stat_std is reproduced")
    return float(radial.reshape(-1)[0]), float(angular.reshape(-1)[0])


def check_same(specs: Mapping[str, BranchSpec]) -> Optional[str]:
    """None when all branches translate to the same backbone, fitting net and type map, else a message."""
    items = list(specs.items())
    name0, first = items[0]
    for name, spec in items[1:]:
        for what in ("backbone", "fitting", "type_map"):
            if getattr(spec, what) != getattr(first, what):
                return (f"branches {name0!r} and {name!r} have different {what} settings "
                        f"({getattr(first, what)} vs {getattr(spec, what)})")
    return None
