"""Importing a deepmd-kit DPA3 checkpoint as an mftcalc model: the weight mapping, the checks that shared tensors
agree across branches, and the provenance written with the result (``mftcalc import-deepmd``).

Each imported branch becomes a force-field dataset of the same name: its case embedding selects the dataset
column of the one force-field head, and ``out_bias + bias_atom_e`` of the branch is that dataset's per-element
``shift``. The numerics are deepmd-kit's (exp switch, ``fix_stat_std``, split or linear angle compression, the
ResNet-dt fitting net), so the imported model gives deepmd-kit's energies, forces and virials (float64: ~1e-15
relative; tests/unit/model/test_deepmd_import.py). Weights are written in float64 (a float32 source is upcast exactly).
:func:`pull_back_gradients` carries gradients with respect to the imported model back to deepmd-kit's tensors by
the chain rule through this mapping (the test of training-gradient parity with deepmd-kit uses it).

Weight mapping (deepmd ``matrix`` is [in, out], an ``nn.Linear.weight`` is its transpose; D = descriptor,
L = ``repflows.layers.k``):

=====================================  ==============================================================================
mftcalc                                deepmd-kit
=====================================  ==============================================================================
``type_embedding.weight[Z_t]``         row t of D ``type_embedding`` evaluated (matrix + bias + its resnet identity)
``edge_embedding``/``angle_embedding`` ``repflows.edge_embd`` / ``repflows.angle_embd``
``node_self`` / ``node_sym``           L ``node_self_mlp`` / L ``node_sym_linear``
``ee_node_i|ee_node_j|ee_edge``        rows [0:n | n:2n | 2n:] of ``cat([node_edge_linear, edge_self_linear])``
``aa_angle|aa_node|aa_edge_ik|_ij``    rows [0:a | a:a+nc | +ec | +ec] of ``cat([edge_angle_linear1,
                                       angle_self_linear])`` (concatenated along the output)
``compress_node`` / ``compress_edge``  L ``a_compress_n_linear`` / ``a_compress_e_linear`` (non-split compression)
``edge_angle2``, ``res_*``             L ``edge_angle_linear2``, ``n_residual`` / ``e_residual`` / ``a_residual``
FF head ``mlp.net.k``                  ``fitting_net.filter_layers.networks.0.layers.k`` (``matrix``, ``bias``,
                                       ``idt``);
                                       first layer: the case-embedding rows times the branch's ``case_embd``
                                       become the dataset's one-hot column
FF head ``shift[d, Z_t]``              ``atomic_model.out_bias[0, t] + fitting_net.bias_atom_e[t]`` of branch d
=====================================  ==============================================================================
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mftcalc.model.config import HeadConfig, ModelConfig
from mftcalc.model.deepmd_source import (BranchSpec, DeepmdCheckpoint, DeepmdImportError, check_same,
                                         read_deepmd_checkpoint, translate_branch)
from mftcalc.model.mft_model import MFTModel

log = logging.getLogger(__name__)
HEAD = "forcefield"
NOT_RECORDED = "not recorded (deepmd-kit .pt checkpoints do not store it; pass --deepmd-version)"


@dataclass
class ImportResult:
    """What :func:`import_deepmd` wrote: the output path, the branches (= datasets, in order), the elements and
    the metadata stored in the checkpoint."""

    path: Path
    branches: List[str]
    elements: List[int]
    metadata: Dict[str, Any]


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(torch.float64).clone()


class _Tensors:
    """Float64 tensors of one branch by name relative to ``model.<branch>.atomic_model.``; missing names raise;
    ``used`` collects the names read. ``values`` (full checkpoint names) replace the file's tensors of those names
    and are returned without detaching, so that the mapping is differentiable in them."""

    def __init__(self, ckpt: DeepmdCheckpoint, branch: str, values: Optional[Mapping[str, Tensor]] = None) -> None:
        self.ckpt, self.prefix, self.values = ckpt, f"model.{branch}.atomic_model.", values
        self.used: set = set()

    def other(self, branch: str) -> "_Tensors":
        """The same reader for another branch."""
        return _Tensors(self.ckpt, branch, self.values)

    def has(self, name: str) -> bool:
        return self.prefix + name in self.ckpt.tensors

    def __call__(self, name: str) -> Tensor:
        key = self.prefix + name
        if key not in self.ckpt.tensors:
            raise DeepmdImportError(f"{self.ckpt.path}: tensor {key!r} is missing; the checkpoint does not match "
                                    "its own model parameters (or is not a DPA3 energy model)")
        self.used.add(name)
        if self.values is not None and key in self.values:
            return self.values[key].to(torch.float64)
        return _f64(self.ckpt.tensors[key])


# read elsewhere (environment_std), or not part of the energy (out_std scales only non-energy outputs)
KNOWN_UNREAD = ("descriptor.repflows.mean", "descriptor.repflows.stddev", "out_std")


def check_all_read(t: _Tensors) -> None:
    """Raise if a tensor of the branch was not mapped: a part of the model mftcalc would silently drop (e.g. an
    option the parameters do not declare). ``filter_layers._networks`` must equal ``networks`` (deepmd-kit keeps
    both names for the same weights)."""
    left = []
    for key in t.ckpt.tensors:
        if not key.startswith(t.prefix):
            continue
        name = key[len(t.prefix):]
        if name in t.used or name in KNOWN_UNREAD:
            continue
        twin = name.replace("filter_layers._networks.", "filter_layers.networks.", 1)
        if twin != name and twin in t.used and torch.equal(t.ckpt.tensors[key], t.ckpt.tensors[t.prefix + twin]):
            continue
        left.append(name)
    if left:
        raise DeepmdImportError(f"{t.ckpt.path}: {len(left)} tensor(s) not understood, first {left[:3]}; the "
                                "checkpoint has parts mftcalc does not reproduce, so it cannot be imported")


def check_shared_tensors(ckpt: DeepmdCheckpoint, branches: Sequence[str]) -> None:
    """Raise unless every descriptor tensor and every fitting-net tensor other than ``bias_atom_e`` and
    ``case_embd`` is bitwise equal across ``branches`` (one mftcalc model holds one backbone and one head)."""
    first = branches[0]
    p0 = f"model.{first}.atomic_model."
    own = ("fitting_net.bias_atom_e", "fitting_net.case_embd")
    names = [k[len(p0):] for k in ckpt.tensors if k.startswith(p0)
             and k[len(p0):].startswith(("descriptor.", "fitting_net.")) and k[len(p0):] not in own]
    for other in branches[1:]:
        po = f"model.{other}.atomic_model."
        differ = [n for n in names if po + n not in ckpt.tensors
                  or not torch.equal(ckpt.tensors[p0 + n], ckpt.tensors[po + n])]
        if differ:
            part = "descriptor" if differ[0].startswith("descriptor.") else "fitting net"
            raise DeepmdImportError(
                f"branches {first!r} and {other!r} have different {part} weights ({len(differ)} tensors differ, "
                f"first {differ[0]!r}); one mftcalc model holds one backbone and one force-field head, so import "
                f"them one at a time (--branches {first}, then --branches {other})")


def type_table(t: _Tensors, n_types: int, n_dim: int) -> Tensor:
    """deepmd-kit's type embedding evaluated for every type [n_types, n_dim]: the one-layer linear embedding net on
    one-hot inputs, its bias (``use_tebd_bias``) and its resnet identity (n_dim = n_types: + x; = 2 n_types: + [x, x]),
    in deepmd-kit's order of operations (exact)."""
    base = "descriptor.type_embedding.embedding.embedding_net.layers."
    if t.has(base + "1.matrix") or t.has(base + "0.idt"):
        raise DeepmdImportError("the type embedding net has more than one layer or a timestep; DPA3's has one "
                                "linear layer, this checkpoint cannot be imported")
    w = t(base + "0.matrix")
    if tuple(w.shape) != (n_types, n_dim):
        raise DeepmdImportError(f"type embedding matrix has shape {tuple(w.shape)}, expected ({n_types}, {n_dim}) "
                                "from type_map and n_dim (an electronic-configuration embedding is not supported)")
    rows = w + t(base + "0.bias") if t.has(base + "0.bias") else w
    eye = torch.eye(n_types, dtype=torch.float64)
    if n_dim == n_types:
        rows = rows + eye
    elif n_dim == 2 * n_types:
        rows = rows + torch.cat([eye, eye], 1)
    return rows


