"""Heads that turn backbone node features into outputs: force field (with dataset embedding) and properties.

Every head but the group head (:class:`GroupHead`, one value per group of structures) returns per-atom
contributions ``[N]`` and the per-structure value ``[B]``; per-element biases and an
output scale are buffers set from training data by least squares (``mftcalc.model.fitting``). Every head takes the
batch's frame parameters ``frame`` [B, F] (:mod:`mftcalc.data.frame_params`); only scalar and group heads that
declare some read them. Only group heads read the batch's ``pool_mask`` [N].
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from mftcalc.geometry.units import BOHR, E_ANGSTROM_TO_DEBYE
from mftcalc.model.config import HeadConfig
from mftcalc.model.layers import MLP

N_TYPES = 119


def scatter_sum(values: Tensor, batch: Tensor, n_structures: int) -> Tensor:
    """Sum per-atom values [N] or [N, k] into per-structure values [B] or [B, k]."""
    shape = [n_structures] + list(values.shape[1:])
    return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add_(0, batch, values)


def register_frame_buffers(head: nn.Module, n_frame: int) -> None:
    """A head's frame-parameter buffers [F]: the batch columns it reads (``frame_columns``, set by the model) and
    their training mean and std; empty and not saved without frame parameters (checkpoints without them keep
    their state dict)."""
    persistent = n_frame > 0
    head.register_buffer("frame_columns", torch.arange(n_frame), persistent=persistent)
    head.register_buffer("frame_mean", torch.zeros(n_frame), persistent=persistent)
    head.register_buffer("frame_std", torch.ones(n_frame), persistent=persistent)


class ForceFieldHead(nn.Module):
    """Atomic energies (eV) from node features and a one-hot dataset (case) embedding.

    ``E_i = scale · MLP([h_i, onehot(dataset)]) + shift[dataset, Z_i]``; the per-dataset, per-element shift is fitted
    by least squares so that each pretraining dataset keeps its own energy reference.
    """

    def __init__(self, n_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.n_datasets = int(cfg.n_datasets)
        self.mlp = MLP(n_dim + self.n_datasets, cfg.hidden, 1, cfg.activation, resnet_dt=cfg.resnet_dt,
                       deepmd_fitting=cfg.deepmd_fitting)
        self.register_buffer("shift", torch.zeros(self.n_datasets, N_TYPES))
        self.register_buffer("scale", torch.ones(1))

    def forward(self, node: Tensor, numbers: Tensor, batch: Tensor, positions: Tensor, dataset: Tensor,
                n_structures: int, frame: Tensor) -> Tuple[Tensor, Tensor]:
        ds_atom = dataset[batch]
        onehot = torch.nn.functional.one_hot(ds_atom, self.n_datasets).to(node.dtype)
        atomic = self.mlp(torch.cat([node, onehot], 1)).squeeze(1) * self.scale + self.shift[ds_atom, numbers]
        return atomic, scatter_sum(atomic, batch, n_structures)


class ScalarHead(nn.Module):
    """A scalar property: per-atom MLP terms plus an optional per-element bias, summed (extensive) or averaged.

    With frame parameters the MLP reads ``[h_i, (f − frame_mean) / frame_std]``, ``f`` the structure's columns
    ``frame_columns`` of the batch's ``frame`` [B, F] (set by the model from its column order).
    """

    def __init__(self, n_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.extensive = bool(cfg.extensive)
        self.frame_names = list(cfg.frame_params)          # for fitting (TorchScript keeps it when not empty)
        self.n_frame = len(self.frame_names)
        self.mlp = MLP(n_dim + self.n_frame, cfg.hidden, 1, cfg.activation, resnet_dt=cfg.resnet_dt,
                       deepmd_fitting=cfg.deepmd_fitting)
        self.register_buffer("bias", torch.zeros(N_TYPES))
        self.register_buffer("scale", torch.ones(1))
        register_frame_buffers(self, self.n_frame)

    def forward(self, node: Tensor, numbers: Tensor, batch: Tensor, positions: Tensor, dataset: Tensor,
                n_structures: int, frame: Tensor) -> Tuple[Tensor, Tensor]:
        x = node
        if self.n_frame > 0:
            f = (frame.index_select(1, self.frame_columns).to(node.dtype) - self.frame_mean) / self.frame_std
            x = torch.cat([node, f.index_select(0, batch)], 1)
        atomic = self.mlp(x).squeeze(1) * self.scale + self.bias[numbers]
        total = scatter_sum(atomic, batch, n_structures)
        if not self.extensive:
            counts = scatter_sum(torch.ones_like(atomic), batch, n_structures)
            total = total / counts
        return atomic, total


class GroupHead(nn.Module):
    """One value per group of component structures (an assembly: a polymer's repeat unit and end groups, a
    mixture's molecules, an adsorbate and its slab; :mod:`mftcalc.data.assembly`).

    ``z_c`` = mean node feature of component c [B, n_dim] over its pooled atoms (all, or the batch's
    ``pool_mask``); the group embedding is Σ_c w_c z_c / Σ_c w_c
    (``group_reduce="mean"``, weights ``w_c`` > 0) or Σ_c w_c z_c (``"sum"``, any non-zero weights: a reaction's
    reactants negative) over its components; the value is
    ``scale · MLP([embedding, standardised frame parameters]) + shift`` [G] in the head's unit (shift and scale
    the labels' mean and spread, fitted from training data). A structure alone (``group`` = arange(B), weights
    1) is a group of one: its prediction is what the calculator gives for one structure.
    """

    def __init__(self, n_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.reduce_mean = cfg.group_reduce == "mean"
        self.frame_names = list(cfg.frame_params)
        self.n_frame = len(self.frame_names)
        self.mlp = MLP(n_dim + self.n_frame, cfg.hidden, 1, cfg.activation, resnet_dt=cfg.resnet_dt,
                       deepmd_fitting=cfg.deepmd_fitting)
        self.register_buffer("shift", torch.zeros(1))
        self.register_buffer("scale", torch.ones(1))
        register_frame_buffers(self, self.n_frame)

    def forward(self, node: Tensor, batch: Tensor, n_structures: int, group: Tensor, weight: Tensor,
                n_groups: int, frame: Tensor, mask: Tensor) -> Tensor:
        """``node`` [N, n_dim], ``batch`` [N], ``group`` [B] (group of each structure, 0..G-1), ``weight`` [B],
        ``frame`` [B, F] (one value per group, repeated on its components), ``mask`` [N] (1: the atom is pooled,
        0: it is only environment) -> values [G]."""
        m = mask.to(node.dtype)
        counts = scatter_sum(m, batch, n_structures)
        pooled = scatter_sum(node * m.unsqueeze(1), batch, n_structures) / counts.unsqueeze(1)   # [B, n_dim]
        w = weight.to(node.dtype).unsqueeze(1)
        embedding = scatter_sum(pooled * w, group, n_groups)                                 # [G, n_dim]
        total_w = scatter_sum(w, group, n_groups)                                            # [G, 1]
        if self.reduce_mean:
            embedding = embedding / total_w
        x = embedding
        if self.n_frame > 0:
            f = (frame.index_select(1, self.frame_columns).to(node.dtype) - self.frame_mean) / self.frame_std
            a = w.abs()             # equal within a group: any positive average gives it, even when Σ w_c = 0
            x = torch.cat([embedding, scatter_sum(f * a, group, n_groups) / scatter_sum(a, group, n_groups)], 1)
        return self.mlp(x).squeeze(1) * self.scale + self.shift


class DipoleHead(nn.Module):
    """Dipole moment magnitude (Debye) from per-atom charges (e) made neutral per structure: |Σ q_i r_i|."""

    def __init__(self, n_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.mlp = MLP(n_dim, cfg.hidden, 1, cfg.activation, resnet_dt=cfg.resnet_dt,
                       deepmd_fitting=cfg.deepmd_fitting)
        self.to_debye = E_ANGSTROM_TO_DEBYE
        self.register_buffer("bias", torch.zeros(N_TYPES))   # unused (charges are made neutral); kept for fitting
        self.register_buffer("scale", torch.ones(1))

    def forward(self, node: Tensor, numbers: Tensor, batch: Tensor, positions: Tensor, dataset: Tensor,
                n_structures: int, frame: Tensor) -> Tuple[Tensor, Tensor]:
        q = self.mlp(node).squeeze(1) * self.scale
        counts = scatter_sum(torch.ones_like(q), batch, n_structures)
        q = q - (scatter_sum(q, batch, n_structures) / counts)[batch]
        mu = scatter_sum(q.unsqueeze(1) * positions, batch, n_structures)                    # [B, 3] e·Å
        return q, torch.sqrt((mu * mu).sum(1) + 1e-12) * self.to_debye


class R2Head(nn.Module):
    """Electronic spatial extent ⟨R²⟩ (bohr²): Σ_i w_i |r_i − c|² / a0² + Σ_i b(Z_i), c = centroid."""

    def __init__(self, n_dim: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.mlp = MLP(n_dim, cfg.hidden, 1, cfg.activation, resnet_dt=cfg.resnet_dt,
                       deepmd_fitting=cfg.deepmd_fitting)
        self.inv_bohr2 = 1.0 / (BOHR * BOHR)
        self.register_buffer("bias", torch.zeros(N_TYPES))
        self.register_buffer("scale", torch.ones(1))

    def forward(self, node: Tensor, numbers: Tensor, batch: Tensor, positions: Tensor, dataset: Tensor,
                n_structures: int, frame: Tensor) -> Tuple[Tensor, Tensor]:
        counts = scatter_sum(torch.ones_like(positions[:, 0]), batch, n_structures)
        centre = scatter_sum(positions, batch, n_structures) / counts.unsqueeze(1)
        d2 = ((positions - centre[batch]) ** 2).sum(1) * self.inv_bohr2
        w = 1.0 + self.mlp(node).squeeze(1) * 0.1
        atomic = self.scale * w * d2 + self.bias[numbers]
        return atomic, scatter_sum(atomic, batch, n_structures)


def make_head(n_dim: int, cfg: HeadConfig) -> nn.Module:
    """Head module for a config."""
    if cfg.kind == "forcefield":
        return ForceFieldHead(n_dim, cfg)
    if cfg.kind == "scalar":
        return ScalarHead(n_dim, cfg)
    if cfg.kind == "group":
        return GroupHead(n_dim, cfg)
    if cfg.kind == "dipole":
        return DipoleHead(n_dim, cfg)
    if cfg.kind == "knn_ood":
        from mftcalc.model.applicability import KnnApplicabilityHead
        return KnnApplicabilityHead(n_dim)
    return R2Head(n_dim, cfg)
