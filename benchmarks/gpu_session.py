"""The prepared GPU benchmark session of issue 19 (item 6): three sections, most valuable first, each written to
``benchmarks/results/gpu_<section>.md`` with the hardware and versions as soon as it ends.

1. ``neighbors`` (``gpu_neighbors.py``): mftcalc's Triton and torch neighbour search against vesin-torch;
2. ``relax`` (``gpu_relax.py``): relax-then-predict molecules/s, batched mftcalc against the per-structure ASE loop
   and torch-sim's batched FIRE;
3. ``training`` (``gpu_training.py``): ``mftcalc train`` steps/s and one training step against deepmd-kit's DPA3.

A missing peer (vesin-torch, deepmd-kit, torch-sim) or ASE gives rows that say "not installed"; a failing section
writes its error and the next one runs. Sections stop being started once ``--budget`` seconds have passed (default
420: the whole session stays under 8 minutes on an H100/H200). Run it through ``gpu_session.sh``, which installs
the wheels carried in ``.whl/`` and copies the tables to ``$OUT``; ``--dry-run`` runs every section on tiny sizes
(on CPU through Triton's interpreter where there is no GPU) into ``--out-dir`` (default a temporary folder).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Callable, Dict, List

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SECTIONS = ("neighbors", "relax", "training")
TITLES = {"neighbors": "Neighbour search on a GPU: mftcalc against vesin-torch",
          "relax": "Relax-then-predict on a GPU: batched mftcalc, per-structure ASE loop, torch-sim",
          "training": "Training throughput on a GPU: mftcalc against deepmd-kit"}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(command: str, device: str) -> List[str]:
    """Date, command, hardware and versions (the lines every section's file starts with)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB"
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except Exception:
            driver = "?"
        gpu += f", driver {driver}, CUDA {torch.version.cuda}"
    else:
        gpu = f"no GPU: {device} (a dry run checks that the script runs; its numbers mean nothing)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "?"
    except Exception:
        commit = "?"
    peers = ", ".join(f"{name} {_version(name)}" for name in ("vesin-torch", "deepmd-kit", "torch-sim-atomistic",
                                                                "ase"))
    return [f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; command: `{command}`; tree: commit {commit} plus the "
            "session's uncommitted changes",
            f"- device: {gpu}; host: {os.cpu_count()} CPUs, {platform.machine()}",
            f"- torch {torch.__version__}, triton {_version('triton')}, Python {platform.python_version()}; "
            f"peers: {peers}"]


def run_sections(names: List[str], device: str, dry_run: bool, out_dir: Path, budget_s: float,
                 command: str) -> Dict[str, str]:
    """Run the sections in order; returns {section: status}."""
    import gpu_neighbors
    import gpu_relax
    import gpu_training

    runners: Dict[str, Callable[[], List[str]]] = {
        "neighbors": lambda: gpu_neighbors.run_section(device, dry_run),
        "relax": lambda: gpu_relax.run_section(device, dry_run),
        "training": lambda: gpu_training.run_section(device, dry_run),
    }
    start = time.perf_counter()
    status: Dict[str, str] = {}
    for name in names:
        elapsed = time.perf_counter() - start
        lines = [f"# {TITLES[name]}", "", *header(command, device), ""]
        if elapsed > budget_s:
            status[name] = f"not started: {elapsed:.0f} s of the {budget_s:.0f} s budget were spent"
            lines.append(f"Not measured: {status[name]}.")
        elif name != "neighbors" and importlib.util.find_spec("ase") is None:
            status[name] = ("not measured: ASE not installed (mftcalc needs it here; carry it as a wheel: "
                            "bash benchmarks/gpu_session.sh --pack, which says when it does not fit)")
            lines.append(f"Not measured: {status[name]}.")
        else:
            print(f"[{elapsed:5.0f} s] section {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                lines += runners[name]()
                status[name] = f"done in {time.perf_counter() - t0:.0f} s"
            except Exception as exc:  # write what went wrong; the next section still runs
                traceback.print_exc()
                status[name] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                lines.append(f"Section failed: {status[name]}")
            lines += ["", f"Section wall time: {time.perf_counter() - t0:.0f} s."]
        path = out_dir / f"gpu_{name}.md"
        path.write_text("\n".join(lines) + "\n")
        print(f"[{time.perf_counter() - start:5.0f} s] {name}: {status[name]}; wrote {path}", flush=True)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="default: cuda (a dry run without CUDA: cpu)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, to check the script end to end")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--out-dir", default=None, help="default: benchmarks/results (a dry run: a temporary folder)")
    parser.add_argument("--budget", type=float, default=420.0, help="no section starts after this many seconds")
    args = parser.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() or not args.dry_run else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_session: no CUDA device; use --dry-run (CPU, tiny sizes) to check the script")
    if device == "cpu" and not args.dry_run:
        raise SystemExit("gpu_session: CPU numbers are not GPU results; pass --dry-run")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    out_dir = Path(args.out_dir or (tempfile.mkdtemp(prefix="gpu_session_") if args.dry_run else
                                    HERE / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"gpu_session: unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    command = "python benchmarks/gpu_session.py " + " ".join(sys.argv[1:])
    status = run_sections(names, device, args.dry_run, out_dir, args.budget, command)
    print("\n".join(f"{name}: {text}" for name, text in status.items()))
    print(f"tables in {out_dir}")


if __name__ == "__main__":
    main()