class _Target:
    """The mftcalc state dict being filled: every entry set once, with its shape checked."""

    def __init__(self, state_dict: Dict[str, Tensor]) -> None:
        self.sd = {k: v.clone() for k, v in state_dict.items()}
        self.filled: set = set()

    def put(self, name: str, value: Tensor) -> None:
        if name not in self.sd:
            raise DeepmdImportError(f"internal mapping error: mftcalc has no parameter {name!r}")
        if tuple(self.sd[name].shape) != tuple(value.shape):
            raise DeepmdImportError(f"shape mismatch for {name}: mftcalc {tuple(self.sd[name].shape)}, deepmd-kit "
                                    f"{tuple(value.shape)}; the checkpoint's tensors do not match its parameters")
        self.sd[name] = value.contiguous()
        self.filled.add(name)

    def linear(self, name: str, matrix: Tensor, bias: Optional[Tensor] = None) -> None:
        """``name.weight`` = deepmd ``matrix`` [in, out] transposed, ``name.bias`` = ``bias``."""
        self.put(name + ".weight", matrix.t())
        if bias is not None:
            self.put(name + ".bias", bias)

    def has(self, name: str) -> bool:
        return name in self.sd


def map_backbone(sd: _Target, t: _Tensors, spec: BranchSpec, nc: int, ec: int) -> None:
    """Fill the backbone entries of ``sd`` (mftcalc state dict) from a branch's descriptor tensors."""
    cfg = spec.backbone
    n, a = cfg.n_dim, cfg.a_dim
    table = torch.zeros(cfg.n_types, n, dtype=torch.float64)
    table[torch.tensor(spec.numbers)] = type_table(t, len(spec.type_map), n)
    sd.put("backbone.type_embedding.weight", table)
    r = "descriptor.repflows."
    sd.linear("backbone.edge_embedding", t(r + "edge_embd.matrix"), t(r + "edge_embd.bias"))
    if t.has(r + "angle_embd.bias"):
        raise DeepmdImportError("repflows.angle_embd has a bias; DPA3's angle embedding has none")
    sd.linear("backbone.angle_embedding", t(r + "angle_embd.matrix"))
    if t.has(f"{r}layers.{cfg.n_layers}.node_self_mlp.matrix"):
        raise DeepmdImportError(f"the checkpoint has more repflow layers than its nlayers = {cfg.n_layers}")
    for k in range(cfg.n_layers):
        src, dst = f"{r}layers.{k}.", f"backbone.layers.{k}."
        sd.linear(dst + "node_self", t(src + "node_self_mlp.matrix"), t(src + "node_self_mlp.bias"))
        sd.linear(dst + "node_sym", t(src + "node_sym_linear.matrix"), t(src + "node_sym_linear.bias"))
        ee = torch.cat([t(src + "node_edge_linear.matrix"), t(src + "edge_self_linear.matrix")], 1)
        sd.linear(dst + "ee_node_i", ee[:n])
        sd.linear(dst + "ee_node_j", ee[n:2 * n])
        sd.linear(dst + "ee_edge", ee[2 * n:], torch.cat([t(src + "node_edge_linear.bias"),
                                                           t(src + "edge_self_linear.bias")]))
        aa = torch.cat([t(src + "edge_angle_linear1.matrix"), t(src + "angle_self_linear.matrix")], 1)
        if aa.shape[0] != a + nc + 2 * ec:
            raise DeepmdImportError(f"layer {k}: the angle linears take {aa.shape[0]} inputs, the configuration "
                                    f"gives {a + nc + 2 * ec} (a {a} + node {nc} + 2 x edge {ec})")
        sd.linear(dst + "aa_angle", aa[:a], torch.cat([t(src + "edge_angle_linear1.bias"),
                                                         t(src + "angle_self_linear.bias")]))
        sd.linear(dst + "aa_node", aa[a:a + nc])
        sd.linear(dst + "aa_edge_ik", aa[a + nc:a + nc + ec])
        sd.linear(dst + "aa_edge_ij", aa[a + nc + ec:])
        has_compress = t.has(src + "a_compress_n_linear.matrix")
        if has_compress != cfg.a_compress_linear:
            raise DeepmdImportError(f"layer {k}: a_compress_use_split does not match the tensors (compression "
                                    f"linears {'present' if has_compress else 'absent'})")
        if has_compress:
            sd.linear(dst + "compress_node", t(src + "a_compress_n_linear.matrix"))
            sd.linear(dst + "compress_edge", t(src + "a_compress_e_linear.matrix"))
        sd.linear(dst + "edge_angle2", t(src + "edge_angle_linear2.matrix"), t(src + "edge_angle_linear2.bias"))
        for i in range(3):
            sd.put(dst + f"res_node.{i}", t(src + f"n_residual.{i}"))
        for i in range(2):
            sd.put(dst + f"res_edge.{i}", t(src + f"e_residual.{i}"))
        sd.put(dst + "res_angle", t(src + "a_residual.0"))


