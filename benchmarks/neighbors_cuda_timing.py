"""CUDA timing of ours (Triton and torch backends) on the neighbour benchmark cases: median of 30 synchronised calls.

Usage: ``PYTHONPATH=<tree>/src python benchmarks/neighbors_cuda_timing.py LABEL``. Run it for two source trees in
turn (e.g. one from ``git archive <commit> src``) to compare them on one GPU machine: GPU timings move by tens of
per cent between machines of the same kind, so only rows from one machine compare. Prints one row per case.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neighbors as cases  # noqa: E402  (the case builders of benchmarks/neighbors.py)

from mftcalc.kernels import neighbor_list  # noqa: E402


def median_ms(run, repeats: int = 30) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "ours"
    import mftcalc
    print(label, "uses", mftcalc.__file__)
    for case in (cases.molecules(1024), cases.copper((10, 10, 10)), cases.copper((20, 20, 20)), cases.tiny_triclinic()):
        positions, batch, cell, pbc = (t.cuda() for t in case.batch())
        row = []
        for backend in ("triton", "torch"):
            def run() -> None:
                neighbor_list(positions, case.cutoff, batch, cell, pbc, backend)
                torch.cuda.synchronize()
            row.append(f"{backend} {median_ms(run):.2f} ms")
        print(f"{label} | {case.name} | " + " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
