"""Triton for the GPU neighbour search: whether it can run, ahead-of-time builds of its kernels, the old filter.

The search itself is ``_triton_search`` (cell-list kernels in ``_triton_bins`` and ``_triton_pairs``), chosen by
``_backend`` for CUDA tensors when ``triton`` is installed (``pip install "mftcalc[gpu]"``); with
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors through Triton's interpreter, which is how the tests
check them on machines without a GPU. ``compile_for`` builds them for a CUDA architecture without a GPU.

``filter_candidates_triton`` is the previous GPU path: the candidate distance filter of
``_candidates.filter_candidates`` (``use_triton=True``) in two passes. ``neighbor_list`` no longer calls it (the
cell-list kernels replace the whole torch search on CUDA); it goes when ``use_triton`` leaves ``_candidates``,
``_all_pairs`` and ``_cell_list``.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

BLOCK = 64


def import_error() -> Optional[str]:
    """Why ``triton`` cannot be used (None when it imports)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"{type(exc).__name__}: {exc}"
    return None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def usable_on(device: torch.device) -> Tuple[bool, str]:
    """(usable, reason) for tensors on ``device``: CUDA with triton installed, or any device when interpreting."""
    error = import_error()
    if error is not None:
        return False, f"triton unavailable ({error})"
    if device.type == "cuda" or interpreting():
        return True, ""
    return False, f"triton kernels run on CUDA tensors (or with TRITON_INTERPRET=1), got {device.type}"


def _cell_signatures(dtype: str) -> Dict[str, Tuple[Dict[str, str], Dict[str, Any]]]:
    """(signature, constexprs) of each cell-list kernel (``_triton_bins``, ``_triton_pairs``) for positions of
    ``dtype`` ('fp32' or 'fp64')."""
    f, i64, i32 = f"*{dtype}", "*i64", "*i32"
    bins = {"positions": f, "batch": i64, "cell": "*fp64", "pbc": "*i1", "cutoff_ptr": "*fp64", "n_atoms": "i32",
            "n_structures": "i32", "geo": "*fp64", "info": i64, "bin_id": i32, "wrapped": f, "image": i32,
            "status": i64}
    index = {"sorted_id": i32, "perm": i64, "wrapped": f, "image": i32, "n_atoms": "i32", "n_bins": "i32",
             "steps": "i32", "bin_start": i32, "sorted_wrapped": f, "sorted_image": i32}
    scan = {"sorted_id": i32, "perm": i64, "batch": i64, "geo": "*fp64", "info": i64, "bin_start": i32,
            "sorted_wrapped": f, "sorted_image": i32, "cutoff_ptr": "*fp64", "n_atoms": "i32", "n_structures": "i32",
            "counts": i64, "offsets": i64, "out_index": i64, "out_shift": f, "out_distance": f, "n_pairs": "i64"}
    return {"bin_structures": (bins, {"BLOCK": 128}), "index_bins": (index, {"BLOCK": 256}),
            "count_pairs": (scan, {"WRITE": False, "BLOCK": 64}), "write_pairs": (scan, {"WRITE": True, "BLOCK": 64})}