def map_head(sd: _Target, t: _Tensors, ckpt: DeepmdCheckpoint, branches: Sequence[str], spec: BranchSpec) -> None:
    """Fill the force-field head: the fitting net of the first branch (``t``; shared by all, checked), each
    branch's case embedding as its dataset column, and each branch's per-element shift."""
    n = spec.backbone.n_dim
    fit = spec.fitting
    base = "fitting_net.filter_layers.networks.0.layers."
    n_hidden = len(fit.hidden)
    dim_case = fit.dim_case_embd
    cases = [(t if b == branches[0] else t.other(b))("fitting_net.case_embd") if dim_case > 0 else None
             for b in branches]
    in_dp, in_mft, h0 = n + dim_case, n + len(branches), fit.hidden[0] if fit.hidden else 1
    if n_hidden and any(h0 in (width, 2 * width) for width in (in_dp, in_mft)):
        identity = in_dp == in_mft and all(bool(torch.equal(c, torch.eye(dim_case, dtype=torch.float64)[d]))
                                           for d, c in enumerate(cases) if c is not None)
        if not identity:
            raise DeepmdImportError(
                f"the fitting net's first layer ({in_dp} -> {h0}) adds its input, so its case embedding must be "
                f"the dataset one-hot itself: import all {dim_case} branches in case-embedding order (no "
                "--branches), or one branch of a model whose first hidden width differs from its input width")
    w0 = t(base + "0.matrix")
    if w0.shape[0] != in_dp:
        raise DeepmdImportError(f"the fitting net takes {w0.shape[0]} inputs, expected {in_dp} (n_dim {n} + case "
                                f"embedding {dim_case}); fparam/aparam inputs are not supported")
    cols = [w0[n:].t() @ c if c is not None else torch.zeros(w0.shape[1], dtype=torch.float64) for c in cases]
    first = torch.cat([w0[:n].t()] + [c.unsqueeze(1) for c in cols], 1)          # [h0, n + n_datasets]
    for k in range(n_hidden + 1):
        dst = f"ff_heads.{HEAD}.mlp.net.{k}."
        matrix = first.t() if k == 0 else t(base + f"{k}.matrix")
        last = k == n_hidden
        sd.linear(dst.rstrip(".") if last else dst + "linear", matrix, t(base + f"{k}.bias"))
        has_idt = t.has(base + f"{k}.idt")
        if not last and sd.has(dst + "idt") != has_idt:
            raise DeepmdImportError(f"fitting layer {k}: deepmd-kit has {'an' if has_idt else 'no'} idt, the "
                                    "translated layer the opposite; resnet_dt does not match the tensors")
        if has_idt:
            sd.put(dst + "idt", t(base + f"{k}.idt"))
    if t.has(base + f"{n_hidden + 1}.matrix"):
        raise DeepmdImportError(f"the fitting net has more layers than its neuron list {list(fit.hidden)} says")
    shift = torch.zeros(len(branches), sd.sd[f"ff_heads.{HEAD}.shift"].shape[1], dtype=torch.float64)
    for d, b in enumerate(branches):
        tb = t if b == branches[0] else t.other(b)
        bias_atom_e, out_bias = tb("fitting_net.bias_atom_e"), tb("out_bias")
        n_types = len(spec.type_map)
        if tuple(bias_atom_e.shape) != (n_types, 1) or tuple(out_bias.shape) != (1, n_types, 1):
            raise DeepmdImportError(f"branch {b!r}: bias shapes {tuple(bias_atom_e.shape)}, "
                                    f"{tuple(out_bias.shape)}; expected ({n_types}, 1) and (1, {n_types}, 1) for a "
                                    "single-output energy model")
        shift[d, torch.tensor(spec.numbers)] = bias_atom_e[:, 0] + out_bias[0, :, 0]
    sd.put(f"ff_heads.{HEAD}.shift", shift)
    sd.put(f"ff_heads.{HEAD}.scale", torch.ones(1, dtype=torch.float64))


