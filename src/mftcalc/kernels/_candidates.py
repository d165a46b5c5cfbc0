"""Candidate-pair expansion and distance filter shared by the all-pairs and cell-list searches.

A search describes its candidates as *entries*: entry ``e`` pairs one centre atom with the
``count[e]`` consecutive atoms ``first[e] .. first[e] + count[e] - 1`` of a position array, all
translated by the same vector, so candidate vector = ``positions[k] + translation[e]``. Entries
are expanded with ``repeat_interleave`` (no Python loop over atoms) in chunks of whole entries to
bound memory; the output keeps entry order, so entries ordered by centre atom give pairs sorted
by centre atom without a sort.
"""
from typing import List, Tuple

import torch
from torch import Tensor


def _component(x: Tensor, d: int) -> Tensor:
    return x[:, d].contiguous()


@torch.jit.unused
def _triton_filter(positions: Tensor, first: Tensor, count: Tensor, translation: Tensor, self_index: Tensor,
                   cutoff: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The Triton kernels (eager only: TorchScript replaces this call by an error and never reaches it)."""
    from ._triton import filter_candidates_triton
    return filter_candidates_triton(positions, first, count, translation, self_index, cutoff)


def filter_candidates(
    positions: Tensor,
    first: Tensor,
    count: Tensor,
    translation: Tensor,
    self_index: Tensor,
    cutoff: float,
    chunk: int,
    use_triton: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Expand entries into candidates and keep those closer than ``cutoff``.

    positions: [M, 3] Å the candidates index into.
    first: [T] int64 index in ``positions`` of each entry's first candidate.
    count: [T] int64 number of candidates of each entry.
    translation: [T, 3] Å (dtype of ``positions``) added to every candidate of the entry.
    self_index: [S] int64 ascending global candidate indices (position in the concatenation of all
        entries' candidates) to drop whatever their distance: the atom itself at zero shift.
    chunk: candidates per pass (~30 bytes each of peak memory).
    use_triton: run the Triton kernels of ``_triton`` instead (eager mode; same outputs, no candidate array).
    Returns entry [E] int64, position index [E] int64 and squared distance [E] Å² of the kept
    candidates, in entry order.
    """
    if use_triton and not torch.jit.is_scripting():
        return _triton_filter(positions, first, count, translation, self_index, cutoff)
    device = positions.device
    n_entries = count.shape[0]
    inclusive = torch.cumsum(count, 0)
    total = int(inclusive[-1]) if n_entries > 0 else 0
    bounds: List[int] = [0]
    if total > chunk:
        marks = torch.arange(chunk, total, chunk, device=device)
        split: List[int] = torch.searchsorted(inclusive, marks, right=True).tolist()
        bounds += split
    bounds.append(n_entries)
    edges = torch.tensor(bounds, device=device)
    exclusive = inclusive - count
    offsets = torch.cat([exclusive, inclusive[-1:]]).index_select(0, edges) if n_entries > 0 else edges
    self_edges = torch.searchsorted(self_index, offsets)
    host: List[List[int]] = torch.stack([offsets, self_edges]).tolist()
    starts, self_starts = host[0], host[1]
    px, py, pz = _component(positions, 0), _component(positions, 1), _component(positions, 2)
    tx, ty, tz = _component(translation, 0), _component(translation, 1), _component(translation, 2)
    count32 = count.int()
    cutoff2 = cutoff * cutoff
    entries: List[Tensor] = []
    indices: List[Tensor] = []
    distances2: List[Tensor] = []
    for c in range(len(bounds) - 1):
        lo, hi, size = bounds[c], bounds[c + 1], starts[c + 1] - starts[c]
        if size == 0:
            continue
        # chunk-local candidate numbering keeps every index within int32
        base = (first[lo:hi] - (exclusive[lo:hi] - starts[c])).int()
        entry = torch.repeat_interleave(count32[lo:hi], output_size=size)
        k = base.index_select(0, entry) + torch.arange(size, device=device, dtype=torch.int32)
        dx = px.index_select(0, k) + tx[lo:hi].index_select(0, entry)
        dy = py.index_select(0, k) + ty[lo:hi].index_select(0, entry)
        dz = pz.index_select(0, k) + tz[lo:hi].index_select(0, entry)
        d2 = dx * dx + dy * dy + dz * dz
        d2.index_fill_(0, self_index[self_starts[c]:self_starts[c + 1]] - starts[c], float("inf"))
        hit = torch.nonzero(d2 < cutoff2).squeeze(1)
        entries.append(entry.index_select(0, hit) + lo)
        indices.append(k.index_select(0, hit))
        distances2.append(d2.index_select(0, hit))
    if len(entries) == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, dtype=positions.dtype, device=device)
    return torch.cat(entries).long(), torch.cat(indices).long(), torch.cat(distances2)
