"""Link table of the pure-torch cell list: which bin-sorted atom ranges each atom must scan.

A *link* is (occupied bin, neighbouring non-empty bin, lattice shift of the neighbour), computed
once per bin rather than per atom (links that continue each other in the sorted order with the
same shift are merged); every atom then scans the links of its own bin. The C++ kernel walks the
same bins itself (``_cpp/neighbors.cpp``).
"""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from ._grid import Grid
from ._lattice import rows_times


class Links(NamedTuple):
    """Candidate ranges of a binned batch (L links, N atoms, dtype of the positions).

    perm: [N] int64 input index of each atom in bin-sorted order.
    sorted_positions: [N, 3] Å wrapped positions in bin-sorted order.
    atom_link_start: [N] int64 first link of each atom (the links of its bin).
    atom_link_count: [N] int64 number of links of each atom.
    atom_home: [N] int64 the atom's home link (its own bin, unshifted).
    atom_rank: [N] int64 position of the atom within the atoms its home link offers.
    first: [L] int64 first bin-sorted atom the link offers.
    count: [L] int64 atoms the link offers.
    wrap: [L, 3] integer-valued cell shift of the link's atoms, in the input cell's basis.
    vector: [L, 3] Å Cartesian translation of the link's atoms (wrap @ cell).
    """

    perm: Tensor
    sorted_positions: Tensor
    atom_link_start: Tensor
    atom_link_count: Tensor
    atom_home: Tensor
    atom_rank: Tensor
    first: Tensor
    count: Tensor
    wrap: Tensor
    vector: Tensor


def _exclusive_cumsum(x: Tensor) -> Tensor:
    return torch.cumsum(x, 0) - x


def _bin_links(
    grid: Grid, cell: Tensor, pbc: Tensor, occupied: Tensor, bin_count: Tensor, bin_start: Tensor
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Non-empty neighbouring bins of each occupied bin.

    cell: [B, 3, 3] Å; pbc: [B, 3] bool; occupied: [K] int64 ids of the bins holding atoms;
    bin_count, bin_start: [n_bins] int64 atoms per bin and first position of each bin in the
    bin-sorted atom order.
    Returns, per link, ordered by occupied bin: owner [L] int64 (index into ``occupied``), first
    [L] int64 and count [L] int64 (the offered atoms in sorted order), wrap [L, 3] float64 (their
    lattice shift in the input cell's basis), its Cartesian vector [L, 3] float64 Å; and home [K]
    int64, the link of each occupied bin that holds the bin itself unshifted.
    """
    device = occupied.device
    structure = torch.searchsorted(grid.first_bin, occupied, right=True) - 1
    bins = grid.bins.index_select(0, structure)
    local = occupied - grid.first_bin.index_select(0, structure)
    rest = torch.div(local, bins[:, 2], rounding_mode="floor")
    position = torch.stack([torch.div(rest, bins[:, 1], rounding_mode="floor"), rest % bins[:, 1], local % bins[:, 2]], 1)
    search = grid.search.index_select(0, structure)
    span = 2 * search + 1
    n_offsets = span.prod(dim=1)
    owner = torch.repeat_interleave(n_offsets)
    code = torch.arange(owner.shape[0], device=device) - _exclusive_cumsum(n_offsets).index_select(0, owner)
    span = span.index_select(0, owner)
    rest = torch.div(code, span[:, 2], rounding_mode="floor")
    offset = torch.stack([torch.div(rest, span[:, 1], rounding_mode="floor"), rest % span[:, 1], code % span[:, 2]], 1)
    offset = offset - search.index_select(0, owner)
    structure = structure.index_select(0, owner)
    bins = bins.index_select(0, owner)
    raw = position.index_select(0, owner) + offset
    wrap = torch.div(raw, bins, rounding_mode="floor")  # search-lattice vectors crossed
    inside = (pbc.index_select(0, structure) | (wrap == 0)).all(dim=1)  # non-periodic: no wrap
    neighbour = raw - wrap * bins
    neighbour = grid.first_bin.index_select(0, structure) + (neighbour[:, 0] * bins[:, 1] + neighbour[:, 1]) * bins[:, 2] + neighbour[:, 2]
    neighbour = torch.where(inside, neighbour, 0)
    count = torch.where(inside, bin_count.index_select(0, neighbour), 0)
    keep = torch.nonzero(count).squeeze(1)
    owner = owner.index_select(0, keep)
    structure = structure.index_select(0, keep)
    wrap = wrap.index_select(0, keep)
    count = count.index_select(0, keep)
    first = bin_start.index_select(0, neighbour.index_select(0, keep))
    home = torch.nonzero((offset == 0).all(dim=1).index_select(0, keep)).squeeze(1)
    # merge links that continue each other in the sorted order with the same shift (consecutive
    # bins along the last direction): one longer range instead of several short ones
    follows = (owner[1:] == owner[:-1]) & (first[1:] == first[:-1] + count[:-1]) & (wrap[1:] == wrap[:-1]).all(dim=1)
    group = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long, device=device), (~follows).long()]), 0)
    lead = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool, device=device), ~follows])).squeeze(1)
    count = torch.zeros(lead.shape[0], dtype=torch.long, device=device).index_add_(0, group, count)
    structure = structure.index_select(0, lead)
    wrap = rows_times(wrap.index_select(0, lead).to(torch.float64), grid.transform.index_select(0, structure))
    vector = rows_times(wrap, cell.to(torch.float64).index_select(0, structure))
    return owner.index_select(0, lead), first.index_select(0, lead), count, wrap, vector, group.index_select(0, home)


def link_bins(cell: Tensor, pbc: Tensor, grid: Grid) -> Links:
    """Sort atoms by bin and build the link table. cell: [B, 3, 3] Å; pbc: [B, 3] bool."""
    device = grid.bin_id.device
    dtype = grid.positions.dtype
    perm = torch.argsort(grid.bin_id)
    bin_count = torch.bincount(grid.bin_id, minlength=grid.n_bins)
    bin_start = _exclusive_cumsum(bin_count)
    occupied = torch.nonzero(bin_count).squeeze(1)
    owner, first, count, wrap, vector, home = _bin_links(grid, cell, pbc, occupied, bin_count, bin_start)
    links_per_bin = torch.bincount(owner, minlength=occupied.shape[0])
    link_start = _exclusive_cumsum(links_per_bin)
    slot = torch.zeros(grid.n_bins, dtype=torch.long, device=device)
    slot = slot.index_copy_(0, occupied, torch.arange(occupied.shape[0], device=device))
    atom_bin = slot.index_select(0, grid.bin_id)  # index into ``occupied``
    atom_home = home.index_select(0, atom_bin)
    rank = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.shape[0], device=device))
    return Links(
        perm,
        grid.positions.index_select(0, perm),
        link_start.index_select(0, atom_bin),
        links_per_bin.index_select(0, atom_bin),
        atom_home,
        rank - first.index_select(0, atom_home),
        first,
        count,
        wrap.to(dtype),
        vector.to(dtype),
    )
