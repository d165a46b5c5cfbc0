"""The model: one backbone, named force-field heads and named property heads; energy, forces, stress, properties.

``MFTModel.forward`` takes the plain-tensor batch dict (``mftcalc.keys``) and returns a dict of outputs. Forces
(−∂E/∂x) and stress ((1/V) ∂E/∂ε, ASE sign) come from autograd of the summed energy of the active force-field
head with respect to positions and a strain applied to positions and cell, so every caller gets them alike.
Call it with gradients enabled (not under ``torch.no_grad()``) when forces or stress are wanted.

Precision: positions are taken relative to the first atom of their structure (in the dtype they come in) before
any work in the model's dtype, so a structure far from the origin gives the same results as at the origin; pass
float64 positions to a float32 model to keep that exact for offsets of many Å (float32 positions at 1e6 Å are
already rounded to 0.06 Å). The per-structure sums (energy, virial, stress) are accumulated and returned in
float64 whatever the model's dtype; per-atom outputs (energies, forces) stay in the model's dtype.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import Tensor, nn

from mftcalc import keys as K
from mftcalc.model.backbone import Backbone
from mftcalc.model.config import ModelConfig
from mftcalc.data.frame_params import model_frame_params
from mftcalc.model.graph import build_graph, edge_vectors
from mftcalc.model.heads import make_head
from mftcalc.model.intervals import IntervalHead


class MFTModel(nn.Module):
    """Backbone + heads. ``config.heads`` kinds: ``forcefield`` (in ``ff_heads``), ``interval`` (in
    ``interval_heads``, computed from the other outputs) or property (``property_heads``).

    Outputs (when the model has a force-field head): ``energy [B]`` eV, ``energies [N]`` eV, ``forces [N,3]``
    eV/Å, ``virial [B,3,3]`` eV, ``stress [B,3,3]`` eV/Å³ (for a structure periodic in at least one direction whose cell
    has a volume, :attr:`Structure.stress_defined`, over that volume; zero for the others; energy, virial and stress in float64, see the module docstring); and ``<property> [B]`` for every
    property head, in the head's unit; ``<property> [G]`` for every group head, one value per group of the batch's
    ``group_index`` [B] (weights ``group_weight`` [B]; without them each structure is a group of one, G = B).
    Property heads with frame parameters read the batch's ``frame_params``
    [B, F], columns in the order of ``frame_param_names`` (:mod:`mftcalc.data.frame_params`). With
    ``features=True`` also
    ``node_features [N, n_dim]``, ``edge_features [E, e_dim]``, ``edge_index [2, E]`` and ``edge_vectors [E, 3]``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config.backbone)
        n_dim = config.backbone.n_dim
        self.ff_heads = nn.ModuleDict({k: make_head(n_dim, h) for k, h in config.heads.items()
                                       if h.kind == "forcefield"})
        self.property_heads = nn.ModuleDict({k: make_head(n_dim, h) for k, h in config.heads.items()
                                             if h.kind not in ("forcefield", "interval", "group")})
        # group heads give one value per assembly of structures (mftcalc.data.assembly), [G] not [B]
        self.group_heads = nn.ModuleDict({k: make_head(n_dim, h) for k, h in config.heads.items()
                                          if h.kind == "group"})
        # interval heads read the outputs of the property heads (mftcalc.model.intervals), so they run after them
        self.interval_heads = nn.ModuleDict({k: IntervalHead(h) for k, h in config.heads.items()
                                             if h.kind == "interval"})
        names: List[str] = list(self.ff_heads.keys())
        self.active_ff_head: str = names[0] if names else ""
        self.frame_param_names = list(model_frame_params(config.heads))   # a TorchScript export keeps it when not
        self.n_frame_params = len(self.frame_param_names)                   # empty; forward reads these two
        self.frame_param_text = ", ".join(self.frame_param_names)
        for name, head in list(self.property_heads.items()) + list(self.group_heads.items()):
            wanted = list(config.heads[name].frame_params)
            if wanted:
                head.frame_columns.copy_(torch.tensor([self.frame_param_names.index(n) for n in wanted]))
        self.e_rcut = float(config.backbone.e_rcut)
        self.a_rcut = float(config.backbone.a_rcut)

    @torch.jit.unused
    def head_names(self) -> List[str]:
        """Names of all heads."""
        return (list(self.ff_heads.keys()) + list(self.property_heads.keys()) + list(self.group_heads.keys())
                + list(self.interval_heads.keys()))

    @torch.jit.unused
    def head_module(self, name: str) -> nn.Module:
        """The property or group head called ``name`` (KeyError naming the heads there are otherwise)."""
        if name in self.property_heads:
            return self.property_heads[name]
        if name in self.group_heads:
            return self.group_heads[name]
        raise KeyError(f"the model has no property head {name!r}; it has "
                       f"{sorted(list(self.property_heads.keys()) + list(self.group_heads.keys()))}")

    def forward(self, data: Dict[str, Tensor], compute_forces: bool = True, compute_stress: bool = True,
                compute_properties: bool = True, features: bool = False) -> Dict[str, Tensor]:
        numbers = data[K.NUMBERS]
        batch = data[K.BATCH]
        pbc = data[K.PBC]
        n_structures = data[K.CELL].shape[0]
        dtype = self.backbone.type_embedding.weight.dtype
        positions = relative_positions(data[K.POSITIONS], batch, n_structures).to(dtype)
        cell = data[K.CELL].to(dtype)
        if K.DATASET in data:
            dataset = data[K.DATASET]
        else:
            dataset = torch.zeros(n_structures, dtype=torch.long, device=positions.device)
        n_frame = self.n_frame_params
        if K.FRAME_PARAMS in data:
            frame = data[K.FRAME_PARAMS].to(dtype)
        else:
            frame = torch.zeros((n_structures, 0), dtype=dtype, device=positions.device)
        if compute_properties and n_frame > 0 and (frame.dim() != 2 or frame.shape[1] != n_frame):
            raise ValueError("this model's property heads read frame parameters " + self.frame_param_text
                             + ": give each structure info[<name>] (a batch needs frame_params [B, "
                             + str(n_frame) + "])")
        has_ff = len(self.ff_heads) > 0
        forces_on = compute_forces and has_ff
        stress_on = compute_stress and has_ff
        out: Dict[str, Tensor] = {}
        graph = build_graph(positions, cell, pbc, batch, self.e_rcut, self.a_rcut)
        pos = positions
        cel = cell
        strain = torch.zeros(cell.shape, dtype=torch.float64, device=cell.device)   # float64: the virial sums
        if forces_on:
            pos = positions.detach().requires_grad_(True)
            positions = pos
        if stress_on:
            strain.requires_grad_(True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos = pos + torch.bmm(pos.to(torch.float64).unsqueeze(1), sym[batch]).squeeze(1).to(dtype)
            cel = cell + torch.bmm(cell.to(torch.float64), sym).to(dtype)
        vectors = edge_vectors(pos, cel, batch, graph["edge_index"], graph["shifts"])
        node, edge = self.backbone(numbers, vectors, graph, features)
        if features:
            out[K.NODE_FEATURES] = node
            out["edge_features"] = edge
            out[K.EDGE_INDEX] = graph["edge_index"]
            out["edge_vectors"] = vectors
        for name, ff_head in self.ff_heads.items():
            if name == self.active_ff_head:
                atomic, _ = ff_head(node, numbers, batch, pos, dataset, n_structures, frame)
                out[K.ENERGIES] = atomic
                out[K.ENERGY] = sum_per_structure(atomic, batch, n_structures)
        if forces_on or stress_on:
            inputs: List[Tensor] = []
            if forces_on:
                inputs.append(positions)
            if stress_on:
                inputs.append(strain)
            grads = torch.autograd.grad([out[K.ENERGY].sum()], inputs, create_graph=self.training,
                                        allow_unused=True)
            k = 0
            if forces_on:
                g = grads[k]
                out[K.FORCES] = -g if g is not None else torch.zeros_like(positions)
                k += 1
            if stress_on:
                g = grads[k]
                dedeps = g if g is not None else torch.zeros_like(strain)
                out[K.VIRIAL] = -dedeps
                volume = torch.abs(torch.linalg.det(cell.to(torch.float64)))
                defined = pbc.any(dim=1) & (volume > 1e-6)          # Structure.stress_defined
                safe_volume = torch.where(defined, volume, torch.ones_like(volume))
                out[K.STRESS] = torch.where(defined.view(-1, 1, 1), dedeps / safe_volume.view(-1, 1, 1),
                                            torch.zeros_like(dedeps))
        if compute_properties:
            for name, prop_head in self.property_heads.items():
                _, value = prop_head(node, numbers, batch, positions, dataset, n_structures, frame)
                out[name] = value
            if len(self.group_heads) > 0:
                if K.GROUP_INDEX in data:
                    group = data[K.GROUP_INDEX]
                    weight = data[K.GROUP_WEIGHT]
                    n_groups = int(group.max()) + 1 if n_structures > 0 else 0
                else:                                     # each structure a group of one
                    group = torch.arange(n_structures, device=positions.device)
                    weight = torch.ones(n_structures, dtype=dtype, device=positions.device)
                    n_groups = n_structures
                if K.POOL_MASK in data:
                    mask = data[K.POOL_MASK]
                else:
                    mask = torch.ones(batch.shape[0], dtype=dtype, device=positions.device)
                for name, group_head in self.group_heads.items():
                    out[name] = group_head(node, batch, n_structures, group, weight, n_groups, frame, mask)
            for name, interval_head in self.interval_heads.items():
                out[name] = interval_head(out)
        return out


def relative_positions(positions: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """Positions [N, 3] Å minus the first atom of their structure (``batch`` [N] int64, sorted), in their dtype.

    The model is translation invariant, so this changes no result; it keeps the float32 work of a structure far
    from the origin as precise as at the origin. The origin is a constant (no gradient flows through it).
    """
    if positions.shape[0] == 0:
        return positions
    counts = torch.bincount(batch, minlength=n_structures)                 # [B] atoms per structure
    first = torch.cumsum(counts, 0) - counts                               # [B] index of each one's first atom
    return positions - positions.detach().index_select(0, first[batch])


def sum_per_structure(atomic: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """Per-atom values [N] summed per structure into [B], accumulated and returned in float64.

    A float32 sum of 5,120 atomic energies of ~-1000 eV each is off by ~1 eV or more; float64 is exact to
    ~1e-9 eV there. Gradients flow back to ``atomic`` in its own dtype.
    """
    out = torch.zeros(n_structures, dtype=torch.float64, device=atomic.device)
    return out.index_add_(0, batch, atomic.to(torch.float64))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
