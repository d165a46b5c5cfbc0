"""The graph the backbone runs on: edges within ``e_rcut`` and angle triplets within ``a_rcut`` (flat index lists).

Built inside the model from plain tensors, so the scripted model needs nothing else: the neighbour search runs
without autograd, then edge vectors are recomputed from positions, shifts and cell so that forces and stress
flow through them by autograd.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from mftcalc import keys as K
from mftcalc.kernels import neighbor_list

if TYPE_CHECKING:
    from mftcalc.data.structure import Structure


def edge_vectors(positions: Tensor, cell: Tensor, batch: Tensor, edge_index: Tensor, shifts: Tensor) -> Tensor:
    """Edge vectors ``r_ij = x_j − x_i + S · cell`` [E, 3] Å (differentiable in positions and cell)."""
    i = edge_index[0]
    j = edge_index[1]
    offset = torch.bmm(shifts.to(cell.dtype).unsqueeze(1), cell[batch[i]]).squeeze(1)
    return positions[j] - positions[i] + offset


def angle_index(a_centre: Tensor, n_nodes: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """All ordered pairs (p, q) of angle-edges that share a centre, the diagonal p == q included (as DPA3).

    Args:
        a_centre: [Ea] int64 centre atom of each angle-edge, sorted ascending.
        n_nodes: number of atoms N.
    Returns:
        ``a_ij``, ``a_ik`` [A] int64 indices into the angle-edge list (``a_ij`` sorted ascending);
        ``a_counts`` [Ea] angles per angle-edge (segment lengths of ``a_ij``);
        ``a_transpose`` [A] index of the angle (q, p) for each angle (p, q) (an involution).
    """
    counts = torch.bincount(a_centre, minlength=n_nodes)                  # [N] angle-edges per centre
    start = torch.cumsum(counts, 0) - counts                             # [N] first angle-edge of each centre
    m = counts[a_centre]                                                 # [Ea] block size of each angle-edge
    n_angles = int(m.sum())
    ea = torch.arange(a_centre.shape[0], device=a_centre.device)
    a_ij = torch.repeat_interleave(ea, m, output_size=n_angles)
    first = torch.cumsum(m, 0) - m                                       # [Ea] first angle of each angle-edge
    local_q = torch.arange(n_angles, device=a_centre.device) - torch.repeat_interleave(first, m, output_size=n_angles)
    start_a = start[a_centre]                                            # [Ea]
    a_ik = torch.repeat_interleave(start_a, m, output_size=n_angles) + local_q
    local_p = a_ij - start_a[a_ij]
    block_first = first[a_ij] - local_p * m[a_ij]                        # first angle of the centre's block
    a_transpose = block_first + local_q * m[a_ij] + local_p
    return a_ij, a_ik, m, a_transpose


def build_graph(positions: Tensor, cell: Tensor, pbc: Tensor, batch: Tensor, e_rcut: float,
                a_rcut: float) -> Dict[str, Tensor]:
    """Neighbour search and angle lists for a batch (no autograd; the caller recomputes vectors).

    Args:
        positions: [N, 3] Å. cell: [B, 3, 3] Å. pbc: [B, 3] bool. batch: [N] int64 sorted.
    Returns:
        ``edge_index`` [2, E] (sorted by centre), ``shifts`` [E, 3] integer shifts as floats,
        ``a_edges`` [Ea] indices of the edges shorter than ``a_rcut`` (sorted by centre),
        ``a_ij``/``a_ik`` [A] indices into ``a_edges`` of the two edges of each angle, ``a_counts`` [Ea],
        ``a_transpose`` [A] (see :func:`angle_index`), ``node_counts`` [N] edges per centre,
        ``a_node_counts`` [N] angle-edges per centre, and the padded per-centre layout of the edges (K = the
        largest number of edges of one centre): ``pad_edge`` [N·K] edge id in slot (centre, k) or E when empty,
        ``pad_neighbor`` [N·K] its neighbour atom or N when empty.
    """
    with torch.no_grad():
        edge_index, shifts, dist = neighbor_list(positions.detach(), e_rcut, batch, cell.detach(), pbc)
        a_edges = torch.nonzero(dist < a_rcut).squeeze(1)
        a_centre = edge_index[0][a_edges]
        a_ij, a_ik, a_counts, a_transpose = angle_index(a_centre, positions.shape[0])
        n_nodes = positions.shape[0]
        node_counts = torch.bincount(edge_index[0], minlength=n_nodes)
        pad_edge, pad_neighbor = padded_layout(edge_index, node_counts)
    return {"edge_index": edge_index, "shifts": shifts.to(positions.dtype), "a_edges": a_edges,
            "a_ij": a_ij, "a_ik": a_ik, "a_counts": a_counts, "a_transpose": a_transpose,
            "node_counts": node_counts, "a_node_counts": torch.bincount(a_centre, minlength=n_nodes),
            "pad_edge": pad_edge, "pad_neighbor": pad_neighbor}


def padded_layout(edge_index: Tensor, node_counts: Tensor) -> Tuple[Tensor, Tensor]:
    """Slots of a dense [N, K] per-centre layout of edges sorted by centre (K = max edges of one centre, ≥ 1).

    Returns ``pad_edge`` [N·K] (edge id, or E for an empty slot) and ``pad_neighbor`` [N·K] (neighbour atom j, or N
    for an empty slot), so ``cat([x, zero_row])[pad_edge].view(N, K, -1)`` is the padded per-centre copy of x.
    """
    n_nodes = node_counts.shape[0]
    n_edges = edge_index.shape[1]
    k = max(int(node_counts.max()) if n_nodes > 0 else 0, 1)
    centre = edge_index[0]
    first = torch.cumsum(node_counts, 0) - node_counts
    slot = torch.arange(n_edges, device=centre.device) - first[centre]
    flat = centre * k + slot
    pad_edge = torch.full((n_nodes * k,), n_edges, dtype=torch.long, device=centre.device)
    pad_edge[flat] = torch.arange(n_edges, device=centre.device)
    pad_neighbor = torch.full((n_nodes * k,), n_nodes, dtype=torch.long, device=centre.device)
    pad_neighbor[flat] = edge_index[1]
    return pad_edge, pad_neighbor


def angle_counts(structures: Sequence["Structure"], a_rcut: float, max_atoms: int = 8192) -> np.ndarray:
    """Number of angles [B] the backbone builds for each structure: Σ_i n_i² over its atoms (ordered neighbour pairs
    (j, k) of atom i, j = k included, as in the model), with n_i the
    neighbours of atom i within ``a_rcut`` Å (periodic images included). Used to size batches by angle count, the
    quantity that sets the memory traffic of the angle block."""
    from mftcalc.data.batch import collate, split_sizes_by_atoms
    out = np.zeros(len(structures), dtype=np.int64)
    for group in split_sizes_by_atoms([s.n_atoms for s in structures], max_atoms):
        batch = collate([structures[i] for i in group], torch.float64, properties=[])
        edge_index, _, _ = neighbor_list(batch[K.POSITIONS], a_rcut, batch[K.BATCH], batch[K.CELL], batch[K.PBC])
        per_atom = torch.bincount(edge_index[0], minlength=batch[K.POSITIONS].shape[0])
        per_structure = torch.zeros(len(group), dtype=torch.long).index_add_(0, batch[K.BATCH],
                                                                              per_atom * per_atom)
        out[group] = per_structure.numpy()
    return out