def build_imported_model(ckpt: DeepmdCheckpoint, branches: Optional[Sequence[str]] = None
                         ) -> Tuple[MFTModel, BranchSpec, List[str]]:
    """(model in float64, eval mode; the branch spec; the branches imported, in dataset order)."""
    model, spec, chosen, state = _map_weights(ckpt, branches)
    model.load_state_dict(state)
    return model.eval(), spec, chosen


def pull_back_gradients(ckpt: DeepmdCheckpoint, grads: Mapping[str, Optional[Tensor]], names: Sequence[str],
                        branches: Optional[Sequence[str]] = None) -> Dict[str, Optional[Tensor]]:
    """Gradients of a loss with respect to deepmd-kit tensors, from its gradients with respect to the imported model.

    ``grads``: {state-dict name of the model :func:`build_imported_model` gives for ``branches``: dL/d that entry}
    (absent or None: zero). ``names``: deepmd-kit tensors of the first imported branch, relative to
    ``model.<branch>.`` (``named_parameters()`` names of deepmd-kit's model, e.g.
    ``atomic_model.descriptor.repflows.edge_embd.matrix``). Returns {name: dL/d that tensor} (float64), None for a
    tensor the mapping does not use (no imported entry depends on it).

    This is the chain rule through the weight mapping, evaluated exactly (the vector-Jacobian product of the
    mapping, by autograd): a copied or transposed tensor gets the gradient of its image (transposed back); the row
    blocks of the concatenated node-edge / angle linears are stacked back; the type-embedding net's matrix and bias
    get the gradients of the table rows ``type_embedding.weight[Z_t]`` they make; the case-embedding rows of the
    first fitting layer get ``sum_d case_embd_d ⊗ (gradient of dataset column d)``. The branches' per-type biases
    and case embeddings (buffers, not trained by deepmd-kit) are constants of the mapping.
    """
    ckpt_branches = list(branches) if branches else list(ckpt.branch_params)
    prefix = f"model.{ckpt_branches[0]}."
    leaves = {prefix + n: ckpt.tensors[prefix + n].detach().to(torch.float64).clone().requires_grad_(True)
              for n in names}
    _, _, _, state = _map_weights(ckpt, branches, leaves)
    outputs = [(v, grads[k] if grads.get(k) is not None else torch.zeros_like(v))
               for k, v in state.items() if v.requires_grad]
    found = torch.autograd.grad([o for o, _ in outputs], list(leaves.values()), [g for _, g in outputs],
                                allow_unused=True)
    return {n: g for n, g in zip(names, found)}


