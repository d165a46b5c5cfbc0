"""Binning grids for the cell-list search: per-structure bins, wrapped positions and search ranges.

Each structure is searched in its *search lattice* (``_lattice``: periodic vectors reduced, non-
periodic ones completed by orthonormal vectors). Atoms are expressed in fractional coordinates of
that lattice, wrapped into the periodic box (the removed lattice translations are kept as ``image``
so shifts refer to the unwrapped input), and binned on a grid whose bins are at least ``cutoff``
wide (perpendicular width) along every direction. A neighbour of an atom in bin ``b`` then lies in
bins ``b + o`` with ``|o_d| <= search[d]``; ``search`` is 1 for ordinary cells, larger for cells
thinner than the cutoff (many periodic images), and 0 along a direction that holds a single
non-periodic bin (a small molecule inside a mixed batch is thus searched all-pairs). Bins of half
or a third of the cutoff would scan ~40 % / ~55 % fewer candidates but were measured slower on
both backends (more, shorter ranges per atom). The C++ backend mirrors this geometry in
``_cpp/grid.h``: change both together (the tests hold both backends to ASE).
"""
from typing import List, NamedTuple

import torch
from torch import Tensor

from ._lattice import effective_cell, needs_reduction, reduce_lattice, rows_times


class Grid(NamedTuple):
    """Binned atoms of a batch.

    positions: [N, 3] Å (dtype of the input) positions wrapped into the periodic box.
    image: [N, 3] int64 lattice translations removed by the wrap, in the input cell's basis
        (input positions = positions + image @ cell).
    bin_id: [N] int64 global bin of each atom (structures own disjoint, consecutive id ranges;
        ids are row-major over the structure's grid, last direction fastest).
    bins: [B, 3] int64 bins per direction of each structure.
    search: [B, 3] int64 search range (in bins) per direction of each structure.
    first_bin: [B] int64 global id of each structure's first bin.
    transform: [B, 3, 3] int64 unimodular matrix with search lattice = transform @ cell; bin
        offsets count search-lattice vectors and map to input-cell shifts through it.
    n_bins: total number of bins in the batch.
    """

    positions: Tensor
    image: Tensor
    bin_id: Tensor
    bins: Tensor
    search: Tensor
    first_bin: Tensor
    transform: Tensor
    n_bins: int


def _cap_bins(bins: Tensor, atoms: Tensor) -> Tensor:
    """Shrink [B, 3] bin counts (keeping >= 1) to at most 8 bins per atom (+ 64) per structure.

    Vacuum-filled periodic boxes or far-apart atoms thus never allocate huge, empty grids.
    atoms: [B] int64 atoms per structure.
    """
    max_bins = (atoms * 8 + 64).to(torch.float64)
    for _ in range(3):
        total = bins.prod(dim=1).to(torch.float64)
        active = (bins > 1).sum(dim=1).clamp_min(1).to(torch.float64)
        scale = torch.where(total > max_bins, (max_bins / total) ** (1.0 / active), 1.0)
        bins = torch.floor(bins.to(torch.float64) * scale.unsqueeze(1)).long().clamp_min(1)
    return bins


def build_grid(positions: Tensor, cutoff: float, batch: Tensor, cell: Tensor, pbc: Tensor, reduce: bool,
               all_periodic: bool = False) -> Grid:
    """Bin the atoms of a batch for a cutoff search.

    positions: [N, 3] Å; batch: [N] int64 structure index; cell: [B, 3, 3] Å; pbc: [B, 3] bool.
    reduce: whether to reduce the periodic lattice first (only matters for >= 2 periodic directions).
    all_periodic: every direction of every structure is periodic (the cell needs no completion).
    Geometry is done in float64 whatever the input dtype, so binning never loses a pair to rounding.
    Raises ValueError when a periodic structure has a singular cell.
    """
    n_struct = cell.shape[0]
    cell64 = cell.to(torch.float64)
    # an already reduced lattice (the usual cell) skips the reduction sweeps (one host sync instead of ~170 ops)
    if reduce and bool(needs_reduction(cell64, pbc).any()):
        reduced, transform = reduce_lattice(cell64, pbc)
    else:
        reduced = cell64
        transform = torch.eye(3, dtype=torch.float64, device=cell.device).expand(n_struct, 3, 3)
    inverse, info = torch.linalg.inv_ex(reduced if all_periodic else effective_cell(reduced, pbc))
    pos64 = positions.to(torch.float64)
    frac = rows_times(pos64, inverse.index_select(0, batch))  # [N, 3]
    periodic = pbc.index_select(0, batch)  # [N, 3]
    image = torch.where(periodic, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - image
    # non-periodic directions: bins span the atoms' extent
    index = batch.unsqueeze(1).expand(-1, 3)
    inf = torch.full((n_struct, 3), float("inf"), dtype=torch.float64, device=positions.device)
    low = inf.scatter_reduce(0, index, frac, "amin")
    high = (-inf).scatter_reduce(0, index, frac, "amax")
    low = torch.where(pbc | torch.isinf(low), torch.zeros_like(low), low)
    extent = torch.where(pbc | torch.isinf(high), torch.ones_like(high), high - low)  # Å if non-periodic
    # perpendicular widths (Å): |column d of the inverse| is 1 / (distance between lattice planes)
    width = extent / torch.linalg.vector_norm(inverse, dim=1)
    bins = _cap_bins(torch.floor(width / cutoff).long().clamp_min(1), torch.bincount(batch, minlength=n_struct))
    # periodic: enough bins to reach `cutoff`; non-periodic: 1 (bins are >= cutoff wide), 0 if one bin
    needed = pbc | (bins > 1)
    safe_width = torch.where(needed, width, torch.full_like(width, cutoff))
    # the slack keeps a cutoff equal to a whole number of bin widths (up to rounding) from adding a bin
    search = torch.ceil(cutoff * bins / safe_width - 1e-9).long().clamp_min(1)
    search = torch.where(needed, search, torch.zeros_like(search))
    # bins per unit of (shifted) fractional coordinate
    density = bins / extent.clamp_min(1e-300)
    bins_at = bins.index_select(0, batch)
    scaled = (frac - low.index_select(0, batch)) * density.index_select(0, batch)
    cell_bin = torch.minimum(torch.floor(scaled).long().clamp_min(0), bins_at - 1)
    per_struct = bins.prod(dim=1)
    first_bin = torch.cumsum(per_struct, 0) - per_struct
    bin_id = first_bin.index_select(0, batch) + (
        (cell_bin[:, 0] * bins_at[:, 1] + cell_bin[:, 1]) * bins_at[:, 2] + cell_bin[:, 2]
    )
    # one host sync for everything the caller needs on the host
    checks: List[int] = torch.stack([per_struct.sum(), (info != 0).sum()]).tolist()
    if checks[1] != 0:
        raise ValueError(
            "neighbor_list: a periodic direction has a zero or linearly dependent lattice vector; "
            "pass a non-singular cell or set pbc False along that direction"
        )
    wrapped = (pos64 - rows_times(image, reduced.index_select(0, batch))).to(positions.dtype)
    image = rows_times(image, transform.index_select(0, batch))  # in the input cell's basis
    return Grid(wrapped, image.long(), bin_id, bins, search, first_bin, transform.long(), int(checks[0]))