def compile_for(capability: int, dtype: str = "fp32") -> Dict[str, Any]:
    """Compile the cell-list kernels ahead of time for a CUDA compute capability (e.g. 90 for H100), no GPU needed.

    Returns ``{kernel name: compiled kernel}`` (its ``asm`` holds ``ptx`` and ``cubin``): ``bin_structures``,
    ``index_bins``, ``count_pairs`` and ``write_pairs`` (the two passes of ``scan_pairs``); used by the tests to
    check that the kernels build for real GPUs on machines without one. dtype: ``"fp32"`` or ``"fp64"``.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._triton_bins import bin_structures, index_bins
    from ._triton_pairs import scan_pairs
    kernels = {"bin_structures": bin_structures, "index_bins": index_bins, "count_pairs": scan_pairs,
               "write_pairs": scan_pairs}
    out = {}
    for name, (signature, constexprs) in _cell_signatures(dtype).items():
        signature = dict(signature, **{key: "constexpr" for key in constexprs})
        source = ASTSource(fn=kernels[name], signature=signature, constexprs=constexprs)
        out[name] = triton.compile(source, target=GPUTarget("cuda", capability, 32),
                                   options={"enable_fp_fusion": False})
    return out


@lru_cache(maxsize=2)
def _kernels(interpret: bool) -> Tuple[Any, Any]:
    """The two kernels, compiled (or interpreted) on first use; ``interpret`` keys the cache."""
    import triton
    import triton.language as tl

    # The two kernels repeat their candidate block on purpose: a nested @triton.jit helper is not found by
    # Triton's interpreter (it re-executes kernels from source with module globals), which the CPU tests use.
    @triton.jit
    def count_pairs(px, py, pz, first, count, tx, ty, tz, self_local, cutoff2_ptr, counts_out,
                    BLOCK: tl.constexpr):
        e = tl.program_id(0)
        start_k = tl.load(first + e)
        n = tl.load(count + e)
        sx = tl.load(tx + e)
        sy = tl.load(ty + e)
        sz = tl.load(tz + e)
        me = tl.load(self_local + e)
        cutoff2 = tl.load(cutoff2_ptr)
        hits = tl.zeros((BLOCK,), dtype=tl.int32)
        for block in range(0, n, BLOCK):
            offs = block + tl.arange(0, BLOCK)
            inside = offs < n
            k = start_k + offs
            dx = tl.load(px + k, mask=inside, other=0.0) + sx
            dy = tl.load(py + k, mask=inside, other=0.0) + sy
            dz = tl.load(pz + k, mask=inside, other=0.0) + sz
            d2 = dx * dx + dy * dy + dz * dz
            hit = inside & (d2 < cutoff2) & (offs != me)
            hits += hit.to(tl.int32)
        tl.store(counts_out + e, tl.sum(hits, axis=0).to(tl.int64))

    @triton.jit
    def write_pairs(px, py, pz, first, count, tx, ty, tz, self_local, cutoff2_ptr, offsets, out_entry, out_k,
                    out_d2, BLOCK: tl.constexpr):
        e = tl.program_id(0)
        start_k = tl.load(first + e)
        n = tl.load(count + e)
        sx = tl.load(tx + e)
        sy = tl.load(ty + e)
        sz = tl.load(tz + e)
        me = tl.load(self_local + e)
        cutoff2 = tl.load(cutoff2_ptr)
        written = tl.load(offsets + e)
        for block in range(0, n, BLOCK):
            offs = block + tl.arange(0, BLOCK)
            inside = offs < n
            k = start_k + offs
            dx = tl.load(px + k, mask=inside, other=0.0) + sx
            dy = tl.load(py + k, mask=inside, other=0.0) + sy
            dz = tl.load(pz + k, mask=inside, other=0.0) + sz
            d2 = dx * dx + dy * dy + dz * dz
            hit = (inside & (d2 < cutoff2) & (offs != me)).to(tl.int32)
            slot = written + (tl.cumsum(hit, axis=0) - hit)
            keep = hit != 0
            tl.store(out_k + slot, k, mask=keep)
            tl.store(out_d2 + slot, d2, mask=keep)
            tl.store(out_entry + slot, tl.zeros((BLOCK,), dtype=tl.int64) + e, mask=keep)
            written += tl.sum(hit, axis=0)

    return count_pairs, write_pairs


def filter_candidates_triton(positions: Tensor, first: Tensor, count: Tensor, translation: Tensor,
                             self_index: Tensor, cutoff: float) -> Tuple[Tensor, Tensor, Tensor]:
    """``_candidates.filter_candidates`` (same arguments but ``chunk``, same outputs and order) on Triton.

    positions: [M, 3] Å; first, count: [T] int64 candidate ranges of the entries; translation: [T, 3] Å;
    self_index: [S] int64 ascending global candidate indices to drop (at most one per entry: the atom itself).
    Returns entry [E] int64, position index [E] int64, squared distance [E] Å² (dtype of ``positions``).
    """
    device, dtype = positions.device, positions.dtype
    n_entries = count.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n_entries == 0:
        return empty, empty, torch.zeros(0, dtype=dtype, device=device)
    first = first.to(torch.long).contiguous()
    count = count.to(torch.long).contiguous()
    inclusive = torch.cumsum(count, 0)
    exclusive = inclusive - count
    self_local = torch.full((n_entries,), -1, dtype=torch.long, device=device)
    if self_index.numel() > 0:
        owner = torch.searchsorted(inclusive, self_index, right=True)
        self_local.index_copy_(0, owner, self_index - exclusive.index_select(0, owner))
    px, py, pz = (positions[:, d].contiguous() for d in range(3))
    tx, ty, tz = (translation[:, d].to(dtype).contiguous() for d in range(3))
    cutoff2 = torch.tensor([cutoff * cutoff], dtype=dtype, device=device)
    count_pairs, write_pairs = _kernels(interpreting())
    counts = torch.empty(n_entries, dtype=torch.long, device=device)
    count_pairs[(n_entries,)](px, py, pz, first, count, tx, ty, tz, self_local, cutoff2, counts, BLOCK=BLOCK,
                              enable_fp_fusion=False)
    ends = torch.cumsum(counts, 0)
    total = int(ends[-1])
    entry = torch.empty(total, dtype=torch.long, device=device)
    index = torch.empty(total, dtype=torch.long, device=device)
    d2 = torch.empty(total, dtype=dtype, device=device)
    if total > 0:
        write_pairs[(n_entries,)](px, py, pz, first, count, tx, ty, tz, self_local, cutoff2, ends - counts, entry,
                                  index, d2, BLOCK=BLOCK, enable_fp_fusion=False)
    return entry, index, d2
