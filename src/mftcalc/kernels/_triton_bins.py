"""Triton kernels that bin the atoms of a batch into cells: per-structure search geometry, binning, bin index.

One program per structure (``bin_structures``) finds its atoms in the sorted ``batch`` (binary search), builds its
search lattice (periodic vectors Gauss-reduced, non-periodic directions completed by orthonormal vectors, as
``_lattice`` does in torch), measures the atoms' extent along non-periodic directions, chooses bins at least
``cutoff`` wide (perpendicular width) and the search range in bins, and then bins its atoms: fractional coordinates
in float64, wrapped into the periodic box, bin id row-major (last direction fastest). Structure ``b`` owns the bin ids
``8 * (first atom of b) + 64 * b`` onwards, at most ``8 * n_b + 64`` of them (the cap of ``_grid._cap_bins``), so no
scan over structures is needed and the whole batch has at most ``8 N + 64 B`` bins, known on the host without a
sync. After the atoms are sorted by bin id (``torch.sort``, stable), ``index_bins`` writes the first sorted atom of
every bin (a vectorised binary search) and gathers the wrapped positions and images into sorted order.

Integer division and remainder are only applied to non-negative operands: compiled Triton truncates, while loop
variables in Triton's CPU interpreter are Python integers, which floor.
"""
from __future__ import annotations

import triton
import triton.language as tl

GEO = tl.constexpr(18)   # float64 per structure: reduced periodic rows R [3, 3] Å, transform T [3, 3] (integers)
INFO = tl.constexpr(10)  # int64 per structure: bins [3], search range [3], periodic [3], first bin id
STATUS_BATCH = tl.constexpr(0)     # status slot: batch not sorted or outside 0..B-1
STATUS_SINGULAR = tl.constexpr(1)  # status slot: periodic lattice vectors singular


@triton.jit
def _lower_bound(sorted_ptr, n, value):
    """First index in ``sorted_ptr[0:n]`` (ascending) whose entry is >= ``value`` (scalar int64)."""
    lo = n * 0
    hi = n
    while lo < hi:
        mid = (lo + hi) // 2
        below = tl.load(sorted_ptr + mid) < value
        lo = tl.where(below, mid + 1, lo)
        hi = tl.where(below, hi, mid)
    return lo


@triton.jit
def _gauss_step(ax, ay, az, tx, ty, tz, bx, by, bz, ux, uy, uz, active):
    """a -= round(<a,b>/<b,b>) b (and its transform row t -= same multiple of u) where |<a,b>/<b,b>| > 1/2."""
    ratio = (ax * bx + ay * by + az * bz) / tl.maximum(bx * bx + by * by + bz * bz, 1e-300)
    step = active & (tl.abs(ratio) > 0.5)
    mu = tl.where(step, tl.floor(ratio + 0.5), 0.0)
    return ax - mu * bx, ay - mu * by, az - mu * bz, tx - mu * ux, ty - mu * uy, tz - mu * uz, step


@triton.jit
def _cross(ax, ay, az, bx, by, bz):
    return ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx


@triton.jit
def _unit(x, y, z):
    norm = tl.maximum(tl.sqrt(x * x + y * y + z * z), 1e-300)
    return x / norm, y / norm, z / norm


@triton.jit
def _pick(cond, ax, ay, az, bx, by, bz):
    return tl.where(cond, ax, bx), tl.where(cond, ay, by), tl.where(cond, az, bz)


@triton.jit
def _bins_for(width, cutoff, cap):
    """Bins along one direction (float64, >= 1): as many as fit ``cutoff``-wide, at most ``cap``."""
    return tl.maximum(tl.minimum(tl.floor(width / cutoff), cap), 1.0)


