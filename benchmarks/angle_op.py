"""Benchmark of the angle block: reference (eager torch) vs fused C++ op, forward / backward / force-training pattern.

Run: ``python benchmarks/angle_op.py`` (defaults: ~700k angles, ~58k angle-edges, a = 16, e_dim = 32, float32,
2 threads). Prints a markdown table and writes it to ``benchmarks/results/angle_op.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from mftcalc.model.graph import angle_index
from torch import Tensor

from mftcalc.kernels.angle import angle_block, load_library

RESULTS = Path(__file__).resolve().parent / "results" / "angle_op.md"


def block_angles(m: Tensor) -> Tuple[Tensor, Tensor]:
    """Angle lists of centres with m[k] angle-edges each (all m[k]² ordered pairs, a_ij sorted), built by the
    model's own :func:`mftcalc.model.graph.angle_index`; ``a_ij``, ``a_ik`` [A] index the Σm angle-edges."""
    a_centre = torch.repeat_interleave(torch.arange(m.shape[0]), m)                 # [Ea]
    a_ij, a_ik, _, _ = angle_index(a_centre, int(m.shape[0]))
    return a_ij, a_ik


def make_inputs(n_centres: int, m_lo: int, m_hi: int, a: int, e_dim: int, dtype: torch.dtype,
                seed: int = 0) -> Tuple[List[Tensor], Tensor, Tensor]:
    """Random valid angle graph (m uniform in [m_lo, m_hi] angle-edges per centre, all m² ordered pairs) and features.

    Returns the 7 float inputs (angle, p_ij, p_ik, w, b, a_sw, res) and the int64 a_ij, a_ik.
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(m_lo, m_hi + 1, (n_centres,), generator=g)
    a_ij, a_ik = block_angles(m)
    n_angles, n_edges, c = a_ij.shape[0], int(m.sum()), e_dim + a

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    floats = [rnd(n_angles, a, scale=0.5), rnd(n_edges, c, scale=0.7), rnd(n_edges, c, scale=0.7),
              rnd(a, c, scale=a ** -0.5), rnd(c, scale=0.1), torch.rand(n_angles, generator=g).to(dtype),
              torch.full((a,), 0.1, dtype=dtype)]
    return floats, a_ij, a_ik


def timed(fn: Callable[[], None], repeats: int) -> Tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of ``fn`` in ms, after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - start_wall) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def cases(floats: List[Tensor], a_ij: Tensor, a_ik: Tensor, e_dim: int, threshold: float,
          backend: str) -> Dict[str, Callable[[], None]]:
    """The three timed patterns for one backend."""
    def run(inputs: List[Tensor]) -> Tuple[Tensor, Tensor]:
        return angle_block(*inputs, a_ij, a_ik, e_dim, threshold, backend=backend)

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        red, angle_new = run(floats)
    v_red = torch.randn(red.shape, generator=g).to(red.dtype)
    v_angle = torch.randn(angle_new.shape, generator=g).to(red.dtype)

    def forward() -> None:
        with torch.no_grad():
            run(floats)

    def forward_backward() -> None:
        inputs = [t.detach().requires_grad_() for t in floats]
        red, angle_new = run(inputs)
        ((red * v_red).sum() + (angle_new * v_angle).sum()).backward()

    def force_training() -> None:
        # y = f(inputs); g = d(y·v)/d(position-dependent inputs) with create_graph; loss = Σ g²; loss.backward()
        inputs = [t.detach().requires_grad_() for t in floats]
        red, angle_new = run(inputs)
        energy = (red * v_red).sum() + (angle_new * v_angle).sum()
        position_dependent = [inputs[0], inputs[1], inputs[2], inputs[5]]   # angle, p_ij, p_ik, a_sw
        grads = torch.autograd.grad(energy, position_dependent, create_graph=True)
        sum((gr * gr).sum() for gr in grads).backward()

    return {"forward": forward, "forward + backward": forward_backward,
            "force training (double backward)": force_training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--centres", type=int, default=4800)
    parser.add_argument("--m-range", type=int, nargs=2, default=(10, 14), help="angle-edges per centre (inclusive)")
    parser.add_argument("--a-dim", type=int, default=16)
    parser.add_argument("--e-dim", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_library()
    dtype = getattr(torch, args.dtype)
    floats, a_ij, a_ik = make_inputs(args.centres, args.m_range[0], args.m_range[1], args.a_dim, args.e_dim, dtype)
    ref = cases(floats, a_ij, a_ik, args.e_dim, args.threshold, "reference")
    fused = cases(floats, a_ij, a_ik, args.e_dim, args.threshold, "fused")
    rows = []
    load_before = os.getloadavg()[0]
    for name in ref:
        (w_ref, c_ref), (w_fused, c_fused) = timed(ref[name], args.repeats), timed(fused[name], args.repeats)
        rows.append(f"| {name} | {w_ref:.0f} | {w_fused:.0f} | {w_ref / w_fused:.1f}× | {c_ref:.0f} | {c_fused:.0f} | "
                    f"{c_ref / c_fused:.1f}× |")
        print(rows[-1], flush=True)

    header = [
        "# Angle block: reference (eager torch) vs fused C++/OpenMP op",
        "",
        f"A = {a_ij.shape[0]:,} angles, Ea = {floats[1].shape[0]:,} angle-edges "
        f"(m = {args.m_range[0]}..{args.m_range[1]} per centre, {args.centres} centres), a = {args.a_dim}, "
        f"e_dim = {args.e_dim}, c = {args.a_dim + args.e_dim}, {args.dtype}, threshold {args.threshold}, "
        f"{args.threads} threads, median of {args.repeats} after one warm-up; CPU = process time of all threads.",
        f"torch {torch.__version__}, {platform.machine()} with {os.cpu_count()} cores, fused loops: "
        f"{torch.ops.mftcalc.angle_block_isa()}; load average during the run: {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f} (other processes share the cores, so wall times are noisy).",
        "",
        "| pattern | reference wall ms | fused wall ms | speed-up | reference CPU ms | fused CPU ms | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    text = "\n".join(header + rows) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
