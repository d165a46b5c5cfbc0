"""numpy eigh of a small symmetric matrix (ASE BFGS's per-step work) with torch loaded: BLAS threads 1 vs default.

Usage: python benchmarks/blas_threads.py [--dim 54] [--repeats 200] [--out FILE]
Prints median, mean, 90th percentile and maximum time per call (``--repeats`` calls) for each BLAS thread count and
the machine's load average, which matters: a multi-threaded BLAS slows down when its threads wait for busy cores,
and the mean (what a relaxation pays) shows it more than the median.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_info, threadpool_limits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=54, help="matrix size (3 × atoms; 54 = an 18-atom molecule)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.ones(8) @ torch.ones(8)                       # torch's OpenMP runtime is loaded and used
    rng = np.random.default_rng(0)
    a = rng.normal(size=(args.dim, args.dim))
    a = a + a.T
    default = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    load = os.getloadavg()
    rows = []
    for threads in sorted({1, default}):
        with threadpool_limits(limits=threads, user_api="blas"):
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                np.linalg.eigh(a)
                times.append(time.perf_counter() - t)
        t_ms = 1e3 * np.array(times)
        rows.append(f"| {threads} | {np.median(t_ms):.3f} | {t_ms.mean():.3f} | {np.percentile(t_ms, 90):.3f} | "
                    f"{t_ms.max():.1f} |")
    text = (f"# numpy eigh {args.dim}×{args.dim} beside torch\n\n`python benchmarks/blas_threads.py --dim {args.dim} --repeats {args.repeats}`; "
            f"numpy {np.__version__}, torch {torch.__version__}; load average before {load[0]:.1f} on "
            f"{os.cpu_count()} cores\n\n| BLAS threads | median ms | mean ms | 90th percentile ms | max ms |\n|---:|---:|---:|---:|---:|\n"
            + "\n".join(rows) + "\n")
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
