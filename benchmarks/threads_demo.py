"""``mftcalc demo`` with the default thread settings against ``OMP_NUM_THREADS=1``, the machine's other cores busy.

Usage: python benchmarks/threads_demo.py [--repeats 3] [--busy N] [--skip-spinning] [--out FILE]

Every run is a fresh ``python -m mftcalc.cli demo`` subprocess (8 bundled molecules relaxed with FIRE, then their
gap predicted). ``--busy N`` busy-loop processes run for the whole benchmark (default: usable cores - 1, leaving one
core to the demo); pass ``--busy 0`` when another job already keeps the other cores busy. Settings, run in turn
within each repeat after one untimed warm-up run (which also builds or loads the C++ operators):

- ``default``: no thread variables set: mftcalc's default (threads from the idle cores by load average, OpenMP
  passive waiting);
- ``OMP_NUM_THREADS=1``;
- ``spinning, all cores`` (skip with ``--skip-spinning``): ``--threads <cores>`` with ``OMP_WAIT_POLICY=ACTIVE``,
  torch's own default before mftcalc chose threads (one thread per core, spinning OpenMP threads).

The table gives the demo's own relax-then-predict time (median over the repeats), the whole process's wall time
(median; imports and model loading included) and the ratio of relax-then-predict times to ``OMP_NUM_THREADS=1``.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_NUM_THREADS")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def run_demo(env_changes: dict, extra_args: list) -> dict:
    """One ``mftcalc demo`` in a fresh process: its relax-then-predict time, wall time and thread line."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(env_changes)
    with tempfile.TemporaryDirectory(prefix="threads-demo-") as tmp:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mftcalc.cli", "demo", "--out-dir", tmp, *extra_args],
                              env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"mftcalc demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    found = re.search(r"bundled molecules in ([0-9.]+) s", proc.stdout)
    threads = re.search(r"mftcalc: (\d+) torch thread", proc.stderr)
    return {"demo_s": float(found.group(1)), "wall_s": wall, "threads": threads.group(1) if threads else "?"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    parser.add_argument("--busy", type=int, default=max(0, _cores() - 1), help="busy-loop processes to start")
    parser.add_argument("--skip-spinning", action="store_true", help="leave out the spinning all-cores row")
    parser.add_argument("--out", default=str(HERE / "results" / "threads_demo.md"), help="Markdown table to write")
    args = parser.parse_args()
    cores = _cores()
    settings = [("default (mftcalc's choice)", {}, []), ("OMP_NUM_THREADS=1", {"OMP_NUM_THREADS": "1"}, [])]
    if not args.skip_spinning:
        settings.append((f"spinning, all cores (--threads {cores}, OMP_WAIT_POLICY=ACTIVE)",
                         {"OMP_WAIT_POLICY": "ACTIVE"}, ["--threads", str(cores)]))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        time.sleep(2.0 if busy else 0.0)
        load_before = os.getloadavg()
        run_demo({"OMP_NUM_THREADS": "1"}, [])                       # warm-up: C++ operators built or loaded
        runs = {name: [] for name, _, _ in settings}
        for _ in range(args.repeats):
            for name, env, extra in settings:
                runs[name].append(run_demo(env, extra))
        load_after = os.getloadavg()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    reference = statistics.median(r["demo_s"] for r in runs["OMP_NUM_THREADS=1"])
    lines = [f"# `mftcalc demo`: default threads vs OMP_NUM_THREADS=1 ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"`python benchmarks/threads_demo.py --repeats {args.repeats} --busy {args.busy}"
             f"{' --skip-spinning' if args.skip_spinning else ''}`: {cores} usable cores, {args.busy} busy-loop "
             f"process(es) started by the script, load average {load_before[0]:.2f} before and {load_after[0]:.2f} "
             f"after the runs (1 min); medians of {args.repeats} fresh processes per setting.", "",
             "| setting | torch threads | relax-then-predict (s) | process wall (s) | ratio to OMP_NUM_THREADS=1 |",
             "|---|---|---:|---:|---:|"]
    for name, _, _ in settings:
        demo = statistics.median(r["demo_s"] for r in runs[name])
        wall = statistics.median(r["wall_s"] for r in runs[name])
        threads = "/".join(sorted({r["threads"] for r in runs[name]}))
        lines.append(f"| {name} | {threads} | {demo:.2f} | {wall:.1f} | {demo / reference:.2f} |")
    every = ["{}: {}".format(name, ", ".join(f"{r['demo_s']:.2f}" for r in runs[name])) for name, _, _ in settings]
    lines += ["", "All runs (relax-then-predict s): " + "; ".join(every)]
    table = "\n".join(lines) + "\n"
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
