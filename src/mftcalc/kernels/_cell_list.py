"""Pure-torch cell-list search: candidates from the link table, filtered by distance.

Device-agnostic (only torch ops, no Python loop over atoms), so it is also the GPU path. Work is
linear in the number of candidates, ~27 bins' worth of atoms per atom in a crystal. Entries
(``_candidates``) are (atom, link) pairs enumerated atom by atom in input order, so the pair list
comes out sorted by centre atom without a sort.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._candidates import filter_candidates
from ._grid import Grid
from ._links import Links


def cell_list_pairs(cutoff: float, grid: Grid, links: Links, chunk: int,
                    use_triton: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """All directed pairs closer than ``cutoff``.

    grid: the binned batch (``build_grid``); links: its link table (``link_bins``);
    chunk: candidates per pass (bounds peak memory); use_triton: the Triton candidate filter (eager).
    Returns i [E] int64 (ascending), j [E] int64, shifts [E, 3] (integer-valued, dtype of the
    positions; relative to the unwrapped input positions) and squared distances [E] Å².
    """
    device = grid.positions.device
    n_entries = links.atom_link_count
    entry_start = torch.cumsum(n_entries, 0) - n_entries
    owner = torch.repeat_interleave(n_entries)
    link = torch.arange(owner.shape[0], device=device) + (links.atom_link_start - entry_start).index_select(0, owner)
    count = links.count.index_select(0, link)
    translation = links.vector.index_select(0, link) - grid.positions.index_select(0, owner)
    # the atom itself: in its home entry, at its rank within its own bin
    home_entry = entry_start + links.atom_home - links.atom_link_start
    self_index = (torch.cumsum(count, 0) - count).index_select(0, home_entry) + links.atom_rank
    entry, k, d2 = filter_candidates(
        links.sorted_positions, links.first.index_select(0, link), count, translation, self_index, cutoff, chunk,
        use_triton,
    )
    i = owner.index_select(0, entry)
    j = links.perm.index_select(0, k)
    image = grid.image.to(grid.positions.dtype)
    shifts = links.wrap.index_select(0, link.index_select(0, entry)) + image.index_select(0, i) - image.index_select(0, j)
    return i, j, shifts, d2
