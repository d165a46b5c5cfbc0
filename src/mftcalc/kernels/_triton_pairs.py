"""Triton kernels that find the pairs of binned atoms: a count pass, then a write pass at known offsets.

One program per centre atom (in bin-sorted order, so neighbouring programs read the same bins) scans the bins within
its structure's search range. Along the last bin direction the bins of one row are consecutive in the sorted order,
so each row is one contiguous range of candidates per periodic image (one range, or two or three where the row wraps
around the box), read in blocks of ``BLOCK``. The count pass writes the number of neighbours of each centre at its
input index; an exclusive cumulative sum of those counts gives every centre its output offset, and the write pass
rescans the same ranges in the same order and writes (i, j, shift, distance) there. Pairs therefore come out sorted
by centre atom (input order), and within a centre in scan order, with no sort and no atomics: the output is
deterministic.

A candidate at sorted index k in a bin reached by crossing ``w`` search-lattice vectors is at
``wrapped[k] + w @ R``; its shift in the input cell's basis is ``(w + image[i] - image[j]) @ T``.
Integer division and remainder only see non-negative operands (see ``_triton_bins``).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._triton_bins import GEO, INFO


@triton.jit(do_not_specialize=["n_atoms", "n_structures", "n_pairs"])
def scan_pairs(sorted_id, perm, batch, geo, info, bin_start, sorted_wrapped, sorted_image, cutoff_ptr, n_atoms,
               n_structures, counts, offsets, out_index, out_shift, out_distance, n_pairs,
               WRITE: tl.constexpr, BLOCK: tl.constexpr):
    """Program q: the neighbours of the atom at sorted position q (count pass, or write pass if ``WRITE``).

    sorted_id [N] int32, perm [N] int64, batch [N] int64, geo/info from ``bin_structures``, bin_start
    [n_bins + 1] int32, sorted_wrapped [3, N] Å, sorted_image [3, N] int32, cutoff_ptr [1] float64 Å.
    Count pass: counts [N] int64 (input order). Write pass: offsets [N] int64 inclusive ends of each centre's
    pairs (input order), out_index [2, n_pairs] int64, out_shift [n_pairs, 3] and out_distance [n_pairs] Å (dtype
    of the positions).
    """
    q = tl.program_id(0).to(tl.int64)
    n = n_atoms.to(tl.int64)
    centre = tl.load(perm + q)
    b = tl.minimum(tl.maximum(tl.load(batch + centre), 0), n_structures - 1)  # in range even on bad input
    s = info + INFO * b
    n0, n1, n2 = tl.load(s + 0), tl.load(s + 1), tl.load(s + 2)
    s0, s1, s2 = tl.load(s + 3), tl.load(s + 4), tl.load(s + 5)
    p0, p1, p2 = tl.load(s + 6) != 0, tl.load(s + 7) != 0, tl.load(s + 8) != 0
    first_bin = tl.load(s + 9)
    g = geo + GEO * b
    r0x, r0y, r0z = tl.load(g + 0), tl.load(g + 1), tl.load(g + 2)
    r1x, r1y, r1z = tl.load(g + 3), tl.load(g + 4), tl.load(g + 5)
    r2x, r2y, r2z = tl.load(g + 6), tl.load(g + 7), tl.load(g + 8)
    local = tl.minimum(tl.maximum(tl.load(sorted_id + q).to(tl.int64) - first_bin, 0), n0 * n1 * n2 - 1)
    c2 = local % n2
    c1 = (local // n2) % n1
    c0 = local // (n1 * n2)
    xi = tl.load(sorted_wrapped + q)
    yi = tl.load(sorted_wrapped + n + q)
    zi = tl.load(sorted_wrapped + 2 * n + q)
    dtype = xi.dtype
    cutoff = tl.load(cutoff_ptr)
    cutoff2 = cutoff * cutoff
    # bin ranges: all images along periodic directions, clipped to the grid along the others
    lo0 = tl.where(p0, c0 - s0, tl.maximum(c0 - s0, 0))
    hi0 = tl.where(p0, c0 + s0, tl.minimum(c0 + s0, n0 - 1))
    lo1 = tl.where(p1, c1 - s1, tl.maximum(c1 - s1, 0))
    hi1 = tl.where(p1, c1 + s1, tl.minimum(c1 + s1, n1 - 1))
    lo2 = tl.where(p2, c2 - s2, tl.maximum(c2 - s2, 0))
    hi2 = tl.where(p2, c2 + s2, tl.minimum(c2 + s2, n2 - 1))
    # box lengths crossed: (a + lift) // n - lift // n with lift a multiple of n making a + lift >= 0
    lift0, lift1, lift2 = (s0 // n0 + 1) * n0, (s1 // n1 + 1) * n1, (s2 // n2 + 1) * n2
    w2_lo = (lo2 + lift2) // n2 - lift2 // n2
    w2_hi = (hi2 + lift2) // n2 - lift2 // n2
    xi64, yi64, zi64 = xi.to(tl.float64), yi.to(tl.float64), zi.to(tl.float64)
    if WRITE:
        written = tl.load(offsets + centre) - tl.load(counts + centre)
        ii0 = tl.load(sorted_image + q)
        ii1 = tl.load(sorted_image + n + q)
        ii2 = tl.load(sorted_image + 2 * n + q)
        t0x, t0y, t0z = tl.load(g + 9), tl.load(g + 10), tl.load(g + 11)
        t1x, t1y, t1z = tl.load(g + 12), tl.load(g + 13), tl.load(g + 14)
        t2x, t2y, t2z = tl.load(g + 15), tl.load(g + 16), tl.load(g + 17)
    hits = tl.zeros((BLOCK,), dtype=tl.int32)
    # (helpers are inlined here: each call of a jit function costs ~1 ms in Triton's interpreter)
    for a0 in range(lo0, hi0 + 1):
        w0 = (a0 + lift0) // n0 - lift0 // n0
        x0 = (a0 + lift0) % n0
        ux, uy, uz = w0 * r0x - xi64, w0 * r0y - yi64, w0 * r0z - zi64
        for a1 in range(lo1, hi1 + 1):
            w1 = (a1 + lift1) // n1 - lift1 // n1
            row = bin_start + first_bin + (x0 * n1 + (a1 + lift1) % n1) * n2
            vx, vy, vz = ux + w1 * r1x, uy + w1 * r1y, uz + w1 * r1z
            for w2 in range(w2_lo, w2_hi + 1):
                # the bins of this row reached through w2 box lengths: one contiguous range of sorted atoms
                first = tl.load(row + tl.maximum(lo2 - w2 * n2, 0)).to(tl.int64)
                last = tl.load(row + tl.minimum(hi2 - w2 * n2, n2 - 1) + 1).to(tl.int64)
                tx = (vx + w2 * r2x).to(dtype)
                ty = (vy + w2 * r2y).to(dtype)
                tz = (vz + w2 * r2z).to(dtype)
                # the centre itself, at zero shift, is no neighbour (-1: no candidate is the centre)
                itself = tl.where((w0 == 0) & (w1 == 0) & (w2 == 0), q, -1)
                for block in range(first, last, BLOCK):
                    k = block + tl.arange(0, BLOCK)
                    m = k < last
                    dx = tl.load(sorted_wrapped + k, mask=m, other=0.0) + tx
                    dy = tl.load(sorted_wrapped + n + k, mask=m, other=0.0) + ty
                    dz = tl.load(sorted_wrapped + 2 * n + k, mask=m, other=0.0) + tz
                    d2 = dx * dx + dy * dy + dz * dz
                    hit = m & (d2 < cutoff2) & (k != itself)
                    if WRITE:
                        one = hit.to(tl.int64)
                        slot = written + tl.cumsum(one, axis=0) - one
                        keep = hit & (slot < n_pairs)  # in range even on bad input
                        j = tl.load(perm + k, mask=keep, other=0)
                        sh0 = (w0 + ii0 - tl.load(sorted_image + k, mask=keep, other=0)).to(tl.float64)
                        sh1 = (w1 + ii1 - tl.load(sorted_image + n + k, mask=keep, other=0)).to(tl.float64)
                        sh2 = (w2 + ii2 - tl.load(sorted_image + 2 * n + k, mask=keep, other=0)).to(tl.float64)
                        tl.store(out_index + slot, centre + slot * 0, mask=keep)
                        tl.store(out_index + n_pairs + slot, j, mask=keep)
                        tl.store(out_shift + 3 * slot, (sh0 * t0x + sh1 * t1x + sh2 * t2x).to(dtype), mask=keep)
                        tl.store(out_shift + 3 * slot + 1, (sh0 * t0y + sh1 * t1y + sh2 * t2y).to(dtype), mask=keep)
                        tl.store(out_shift + 3 * slot + 2, (sh0 * t0z + sh1 * t1z + sh2 * t2z).to(dtype), mask=keep)
                        if dtype == tl.float32:  # IEEE-rounded square root, as torch's
                            tl.store(out_distance + slot, tl.sqrt_rn(d2), mask=keep)
                        else:
                            tl.store(out_distance + slot, tl.sqrt(d2), mask=keep)
                        written += tl.sum(one, axis=0)
                    else:
                        hits += hit.to(tl.int32)
    if not WRITE:
        tl.store(counts + centre, tl.sum(hits, axis=0).to(tl.int64))
