"""Writes the deepmd-kit golden files of tests/unit/model/test_deepmd_import.py: small random-weight DPA3 checkpoints in
deepmd-kit's own training-checkpoint format, and deepmd-kit's energies, forces, virials and training gradients for
them.

Run it with a Python that has deepmd-kit (never mftcalc's environment; see ../shared/notes/peer-install.md):

    python -m venv /tmp/dpvenv
    /tmp/dpvenv/bin/pip install torch==2.13.0 deepmd-kit==3.2.0 mpich e3nn==0.6.0
    mv /tmp/dpvenv/lib/python3.11/site-packages/deepmd/lib/libdeepmd_op_pt.so{,.disabled}   # built for torch 2.11
    OMP_NUM_THREADS=1 /tmp/dpvenv/bin/python tests/golden/make_deepmd_golden.py

Each case is built the way ``dp --pt train`` builds it (argcheck ``normalize`` of the model section, then
``preprocess_shared_params`` / ``get_model_for_wrapper`` / ``ModelWrapper.share_params`` for multi-task models), every
parameter is drawn at random (float64; scales chosen so that some SiLUT inputs lie above the threshold and the
tanh branch is exercised), per-branch ``out_bias`` and ``bias_atom_e`` too, and it is saved like the trainer saves
(``{"model": wrapper.state_dict()}`` with ``_extra_state``). References come from loading each saved file with
``deepmd.infer.DeepPot`` (one head at a time), i.e. from the file, not from the objects in memory.

Training gradients: per case and branch, deepmd-kit's gradients of the training-like loss
``L = sum over the two structures of (E + sum(F * R))`` with respect to every model parameter (``R``: fixed
seeded random tensors of the forces' shape, one per structure), computed with the model loaded from the saved file
(``DeepPot(..., no_jit=True)``'s model) in training mode, where deepmd-kit builds the force graph with
``create_graph=True``: the force term takes the double backward that force training takes. Parameters the loss does
not reach (autograd gives None: e.g. the last repflow layer's angle and edge updates) are stored as zeros and listed.

Output (tests/golden/deepmd/): ``<case>.pt`` per case; ``references.json`` (deepmd-kit and torch versions, the
options of each case, the structures, and per case, branch and structure: energy [eV], forces [N, 3] eV/Å and
virial [3, 3] eV, float64 written as exact round-trip decimals; per case ``gradient_layout`` {parameter name:
shape}, names as ``named_parameters()`` of deepmd-kit's model gives them (``atomic_model.…``), and per branch the
loss value and the parameters not reached); ``gradients.npz`` (float64: ``R/<structure>`` [N, 3] and
``<case>/<branch>``, the gradients of all parameters flattened and concatenated in ``gradient_layout`` order),
written with fixed zip timestamps so that a rerun gives byte-identical files.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import platform
from pathlib import Path
from typing import Any, Dict, List, Tuple
import zipfile

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "deepmd"

# ---------------------------------------------------------------------------------------------------------- cases


def repflow(**over: Any) -> Dict[str, Any]:
    """A small repflow block (8/6/4 x 2 layers) with every option written out; ``over`` replaces entries."""
    base = dict(n_dim=8, e_dim=6, a_dim=4, nlayers=2, e_rcut=4.0, e_rcut_smth=3.3, e_sel=60, a_rcut=3.0,
                a_rcut_smth=2.6, a_sel=30, axis_neuron=2, a_compress_rate=1, a_compress_e_rate=2,
                a_compress_use_split=True, n_multi_edge_message=1, update_angle=True, update_style="res_residual",
                update_residual=0.1, update_residual_init="const", fix_stat_std=0.3, optim_update=True,
                smooth_edge_update=True, edge_init_use_dist=False, use_exp_switch=True, use_dynamic_sel=True,
                sel_reduce_factor=10.0, sequential_update=False)
    base.update(over)
    return base


def fitting(**over: Any) -> Dict[str, Any]:
    base = dict(type="ener", neuron=[12, 12, 24], resnet_dt=True, activation_function="silut:3.0",
                precision="float64", seed=1)
    base.update(over)
    return base


def descriptor(rf: Dict[str, Any], **over: Any) -> Dict[str, Any]:
    base = dict(type="dpa3", repflow=rf, activation_function="silut:3.0", precision="float64",
                use_tebd_bias=False, use_econf_tebd=False, concat_output_tebd=False, seed=1)
    base.update(over)
    return base


CASES: Dict[str, Dict[str, Any]] = {
    # DPA-3.1-3M's switches at toy size: exp switch, dynamic sel, split compression with c=1 / c_e=2, silut:3,
    # fix_stat_std 0.3; n_dim = 2 ntypes (the type embedding adds [x, x]); two branches sharing descriptor and
    # fitting net (case embedding), fitting 10 -> 12 -> 12 -> 24 (plain, square and doubled resnet_dt layers)
    "mt_exp_split": dict(
        doc="3.1-3M options; 2 branches sharing descriptor and fitting net (dim_case_embd 2)",
        multi_task=True, branches=["omat", "spice"],
        type_map=["H", "C", "N", "O"],
        descriptor=descriptor(repflow()),
        fitting=fitting(dim_case_embd=2)),
    # the other switch and neighbour mode: polynomial switch, static sel (smooth edge update), no compression,
    # tanh everywhere (the plain-torch angle block), tebd bias, fix_stat_std 0.5, fitting without resnet_dt
    "st_poly_static": dict(
        doc="single task; poly switch, static sel, no angle compression, tanh, tebd bias, fix_stat_std 0.5",
        multi_task=False, branches=["Default"],
        type_map=["H", "O"],
        descriptor=descriptor(repflow(use_exp_switch=False, use_dynamic_sel=False, a_compress_rate=0,
                                      a_compress_e_rate=1, fix_stat_std=0.5, nlayers=3),
                              activation_function="tanh", use_tebd_bias=True),
        fitting=fitting(neuron=[10, 10], resnet_dt=False, activation_function="tanh")),
    # linear angle compression (a_compress_use_split false, c=2, c_e=1), custom_silu:2.0 alias, silu fitting,
    # 3 case-embedding columns for 2 branches, n_dim = ntypes (the type embedding adds x), tebd bias
    "mt_exp_linear": dict(
        doc="2 branches; linear angle compression (c=2, c_e=1), custom_silu:2.0, silu fitting, dim_case_embd 3",
        multi_task=True, branches=["water", "alloy"],
        type_map=["H", "O", "Si", "Cu", "C", "N", "F", "Al"],
        descriptor=descriptor(repflow(a_compress_rate=2, a_compress_e_rate=1, a_compress_use_split=False,
                                      fix_stat_std=0.3, a_dim=8, e_dim=8),
                              activation_function="custom_silu:2.0", use_tebd_bias=True),
        fitting=fitting(neuron=[16, 16], activation_function="silu", dim_case_embd=3)),
}

PERIODIC_TABLE = ["H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar",
                  "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br",
                  "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te",
                  "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm",
                  "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn",
                  "Fr", "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr",
                  "Rf", "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"]

# DPA-3.1-3M's published configuration (deepmd-kit dpa_adapt DPA3_DESCRIPTOR_DEFAULT; fitting from a DPA-3 fine-tune
# template), random weights, in float64 (the released model is float32) and with 2 of its 31 branches; not part of
# the committed golden set (26 MB): benchmarks/dpa3_import_parity.py generates it in a temporary folder.
FULL_SIZE_CASES: Dict[str, Dict[str, Any]] = {
    "dpa3_31_3m": dict(
        doc="DPA-3.1-3M sizes and options, random weights, float64, 2 branches sharing descriptor and fitting",
        multi_task=True, branches=["Omat24", "SPICE2"],
        type_map=PERIODIC_TABLE,
        descriptor=descriptor(repflow(n_dim=128, e_dim=64, a_dim=32, nlayers=16, e_rcut=6.0, e_rcut_smth=5.3,
                                      e_sel=1200, a_rcut=4.0, a_rcut_smth=3.5, a_sel=300, axis_neuron=4,
                                      a_compress_rate=1, a_compress_e_rate=2, a_compress_use_split=True,
                                      fix_stat_std=0.3, use_exp_switch=True, use_dynamic_sel=True,
                                      sel_reduce_factor=10.0, smooth_edge_update=True)),
        fitting=fitting(neuron=[240, 240, 240], resnet_dt=True, activation_function="silut:3.0", dim_case_embd=31)),
}

# ---------------------------------------------------------------------------------------------------- structures


def make_structures(seed: int = 7) -> Dict[str, Dict[str, Any]]:
    """A 10-atom cluster (one atom isolated 12 Å away) and a 7-atom triclinic periodic cell smaller than the
    cutoff sphere (many images, self-images included). ``slots`` are species slots, mapped to a case's types by
    ``slot % ntypes``."""
    rng = np.random.default_rng(seed)

    def draw(n: int, box: np.ndarray, periodic: bool) -> np.ndarray:
        pos: List[np.ndarray] = []
        while len(pos) < n:
            p = rng.uniform(0, 1, 3) @ box
            ok = True
            for q in pos:
                d = p - q
                if periodic:
                    frac = np.linalg.solve(box.T, d)
                    d = (frac - np.round(frac)) @ box
                if np.linalg.norm(d) < 1.0:
                    ok = False
                    break
            if ok:
                pos.append(p)
        return np.array(pos)

    cluster = draw(9, np.eye(3) * 3.2, periodic=False)
    cluster = np.vstack([cluster, [[12.0, 12.5, 13.0]]])          # isolated: no neighbour within any cutoff
    cell = np.array([[4.2, 0.0, 0.0], [0.7, 4.4, 0.0], [0.4, -0.5, 4.6]])
    crystal = draw(7, cell, periodic=True)
    return {"cluster": dict(positions=cluster, cell=None, slots=[k % 8 for k in range(10)]),
            "crystal": dict(positions=crystal, cell=cell, slots=[(3 * k + 1) % 8 for k in range(7)])}


# ------------------------------------------------------------------------------------------------------ building


def normalize_model(model: Dict[str, Any], multi_task: bool) -> Dict[str, Any]:
    """The model section as ``dp train`` stores it: argcheck-normalised (every default written out)."""
    from deepmd.utils.argcheck import model_args, multi_model_args
    arg = multi_model_args() if multi_task else model_args()
    return arg.normalize_value(copy.deepcopy(model), trim_pattern="_*")


def build_case(name: str, case: Dict[str, Any], gen: torch.Generator, weight_scale: float = 1.6):
    """(wrapper, model_params) of one case, built as ``dp --pt train`` builds it, weights drawn at random."""
    from deepmd.pt.train.training import get_model_for_wrapper
    from deepmd.pt.train.wrapper import ModelWrapper
    from deepmd.pt.utils.multi_task import preprocess_shared_params

    if case["multi_task"]:
        model = {"shared_dict": {"type_map_all": case["type_map"], "dpa3_descriptor": case["descriptor"],
                                 "shared_fitting": case["fitting"]},
                 "model_dict": {b: {"type_map": "type_map_all", "descriptor": "dpa3_descriptor",
                                    "fitting_net": "shared_fitting"} for b in case["branches"]}}
        model, shared_links = preprocess_shared_params(model)
        model = normalize_model(model, multi_task=True)
        wrapper = ModelWrapper(get_model_for_wrapper(model), model_params=model)
        wrapper.share_params(shared_links, {b: 1.0 / len(case["branches"]) for b in case["branches"]},
                             resume=False)
    else:
        model = {"type_map": case["type_map"], "descriptor": case["descriptor"], "fitting_net": case["fitting"]}
        model = normalize_model(model, multi_task=False)
        wrapper = ModelWrapper(get_model_for_wrapper(model), model_params=model)
    with torch.no_grad():
        seen = set()
        for pname, p in wrapper.named_parameters():       # shared parameters appear once
            if id(p) in seen:
                continue
            seen.add(id(p))
            if pname.endswith("matrix"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * weight_scale / np.sqrt(p.shape[0]))
            elif pname.endswith("idt"):
                p.copy_(0.1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif "residual" in pname:
                p.copy_(0.1 + 0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            else:                                            # biases
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for branch in case["branches"]:
            atomic = wrapper.model[branch].atomic_model
            atomic.out_bias.copy_(-3.0 + torch.randn(atomic.out_bias.shape, generator=gen, dtype=torch.float64))
            fit = atomic.fitting_net
            fit.bias_atom_e.copy_(-1.0 + torch.randn(fit.bias_atom_e.shape, generator=gen, dtype=torch.float64))
    wrapper.train_infos = {"lr": 1.0e-3, "step": 4242}
    return wrapper, model


def silut_fraction_above(wrapper, branch: str, coord: np.ndarray, atype: np.ndarray, cell) -> Dict[str, float]:
    """Fraction of the SiLUT inputs at or above the threshold in one forward pass (tanh branch exercised)."""
    from deepmd.pt.utils.utils import ActivationFn
    counts = {"above": 0, "total": 0}

    def hook(mod, inputs, output):
        if mod.silut is not None:
            x = inputs[0].detach()
            counts["above"] += int((x >= mod.silut.threshold).sum())
            counts["total"] += x.numel()

    handles = [m.register_forward_hook(hook) for m in wrapper.model[branch].modules() if isinstance(m, ActivationFn)]
    box = None if cell is None else torch.tensor(cell.reshape(1, 9))
    wrapper.model[branch](torch.tensor(coord.reshape(1, -1)), torch.tensor(atype.reshape(1, -1)), box=box)
    for h in handles:
        h.remove()
    return counts


LOSS = "sum over the structures of energy + sum(forces * R); R = gradients.npz R/<structure>"


def force_weights(structures: Dict[str, Dict[str, Any]], seed: int) -> Dict[str, np.ndarray]:
    """The fixed random tensors R [N, 3] of the loss, one per structure (standard normal, seeded)."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((len(st["positions"]), 3)) for name, st in structures.items()}


