"""The Triton neighbour search (backend 'triton'): bin atoms into cells, count pairs, write pairs.

The whole search is four Triton launches and three torch ops, with one host sync (the number of pairs, read together
with the input checks):

1. ``bin_structures`` (one program per structure): search geometry and the bin of every atom (``_triton_bins``);
2. ``torch.sort`` of the bin ids (stable: a deterministic order of atoms within a bin);
3. ``index_bins``: first sorted atom of every bin; wrapped positions and images in sorted order;
4. ``scan_pairs`` count pass (one program per atom, ``_triton_pairs``); ``torch.cumsum`` of the counts;
5. the sync: number of pairs and the status flags (bad batch, singular cell), raised here;
6. ``scan_pairs`` write pass straight into the output tensors.

Every structure goes through the same cells, molecules included: a small molecule fits one bin per direction and is
then searched all-pairs (search range 0), so batches of many molecules need no separate path. Outputs are
``neighbor_list``'s: pairs sorted by centre atom, the same pair set as the torch and C++ searches (pairs closer to
the cutoff than rounding may go either way); within one centre the order is the scan order, not the torch search's.
Used for CUDA tensors when ``triton`` is installed; with ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors
through Triton's interpreter (the tests).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from ._triton_bins import GEO, INFO, bin_structures, index_bins
from ._triton_pairs import scan_pairs

PAIR_BLOCK = 64    # candidates per step of a centre's scan
PAIR_WARPS = 2
INDEX_BLOCK = 256  # bins (and sorted atoms) per program of index_bins


def _atom_block(n_atoms: int, n_structures: int) -> Tuple[int, int]:
    """(atoms per step, warps) of bin_structures, from host numbers only: 64 for batches of small structures,
    1024 for large ones (two compiled variants per dtype)."""
    return (64, 2) if n_atoms <= 128 * max(n_structures, 1) else (1024, 8)


def triton_search(positions: Tensor, batch: Tensor, cell: Tensor, pbc: Tensor,
                  cutoff: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``neighbor_list`` on Triton over ``prepare_inputs`` output.

    positions: [N, 3] Å float32 or float64; batch: [N] int64 sorted; cell: [B, 3, 3] Å; pbc: [B, 3] bool.
    Returns edge_index [2, E] int64 (centre ascending), shifts [E, 3] (integer-valued, dtype of positions) and
    distances [E] Å. Raises ValueError for an unsorted batch, a batch entry outside 0..B-1 or a singular periodic
    cell (detected on the device, raised at the one sync).
    """
    dtype, device = positions.dtype, positions.device
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"neighbor_list: backend 'triton' takes float32 or float64 positions, got {dtype}; "
                         "convert them or pass backend='torch'")
    n_atoms, n_structures = positions.shape[0], cell.shape[0]
    if n_atoms == 0 or n_structures == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty.view(2, 0), torch.zeros((0, 3), dtype=dtype, device=device), torch.zeros(0, dtype=dtype,
                                                                                                  device=device)
    positions = positions.contiguous()
    batch = batch.contiguous()
    cell = cell.to(torch.float64).contiguous()
    pbc = pbc.contiguous()
    n_bins = 8 * n_atoms + 64 * n_structures  # the per-structure caps, summed: no sync needed
    cutoff_t = torch.full((1,), cutoff, dtype=torch.float64, device=device)
    status = torch.zeros(2, dtype=torch.long, device=device)
    geo = torch.empty((n_structures, GEO.value), dtype=torch.float64, device=device)
    info = torch.empty((n_structures, INFO.value), dtype=torch.long, device=device)
    bin_id = torch.empty(n_atoms, dtype=torch.int32, device=device)
    wrapped = torch.empty((3, n_atoms), dtype=dtype, device=device)
    image = torch.empty((3, n_atoms), dtype=torch.int32, device=device)
    block, warps = _atom_block(n_atoms, n_structures)
    bin_structures[(n_structures,)](positions, batch, cell, pbc, cutoff_t, n_atoms, n_structures, geo, info, bin_id,
                                    wrapped, image, status, BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    sorted_id, perm = torch.sort(bin_id, stable=True)
    bin_start = torch.empty(n_bins + 1, dtype=torch.int32, device=device)
    sorted_wrapped = torch.empty_like(wrapped)
    sorted_image = torch.empty_like(image)
    programs = (max(n_bins + 1, n_atoms) + INDEX_BLOCK - 1) // INDEX_BLOCK
    index_bins[(programs,)](sorted_id, perm, wrapped, image, n_atoms, n_bins, n_atoms.bit_length(), bin_start,
                            sorted_wrapped, sorted_image, BLOCK=INDEX_BLOCK, num_warps=4,
                            enable_fp_fusion=False)
    counts = torch.empty(n_atoms, dtype=torch.long, device=device)
    scan = (sorted_id, perm, batch, geo, info, bin_start, sorted_wrapped, sorted_image, cutoff_t, n_atoms,
            n_structures, counts)
    scan_pairs[(n_atoms,)](*scan, counts, counts, wrapped, counts, 0, WRITE=False, BLOCK=PAIR_BLOCK,
                           num_warps=PAIR_WARPS, enable_fp_fusion=False)
    ends = torch.cumsum(counts, 0)
    host: List[int] = torch.cat([ends[-1:], status]).tolist()  # the one sync
    if host[1] != 0:
        raise ValueError(f"neighbor_list: batch must be sorted ascending with values in 0..{n_structures - 1} "
                         "(B = cell.shape[0]; atoms of a structure contiguous)")
    if host[2] != 0:
        raise ValueError("neighbor_list: a periodic direction has a zero or linearly dependent lattice vector; "
                         "pass a non-singular cell or set pbc False along that direction")
    n_pairs = host[0]
    edge_index = torch.empty((2, n_pairs), dtype=torch.long, device=device)
    shifts = torch.empty((n_pairs, 3), dtype=dtype, device=device)
    distances = torch.empty(n_pairs, dtype=dtype, device=device)
    if n_pairs > 0:
        scan_pairs[(n_atoms,)](*scan, ends, edge_index, shifts, distances, n_pairs, WRITE=True, BLOCK=PAIR_BLOCK,
                               num_warps=PAIR_WARPS, enable_fp_fusion=False)
    return edge_index, shifts, distances