def _map_weights(ckpt: DeepmdCheckpoint, branches: Optional[Sequence[str]] = None,
                 values: Optional[Mapping[str, Tensor]] = None
                 ) -> Tuple[MFTModel, BranchSpec, List[str], Dict[str, Tensor]]:
    """(the model in float64 with its initial weights, the branch spec, the branches in dataset order, the mapped
    state dict); ``values``: see :class:`_Tensors`."""
    available = list(ckpt.branch_params)
    chosen = list(branches) if branches else available
    unknown = [b for b in chosen if b not in available]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise DeepmdImportError(f"{ckpt.path}: cannot import branches {chosen}; the file holds {available} "
                                "(each at most once)")
    specs = {b: translate_branch(b, ckpt.branch_params[b], ckpt.tensors) for b in chosen}
    problem = check_same(specs)
    if problem:
        raise DeepmdImportError(f"{problem}; import them one at a time with --branches")
    check_shared_tensors(ckpt, chosen)
    spec = specs[chosen[0]]
    fit = spec.fitting
    head = HeadConfig(kind="forcefield", unit="eV", hidden=fit.hidden, activation=fit.activation, extensive=True,
                      element_bias=True, n_datasets=len(chosen), resnet_dt=fit.resnet_dt, deepmd_fitting=True)
    config = ModelConfig(backbone=spec.backbone, heads={HEAD: head}, datasets=list(chosen))
    model = MFTModel(config).to(torch.float64)
    sd = _Target(model.state_dict())
    layer0 = model.backbone.layers[0] if len(model.backbone.layers) else None
    nc, ec = (layer0.nc, layer0.ec) if layer0 is not None else (0, 0)
    tensors = _Tensors(ckpt, chosen[0], values)
    map_backbone(sd, tensors, spec, nc, ec)
    map_head(sd, tensors, ckpt, chosen, spec)
    check_all_read(tensors)
    unfilled = sorted(set(sd.sd) - sd.filled)
    if unfilled:
        raise DeepmdImportError(f"internal mapping error: mftcalc parameters left unset: {unfilled}")
    return model, spec, chosen, sd.sd