def loss_gradients(path: Path, branch: str, multi_task: bool, structures: Dict[str, Dict[str, Any]],
                   weights: Dict[str, np.ndarray], ntypes: int) -> Tuple[float, Dict[str, np.ndarray], List[str]]:
    """(L, {parameter name: dL/dparameter}, names the loss does not reach) of one branch of a saved checkpoint, for
    ``L = sum_s E_s + sum(F_s * R_s)``: deepmd-kit's model as ``DeepPot`` loads it (not scripted), in training mode
    (forces with ``create_graph=True``, as ``dp train`` computes them), float64."""
    from deepmd.infer import DeepPot
    model = DeepPot(str(path), head=branch if multi_task else None, no_jit=True).deep_eval.dp.model["Default"]
    model.train()
    named = list(model.named_parameters())
    loss = torch.zeros((), dtype=torch.float64)
    for name, st in structures.items():
        atype = torch.tensor([[s % ntypes for s in st["slots"]]])
        coord = torch.tensor(st["positions"].reshape(1, -1))
        box = None if st["cell"] is None else torch.tensor(st["cell"].reshape(1, 9))
        pred = model(coord, atype, box=box)
        loss = loss + pred["energy"].sum() + (pred["force"].reshape(-1, 3) * torch.tensor(weights[name])).sum()
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    out = {n: (g if g is not None else torch.zeros_like(p)).detach().numpy().copy()
           for (n, p), g in zip(named, grads)}
    model.eval()
    return float(loss.detach()), out, [n for (n, _), g in zip(named, grads) if g is None]


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps and no compression (byte-identical on a rerun); ``np.load`` reads it."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def generate(out: Path, seed: int = 20261204, cases: Dict[str, Dict[str, Any]] = CASES,
             structures: Dict[str, Dict[str, Any]] = None, weight_scale: float = 1.6,
             gradients: bool = True) -> Dict[str, Any]:
    """Write ``<case>.pt``, ``references.json`` and ``gradients.npz`` for ``cases`` on ``structures`` (default
    :func:`make_structures`) into ``out``; return the references. ``gradients=False`` leaves out the training
    gradients (and ``gradients.npz``)."""
    import deepmd
    from deepmd.infer import DeepPot

    torch.set_default_dtype(torch.float64)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    structures = structures or make_structures()
    refs: Dict[str, Any] = {
        "deepmd_kit_version": deepmd.__version__, "torch_version": torch.__version__,
        "python": platform.python_version(), "seed": seed, "weight_scale": weight_scale,
        "note": "deepmd/lib/libdeepmd_op_pt.so disabled (built for another torch); DPA3 runs in pure PyTorch",
        "structures": {k: {"positions": v["positions"].tolist(),
                           "cell": None if v["cell"] is None else v["cell"].tolist(), "slots": v["slots"]}
                       for k, v in structures.items()},
        "cases": {}}
    arrays: Dict[str, np.ndarray] = {}
    if gradients:
        weights = force_weights(structures, seed + 1)
        refs["gradients"] = {"file": "gradients.npz", "loss": LOSS, "R_seed": seed + 1, "dtype": "float64",
                             "mode": "deepmd-kit model in training mode (create_graph=True), not scripted"}
        arrays.update({f"R/{name}": w for name, w in weights.items()})
    gen = torch.Generator().manual_seed(seed)
    for name, case in cases.items():
        wrapper, _ = build_case(name, case, gen, weight_scale)
        path = out / f"{name}.pt"
        torch.save({"model": wrapper.state_dict()}, path)
        ntypes = len(case["type_map"])
        entry: Dict[str, Any] = {"doc": case["doc"], "file": path.name, "branches": case["branches"],
                                 "multi_task": case["multi_task"], "type_map": case["type_map"],
                                 "descriptor": case["descriptor"], "fitting_net": case["fitting"],
                                 "results": {}, "silut_inputs_above_threshold": {},
                                 "n_parameters": sum(p.numel()
                                                     for p in wrapper.model[case["branches"][0]].parameters())}
        for branch in case["branches"]:
            dp = DeepPot(str(path), head=branch if case["multi_task"] else None)
            entry["results"][branch] = {}
            above = {"above": 0, "total": 0}
            for sname, st in structures.items():
                atype = np.array([s % ntypes for s in st["slots"]])
                coord = st["positions"].reshape(1, -1)
                cell = None if st["cell"] is None else st["cell"].reshape(1, 9)
                e, f, v = dp.eval(coord, cell, atype)[:3]
                entry["results"][branch][sname] = {
                    "types": atype.tolist(), "energy": float(e.reshape(-1)[0]),
                    "forces": f.reshape(-1, 3).tolist(), "virial": v.reshape(3, 3).tolist()}
                c = silut_fraction_above(wrapper, branch, st["positions"], atype, st["cell"])
                above = {k: above[k] + c[k] for k in above}
            entry["silut_inputs_above_threshold"][branch] = above
            if gradients:
                loss, grads, unused = loss_gradients(path, branch, case["multi_task"], structures, weights, ntypes)
                layout = {k: list(g.shape) for k, g in grads.items()}
                if entry.setdefault("gradient_layout", layout) != layout:
                    raise RuntimeError(f"{name}: branches {case['branches']} have different parameters")
                entry.setdefault("loss_gradients", {})[branch] = {"loss": loss, "not_reached": unused}
                arrays[f"{name}/{branch}"] = np.concatenate([g.reshape(-1) for g in grads.values()])
        refs["cases"][name] = entry
        fractions = {b: round(x["above"] / max(x["total"], 1), 4)
                     for b, x in entry["silut_inputs_above_threshold"].items()}
        print(f"{name}: {path.stat().st_size / 1024:.1f} kB, SiLUT inputs above T: {fractions}")
    text = json.dumps(refs, indent=1)
    (out / "references.json").write_text(text + "\n")
    if gradients:
        write_npz(out / "gradients.npz", arrays)
        print(f"gradients.npz: {(out / 'gradients.npz').stat().st_size / 1024:.1f} kB, {len(arrays)} arrays")
    print(f"references.json: {len(text) / 1024:.1f} kB; deepmd-kit {deepmd.__version__}, torch {torch.__version__}")
    return refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--seed", type=int, default=20261204)
    parser.add_argument("--full-size", action="store_true",
                        help="the DPA-3.1-3M-size case (FULL_SIZE_CASES) instead of the golden grid; give "
                             "--structures too")
    parser.add_argument("--structures", default=None,
                        help="JSON {name: {positions [N][3] Å, cell [3][3] Å or null, slots [N]}} to use instead "
                             "of the built-in cluster and crystal (types = slots mod ntypes)")
    parser.add_argument("--weight-scale", type=float, default=1.6, help="std x sqrt(fan_in) of the random matrices")
    parser.add_argument("--no-gradients", action="store_true",
                        help="leave out the training gradients (gradients.npz); always left out with --full-size")
    args = parser.parse_args()
    structures = None
    if args.structures:
        raw = json.loads(Path(args.structures).read_text())
        structures = {k: dict(positions=np.array(v["positions"], dtype=np.float64),
                              cell=None if v["cell"] is None else np.array(v["cell"], dtype=np.float64),
                              slots=list(v["slots"])) for k, v in raw.items()}
    generate(Path(args.out), args.seed, FULL_SIZE_CASES if args.full_size else CASES, structures, args.weight_scale,
             gradients=not (args.full_size or args.no_gradients))


if __name__ == "__main__":
    main()