@triton.jit
def _shrink(b0, b1, b2, cap):
    """Scale three bin counts down (each >= 1) until their product is at most ``cap`` (as ``_grid._cap_bins``)."""
    for _ in range(3):
        total = b0 * b1 * b2
        active = (b0 > 1.0).to(tl.float32) + (b1 > 1.0).to(tl.float32) + (b2 > 1.0).to(tl.float32)
        ratio = (cap / total).to(tl.float32)
        scale = tl.where(total > cap, tl.exp(tl.log(ratio) / tl.maximum(active, 1.0)), 1.0).to(tl.float64)
        b0 = tl.maximum(tl.floor(b0 * scale), 1.0)
        b1 = tl.maximum(tl.floor(b1 * scale), 1.0)
        b2 = tl.maximum(tl.floor(b2 * scale), 1.0)
    while b0 * b1 * b2 > cap:  # rounding left it above the cap: halve the largest (rare, bounded)
        big0 = (b0 >= b1) & (b0 >= b2)
        big1 = (~big0) & (b1 >= b2)
        b0 = tl.where(big0, tl.maximum(tl.floor(b0 * 0.5), 1.0), b0)
        b1 = tl.where(big1, tl.maximum(tl.floor(b1 * 0.5), 1.0), b1)
        b2 = tl.where((~big0) & (~big1), tl.maximum(tl.floor(b2 * 0.5), 1.0), b2)
    return b0, b1, b2


@triton.jit
def _search(periodic, bins, width, cutoff):
    """Search range in bins along one direction (int64): 0 for a single non-periodic bin."""
    needed = periodic | (bins > 1.0)
    safe = tl.where(needed, width, cutoff)
    # the slack keeps a cutoff equal to a whole number of bin widths (up to rounding) from adding a bin
    reach = tl.maximum(tl.ceil(cutoff * bins / safe - 1e-9), 1.0)
    return tl.where(needed, reach, 0.0).to(tl.int64)