def import_deepmd(source: Any, output: Any, branches: Optional[Sequence[str]] = None,
                  deepmd_version: Optional[str] = None) -> ImportResult:
    """Import a deepmd-kit DPA3 checkpoint ``source`` (``.pt``) and write an mftcalc checkpoint ``output``
    (``save_model``: content hash, float64 weights) with provenance metadata under ``"deepmd_import"``.

    Args:
        branches: branches to import (default all, in file order); each becomes a dataset of that name.
        deepmd_version: the deepmd-kit version that wrote the file, as stated by the caller (files do not record it).
    """
    from mftcalc.model.checkpoint import model_metadata, save_model
    ckpt = read_deepmd_checkpoint(source)
    model, spec, chosen = build_imported_model(ckpt, branches)
    for caveat in spec.caveats:
        log.warning("%s: %s", ckpt.path.name, caveat)
    if ckpt.has_ema:
        log.warning("%s also holds EMA shadow weights (key 'ema'); the regular weights were imported (import the "
                    "*_ema.pt checkpoint for the EMA weights)", ckpt.path.name)
    case_index = {}
    for b in chosen:
        t = _Tensors(ckpt, b)
        case = t("fitting_net.case_embd") if t.has("fitting_net.case_embd") else None
        case_index[b] = int(case.argmax()) if case is not None and case.numel() else None
    provenance = {
        "source_file": ckpt.path.name, "source_sha256": ckpt.sha256,
        "deepmd_version": deepmd_version or NOT_RECORDED,
        "training_step": ckpt.train_infos.get("step"), "learning_rate": ckpt.train_infos.get("lr"),
        "multi_task": ckpt.multi_task, "branches": chosen, "branches_in_file": list(ckpt.branch_params),
        "case_embedding_index": case_index, "type_map": spec.type_map, "source_precision": spec.precision,
        "branch_params": {b: ckpt.branch_params[b] for b in chosen},
        "caveats": spec.caveats, "assumed_defaults": spec.assumed,
    }
    metadata = model_metadata(model, spec.numbers, deepmd_import=provenance)
    save_model(model, output, metadata)
    return ImportResult(path=Path(output), branches=chosen, elements=sorted(spec.numbers), metadata=metadata)
