"""Lattice preprocessing for the search: reduce periodic vectors, complete non-periodic ones.

Both only change the basis the search works in, never the pair set: a strongly sheared cell is
first reduced to a near-orthogonal basis of the same lattice (so the search box around an atom is
not much larger than the cutoff sphere), and directions without periodicity get unit vectors
orthogonal to the periodic ones (so molecules with an all-zero cell and slabs work).
"""
from typing import List, Tuple

import torch
from torch import Tensor


def rows_times(vectors: Tensor, matrices: Tensor) -> Tensor:
    """Row vector times matrix, row by row: [M, 3] x [M, 3, 3] -> [M, 3] (faster than bmm on CPU)."""
    return (vectors[:, 0:1] * matrices[:, 0] + vectors[:, 1:2] * matrices[:, 1]) + vectors[:, 2:3] * matrices[:, 2]


def needs_reduction(cell: Tensor, pbc: Tensor) -> Tensor:
    """[B] bool: whether :func:`reduce_lattice` would change the periodic vectors of each structure (some
    projection of one periodic vector on another exceeds one half of the latter's squared length)."""
    c = cell.to(torch.float64)
    gram = torch.bmm(c, c.transpose(1, 2))                                   # [B, 3, 3]
    ratio = gram / torch.diagonal(gram, dim1=1, dim2=2).clamp_min(1e-300).unsqueeze(1)   # [b, p, q] = <p,q>/<q,q>
    pair = pbc.unsqueeze(2) & pbc.unsqueeze(1) & ~torch.eye(3, dtype=torch.bool, device=cell.device)
    return ((ratio.abs() > 0.5 + 1e-9) & pair).flatten(1).any(dim=1)


def reduce_lattice(cell: Tensor, pbc: Tensor, max_sweeps: int = 100) -> Tuple[Tensor, Tensor]:
    """Pairwise (Gauss) reduction of the periodic lattice vectors of each structure.

    Repeatedly subtracts from each periodic vector the nearest integer multiple of another one
    until no projection exceeds one half (each step strictly shortens a vector, so it ends).
    cell: [B, 3, 3] float64 Å rows are lattice vectors; pbc: [B, 3] bool.
    Returns the reduced cell [B, 3, 3] float64 and the integer-valued unimodular transform
    [B, 3, 3] float64 with reduced = transform @ cell (non-periodic rows are left unchanged).
    """
    rows: List[Tensor] = [cell[:, d] for d in range(3)]
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand(cell.shape[0], 3, 3)
    transform: List[Tensor] = [eye[:, d] for d in range(3)]
    for _ in range(max_sweeps):
        changed = torch.zeros(cell.shape[0], dtype=torch.bool, device=cell.device)
        for p in range(3):
            for q in range(3):
                if p == q:
                    continue
                ratio = (rows[p] * rows[q]).sum(-1) / (rows[q] * rows[q]).sum(-1).clamp_min(1e-300)
                step = (pbc[:, p] & pbc[:, q]) & (ratio.abs() > 0.5 + 1e-9)
                mu = torch.where(step, torch.round(ratio), torch.zeros_like(ratio)).unsqueeze(-1)
                rows[p] = rows[p] - mu * rows[q]
                transform[p] = transform[p] - mu * transform[q]
                changed = changed | step
        if not bool(changed.any()):
            break
    unimodular = torch.stack(transform, dim=1)
    return torch.bmm(unimodular, cell), unimodular


def effective_cell(cell: Tensor, pbc: Tensor) -> Tensor:
    """Lattice vectors along periodic directions, an orthonormal completion along the others.

    cell: [B, 3, 3] Å, rows are lattice vectors (non-periodic rows are ignored, may be zero).
    pbc: [B, 3] bool.
    Returns [B, 3, 3] (dtype of ``cell``); rows replacing non-periodic vectors are unit vectors
    orthogonal to all periodic ones, so fractional coordinates along them are in Å.
    """
    n_struct = cell.shape[0]
    rows = torch.where(pbc.unsqueeze(-1), cell, torch.zeros_like(cell))
    basis = []  # orthonormal basis of the periodic span, zero vectors for non-periodic rows
    for d in range(3):
        u = rows[:, d]
        for q in basis:
            u = u - (u * q).sum(-1, keepdim=True) * q
        norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        basis.append(torch.where(norm > 0, u / norm.clamp_min(1e-300), torch.zeros_like(u)))
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device).expand(n_struct, 3, 3)
    completion = []
    for _ in range(3):
        cand = eye
        for q in basis + completion:
            cand = cand - (cand * q.unsqueeze(1)).sum(-1, keepdim=True) * q.unsqueeze(1)
        norm = torch.linalg.vector_norm(cand, dim=-1)  # [B, 3]
        best = norm.argmax(dim=1, keepdim=True)  # axis most orthogonal to the span so far
        vec = cand.gather(1, best.unsqueeze(-1).expand(n_struct, 1, 3)).squeeze(1)
        completion.append(vec / norm.gather(1, best).clamp_min(1e-300))
    slot = (torch.cumsum((~pbc).long(), dim=1) - 1).clamp_min(0)  # rank among non-periodic dirs
    fill = torch.stack(completion, dim=1).gather(1, slot.unsqueeze(-1).expand(n_struct, 3, 3))
    return torch.where(pbc.unsqueeze(-1), cell, fill)