@triton.jit(do_not_specialize=["n_atoms", "n_structures"])
def bin_structures(positions, batch, cell, pbc, cutoff_ptr, n_atoms, n_structures, geo, info, bin_id, wrapped,
                   image, status, BLOCK: tl.constexpr):
    """Program b: geometry of structure b into ``geo``/``info``, and the bin of each of its atoms.

    positions [N, 3] Å (float32/64); batch [N] int64 sorted; cell [B, 3, 3] float64 Å; pbc [B, 3] bool;
    cutoff_ptr [1] float64 Å. Writes geo [B, GEO], info [B, INFO], bin_id [N] int32, wrapped [3, N] Å (dtype of
    positions; input position = wrapped + image @ R) and image [3, N] int32 (in the reduced basis); sets
    status[STATUS_*] to 1 on bad input (the caller reads it at its one sync).
    """
    b = tl.program_id(0).to(tl.int64)
    n = n_atoms.to(tl.int64)
    cutoff = tl.load(cutoff_ptr)
    start = tl.where(b == 0, 0, _lower_bound(batch, n, b))
    end = tl.where(b == n_structures - 1, n, _lower_bound(batch, n, b + 1))
    if end < start:
        tl.store(status + STATUS_BATCH, 1)
    end = tl.maximum(end, start)
    p0 = tl.load(pbc + 3 * b) != 0
    p1 = tl.load(pbc + 3 * b + 1) != 0
    p2 = tl.load(pbc + 3 * b + 2) != 0
    z = tl.full((), 0.0, tl.float64)
    one = z + 1.0
    c = cell + 9 * b
    # rows along non-periodic directions are ignored: zero them
    r0x, r0y, r0z = _pick(p0, tl.load(c), tl.load(c + 1), tl.load(c + 2), z, z, z)
    r1x, r1y, r1z = _pick(p1, tl.load(c + 3), tl.load(c + 4), tl.load(c + 5), z, z, z)
    r2x, r2y, r2z = _pick(p2, tl.load(c + 6), tl.load(c + 7), tl.load(c + 8), z, z, z)
    t0x, t0y, t0z = one, z, z
    t1x, t1y, t1z = z, one, z
    t2x, t2y, t2z = z, z, one
    # Gauss reduction of the periodic vectors (each step shortens a vector, so it ends; the cap only bounds time)
    changed = p0 | p1 | p2
    sweeps = 0
    while changed & (sweeps < 100):
        r0x, r0y, r0z, t0x, t0y, t0z, s01 = _gauss_step(r0x, r0y, r0z, t0x, t0y, t0z, r1x, r1y, r1z, t1x, t1y, t1z,
                                                        p0 & p1)
        r0x, r0y, r0z, t0x, t0y, t0z, s02 = _gauss_step(r0x, r0y, r0z, t0x, t0y, t0z, r2x, r2y, r2z, t2x, t2y, t2z,
                                                        p0 & p2)
        r1x, r1y, r1z, t1x, t1y, t1z, s10 = _gauss_step(r1x, r1y, r1z, t1x, t1y, t1z, r0x, r0y, r0z, t0x, t0y, t0z,
                                                        p1 & p0)
        r1x, r1y, r1z, t1x, t1y, t1z, s12 = _gauss_step(r1x, r1y, r1z, t1x, t1y, t1z, r2x, r2y, r2z, t2x, t2y, t2z,
                                                        p1 & p2)
        r2x, r2y, r2z, t2x, t2y, t2z, s20 = _gauss_step(r2x, r2y, r2z, t2x, t2y, t2z, r0x, r0y, r0z, t0x, t0y, t0z,
                                                        p2 & p0)
        r2x, r2y, r2z, t2x, t2y, t2z, s21 = _gauss_step(r2x, r2y, r2z, t2x, t2y, t2z, r1x, r1y, r1z, t1x, t1y, t1z,
                                                        p2 & p1)
        changed = s01 | s02 | s10 | s12 | s20 | s21
        sweeps += 1
    # completion of the non-periodic directions by unit vectors orthogonal to the periodic ones
    n_periodic = p0.to(tl.int32) + p1.to(tl.int32) + p2.to(tl.int32)
    a01x, a01y, a01z = _cross(r0x, r0y, r0z, r1x, r1y, r1z)
    a12x, a12y, a12z = _cross(r1x, r1y, r1z, r2x, r2y, r2z)
    a20x, a20y, a20z = _cross(r2x, r2y, r2z, r0x, r0y, r0z)
    nx, ny, nz = _unit(a01x + a12x + a20x, a01y + a12y + a20y, a01z + a12z + a20z)  # normal of a periodic plane
    ax, ay, az = r0x + r1x + r2x, r0y + r1y + r2y, r0z + r1z + r2z                  # the one periodic vector
    ex = (tl.abs(ax) <= tl.abs(ay)) & (tl.abs(ax) <= tl.abs(az))                    # axis least along it
    ey = (~ex) & (tl.abs(ay) <= tl.abs(az))
    ux, uy, uz = _cross(ax, ay, az, ex.to(tl.float64), ey.to(tl.float64), ((~ex) & (~ey)).to(tl.float64))
    ux, uy, uz = _unit(ux, uy, uz)
    vx, vy, vz = _cross(ax, ay, az, ux, uy, uz)
    vx, vy, vz = _unit(vx, vy, vz)
    two = n_periodic == 2
    single = n_periodic == 1
    # row d: the periodic row; else the plane normal (2 periodic), u then v (1 periodic), or the axis d (none)
    fx, fy, fz = _pick(single, ux, uy, uz, one, z, z)
    fx, fy, fz = _pick(two, nx, ny, nz, fx, fy, fz)
    e0x, e0y, e0z = _pick(p0, r0x, r0y, r0z, fx, fy, fz)
    fx, fy, fz = _pick(p0, ux, uy, uz, vx, vy, vz)
    fx, fy, fz = _pick(single, fx, fy, fz, z, one, z)
    fx, fy, fz = _pick(two, nx, ny, nz, fx, fy, fz)
    e1x, e1y, e1z = _pick(p1, r1x, r1y, r1z, fx, fy, fz)
    fx, fy, fz = _pick(single, vx, vy, vz, z, z, one)
    fx, fy, fz = _pick(two, nx, ny, nz, fx, fy, fz)
    e2x, e2y, e2z = _pick(p2, r2x, r2y, r2z, fx, fy, fz)
    # inverse: column d = (cross product of the two other rows) / det, so frac_d = position . column d
    k0x, k0y, k0z = _cross(e1x, e1y, e1z, e2x, e2y, e2z)
    k1x, k1y, k1z = _cross(e2x, e2y, e2z, e0x, e0y, e0z)
    k2x, k2y, k2z = _cross(e0x, e0y, e0z, e1x, e1y, e1z)
    det = e0x * k0x + e0y * k0y + e0z * k0z
    scale = tl.sqrt((e0x * e0x + e0y * e0y + e0z * e0z) * (e1x * e1x + e1y * e1y + e1z * e1z)
                    * (e2x * e2x + e2y * e2y + e2z * e2z))
    if not (tl.abs(det) > 1e-12 * scale):  # also catches NaN
        tl.store(status + STATUS_SINGULAR, 1)
        det = one
    k0x, k0y, k0z = k0x / det, k0y / det, k0z / det
    k1x, k1y, k1z = k1x / det, k1y / det, k1z / det
    k2x, k2y, k2z = k2x / det, k2y / det, k2z / det
    # extent of the atoms along non-periodic directions (fractional coordinates there are in Å)
    inf = z + float("inf")  # a float64 scalar
    lo0, lo1, lo2 = inf, inf, inf
    hi0, hi1, hi2 = -inf, -inf, -inf
    span = tl.where(p0 & p1 & p2, 0, end - start)  # all periodic: nothing to measure
    for first in range(start, start + span, BLOCK):
        k = first + tl.arange(0, BLOCK)
        m = k < end
        x = tl.load(positions + 3 * k, mask=m, other=0.0).to(tl.float64)
        y = tl.load(positions + 3 * k + 1, mask=m, other=0.0).to(tl.float64)
        w = tl.load(positions + 3 * k + 2, mask=m, other=0.0).to(tl.float64)
        f0 = x * k0x + y * k0y + w * k0z
        f1 = x * k1x + y * k1y + w * k1z
        f2 = x * k2x + y * k2y + w * k2z
        lo0 = tl.minimum(lo0, tl.min(tl.where(m, f0, inf), axis=0))
        lo1 = tl.minimum(lo1, tl.min(tl.where(m, f1, inf), axis=0))
        lo2 = tl.minimum(lo2, tl.min(tl.where(m, f2, inf), axis=0))
        hi0 = tl.maximum(hi0, tl.max(tl.where(m, f0, -inf), axis=0))
        hi1 = tl.maximum(hi1, tl.max(tl.where(m, f1, -inf), axis=0))
        hi2 = tl.maximum(hi2, tl.max(tl.where(m, f2, -inf), axis=0))
    empty = end == start
    lo0 = tl.where(p0 | empty, z, lo0)
    lo1 = tl.where(p1 | empty, z, lo1)
    lo2 = tl.where(p2 | empty, z, lo2)
    ext0 = tl.where(p0 | empty, one, hi0 - lo0)
    ext1 = tl.where(p1 | empty, one, hi1 - lo1)
    ext2 = tl.where(p2 | empty, one, hi2 - lo2)
    # perpendicular widths (Å): |column d of the inverse| is 1 / (distance between lattice planes)
    width0 = ext0 / tl.sqrt(k0x * k0x + k0y * k0y + k0z * k0z)
    width1 = ext1 / tl.sqrt(k1x * k1x + k1y * k1y + k1z * k1z)
    width2 = ext2 / tl.sqrt(k2x * k2x + k2y * k2y + k2z * k2z)
    cap = ((end - start) * 8 + 64).to(tl.float64)
    b0, b1, b2 = _shrink(_bins_for(width0, cutoff, cap), _bins_for(width1, cutoff, cap),
                         _bins_for(width2, cutoff, cap), cap)
    n0, n1, n2 = b0.to(tl.int64), b1.to(tl.int64), b2.to(tl.int64)
    first_bin = 8 * start + 64 * b
    d0, d1, d2 = b0 / tl.maximum(ext0, 1e-300), b1 / tl.maximum(ext1, 1e-300), b2 / tl.maximum(ext2, 1e-300)
    g = geo + GEO * b
    tl.store(g + 0, r0x); tl.store(g + 1, r0y); tl.store(g + 2, r0z)  # noqa: E702
    tl.store(g + 3, r1x); tl.store(g + 4, r1y); tl.store(g + 5, r1z)  # noqa: E702
    tl.store(g + 6, r2x); tl.store(g + 7, r2y); tl.store(g + 8, r2z)  # noqa: E702
    tl.store(g + 9, t0x); tl.store(g + 10, t0y); tl.store(g + 11, t0z)  # noqa: E702
    tl.store(g + 12, t1x); tl.store(g + 13, t1y); tl.store(g + 14, t1z)  # noqa: E702
    tl.store(g + 15, t2x); tl.store(g + 16, t2y); tl.store(g + 17, t2z)  # noqa: E702
    s = info + INFO * b
    tl.store(s + 0, n0); tl.store(s + 1, n1); tl.store(s + 2, n2)  # noqa: E702
    tl.store(s + 3, _search(p0, b0, width0, cutoff))
    tl.store(s + 4, _search(p1, b1, width1, cutoff))
    tl.store(s + 5, _search(p2, b2, width2, cutoff))
    tl.store(s + 6, p0.to(tl.int64)); tl.store(s + 7, p1.to(tl.int64)); tl.store(s + 8, p2.to(tl.int64))  # noqa: E702
    tl.store(s + 9, first_bin)
    bad = 0
    for first in range(start, end, BLOCK):
        k = first + tl.arange(0, BLOCK)
        m = k < end
        bad += tl.sum((m & (tl.load(batch + k, mask=m, other=0) != b)).to(tl.int32), axis=0)
        xin = tl.load(positions + 3 * k, mask=m, other=0.0)
        x = xin.to(tl.float64)
        y = tl.load(positions + 3 * k + 1, mask=m, other=0.0).to(tl.float64)
        w = tl.load(positions + 3 * k + 2, mask=m, other=0.0).to(tl.float64)
        f0 = x * k0x + y * k0y + w * k0z
        f1 = x * k1x + y * k1y + w * k1z
        f2 = x * k2x + y * k2y + w * k2z
        i0 = tl.where(p0, tl.floor(f0), 0.0)
        i1 = tl.where(p1, tl.floor(f1), 0.0)
        i2 = tl.where(p2, tl.floor(f2), 0.0)
        c0 = tl.minimum(tl.maximum(tl.floor((f0 - i0 - lo0) * d0), 0.0), b0 - 1.0).to(tl.int64)
        c1 = tl.minimum(tl.maximum(tl.floor((f1 - i1 - lo1) * d1), 0.0), b1 - 1.0).to(tl.int64)
        c2 = tl.minimum(tl.maximum(tl.floor((f2 - i2 - lo2) * d2), 0.0), b2 - 1.0).to(tl.int64)
        tl.store(bin_id + k, (first_bin + (c0 * n1 + c1) * n2 + c2).to(tl.int32), mask=m)
        out = xin.dtype
        tl.store(wrapped + k, (x - (i0 * r0x + i1 * r1x + i2 * r2x)).to(out), mask=m)
        tl.store(wrapped + n + k, (y - (i0 * r0y + i1 * r1y + i2 * r2y)).to(out), mask=m)
        tl.store(wrapped + 2 * n + k, (w - (i0 * r0z + i1 * r1z + i2 * r2z)).to(out), mask=m)
        tl.store(image + k, i0.to(tl.int32), mask=m)
        tl.store(image + n + k, i1.to(tl.int32), mask=m)
        tl.store(image + 2 * n + k, i2.to(tl.int32), mask=m)
    if bad > 0:
        tl.store(status + STATUS_BATCH, 1)


