"""Per-structure all-pairs search for batches of small non-periodic structures (molecules).

Each atom is one entry whose candidates are all atoms of its own structure: sum over structures
of n_b^2 candidates, no grid, no sort, no whole-batch N x N. Requires atoms of a structure to be
contiguous (``batch`` sorted).
"""
from typing import Tuple

import torch
from torch import Tensor

from ._candidates import filter_candidates


def all_pairs(positions: Tensor, cutoff: float, batch: Tensor, atoms: Tensor, chunk: int,
              use_triton: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """All directed pairs closer than ``cutoff`` within each structure, no periodicity.

    positions: [N, 3] Å; batch: [N] int64 sorted structure index; atoms: [B] int64 atoms per
    structure; chunk: candidates per pass; use_triton: the Triton candidate filter (eager).
    Returns i [E] int64 (ascending), j [E] int64 and squared distances [E] Å².
    """
    n_atoms = positions.shape[0]
    first = (torch.cumsum(atoms, 0) - atoms).index_select(0, batch)  # first atom of i's structure
    count = atoms.index_select(0, batch)
    # candidate j = i sits at (start of i's candidates) + (i - first)
    self_index = torch.cumsum(count, 0) - count + torch.arange(n_atoms, device=positions.device) - first
    return filter_candidates(positions, first, count, -positions, self_index, cutoff, chunk, use_triton)