@triton.jit(do_not_specialize=["n_atoms", "n_bins", "steps"])
def index_bins(sorted_id, perm, wrapped, image, n_atoms, n_bins, steps, bin_start, sorted_wrapped, sorted_image,
               BLOCK: tl.constexpr):
    """bin_start[q] = first sorted atom with bin id >= q (q in 0..n_bins), and wrapped/image in sorted order.

    sorted_id [N] int32 ascending; perm [N] int64 (sorted -> input index); wrapped [3, N]; image [3, N] int32;
    steps: ceil(log2(N + 1)) binary-search steps. Writes bin_start [n_bins + 1] int32, sorted_wrapped [3, N],
    sorted_image [3, N].
    """
    q = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    n = n_atoms.to(tl.int64)
    lo = q * 0
    hi = lo + n
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        below = active & (tl.load(sorted_id + mid, mask=active, other=0).to(tl.int64) < q)
        lo = tl.where(below, mid + 1, lo)
        hi = tl.where(active & (~below), mid, hi)
    tl.store(bin_start + q, lo.to(tl.int32), mask=q <= n_bins)
    m = q < n
    a = tl.load(perm + q, mask=m, other=0)
    for d in range(3):
        tl.store(sorted_wrapped + d * n + q, tl.load(wrapped + d * n + a, mask=m), mask=m)
        tl.store(sorted_image + d * n + q, tl.load(image + d * n + a, mask=m), mask=m)
