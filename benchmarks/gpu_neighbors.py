"""Neighbour search on a GPU: mftcalc's Triton and torch backends against vesin-torch, one table (section of
``gpu_session.py``; also runs alone).

Usage: ``python benchmarks/gpu_neighbors.py [--device cuda] [--dry-run] [--out FILE]``. Cases are those of
``benchmarks/neighbors.py``: (a) 1,024 molecule-like clusters of 9-29 atoms as one batch, cutoff 6 Å (vesin-torch
takes one structure per call, so it loops over them); (b) rattled fcc Cu of 4,000 and 32,000 atoms, cutoff 6 Å;
(c) a 2-atom triclinic cell with a cutoff 3x its cell length; and a scaling table (Cu, 1k to 108k atoms). Each time is
the median of synchronised calls (``torch.cuda.synchronize()`` inside the timed call, as the issue's figures), after
warm-up calls that include Triton's compilation. The column "same pairs as torch" checks, on the device, that the
Triton search returns exactly the pair set of the pure-torch search; "pairs" is E (the peers' E must match).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neighbors as cases  # noqa: E402  (the case builders of benchmarks/neighbors.py)

from mftcalc.kernels import neighbor_list  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(run: Callable[[], int], budget_s: float, repeats: int = 30, warmup: int = 3) -> Tuple[float, int]:
    """(median wall ms of ``run``, its last return value) after ``warmup`` calls; fewer repeats (at least
    min(3, repeats)) once ``budget_s`` is spent."""
    for _ in range(warmup):
        value = run()
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < min(3, repeats) or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), value


def _ours(case: cases.Case, backend: str, device: str) -> Callable[[], int]:
    positions, batch, cell, pbc = (t.to(device) for t in case.batch())

    def run() -> int:
        pairs = int(neighbor_list(positions, case.cutoff, batch, cell, pbc, backend)[0].shape[1])
        _sync(device)
        return pairs
    return run


def _vesin_class() -> type:
    """vesin-torch's NeighborList (``vesin_torch`` since 0.6, ``vesin.torch`` before); ImportError if absent."""
    try:
        from vesin_torch import NeighborList
    except ImportError:
        from vesin.torch import NeighborList
    return NeighborList


def _vesin(case: cases.Case, device: str) -> Callable[[], int]:
    calculator = _vesin_class()(cutoff=case.cutoff, full_list=True)
    data = [(torch.tensor(p, device=device), torch.tensor(c, device=device), torch.tensor(b, device=device))
            for p, c, b in zip(case.positions, case.cells, case.pbc)]

    def run() -> int:
        pairs = sum(int(calculator.compute(p, c, b, "ijSd")[0].shape[0]) for p, c, b in data)
        _sync(device)
        return pairs
    return run


def same_pairs(case: cases.Case, device: str) -> str:
    """Whether the Triton and torch searches return the same (i, j, shift) set on ``device``."""
    positions, batch, cell, pbc = (t.to(device) for t in case.batch())
    got = neighbor_list(positions, case.cutoff, batch, cell, pbc, "triton")
    ref = neighbor_list(positions, case.cutoff, batch, cell, pbc, "torch")
    rows_got = torch.unique(torch.cat([got[0].t(), got[1].long()], dim=1), dim=0)   # sorted, duplicates merged
    rows_ref = torch.unique(torch.cat([ref[0].t(), ref[1].long()], dim=1), dim=0)
    sorted_i = bool((got[0][0, 1:] >= got[0][0, :-1]).all()) if got[0].shape[1] > 1 else True
    equal = rows_got.shape[0] == got[0].shape[1] == ref[0].shape[1] and torch.equal(rows_got, rows_ref)
    return "yes" if equal and sorted_i else f"NO (E {got[0].shape[1]} vs {ref[0].shape[1]}, sorted {sorted_i})"


def vesin_version() -> Optional[str]:
    """vesin-torch's version, or None when it does not import."""
    try:
        _vesin_class()
        from importlib.metadata import version
        return version("vesin-torch")
    except Exception:
        return None


def run_section(device: str, dry_run: bool, budget_s: float = 90.0) -> List[str]:
    """The Markdown lines of the neighbour section (tables and notes)."""
    have_vesin = vesin_version() is not None
    if dry_run:  # seconds on CPU through Triton's interpreter: a few molecules, 32 Cu atoms at a short cutoff
        small = cases.copper((2, 2, 2))
        main_cases = [cases.molecules(8), cases.Case("(dry run) Cu fcc 32 atoms, cutoff 3 Å", 3.0, small.positions,
                                                     small.cells, small.pbc)]
    else:
        main_cases = [cases.molecules(1024), cases.copper((10, 10, 10)), cases.copper((20, 20, 20)),
                      cases.tiny_triclinic()]
    timing = dict(repeats=1, warmup=0) if dry_run else {}
    per_case = budget_s / (2 * len(main_cases))
    lines = ["| case | implementation | ms / call | vs vesin-torch | pairs E | same pairs as torch |",
             "|---|---|---:|---:|---:|---|"]
    for case in main_cases:
        print(f"  neighbours: {case.name} ...", flush=True)
        check = same_pairs(case, device)
        rows: List[Tuple[str, Optional[float], str]] = []
        for name, factory in (("ours triton", lambda c: _ours(c, "triton", device)),
                              ("ours torch", lambda c: _ours(c, "torch", device)),
                              ("vesin-torch", lambda c: _vesin(c, device))):
            if name == "vesin-torch" and not have_vesin:
                rows.append((name, None, "not installed"))
                continue
            try:
                ms, pairs = median_ms(factory(case), per_case, **timing)
                rows.append((name, ms, str(pairs)))
            except Exception as exc:  # the row says why
                rows.append((name, None, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
        reference = next((ms for name, ms, _ in rows if name == "vesin-torch"), None)
        for name, ms, note in rows:
            ratio = f"{ms / reference:.2f}x" if ms is not None and reference else "–"
            lines.append(f"| {case.name} | {name} | {'–' if ms is None else f'{ms:.3f}'} | {ratio} | {note} | "
                         f"{check if name == 'ours triton' else ''} |")
    lines += ["", "Scaling, rattled fcc Cu, cutoff 6 Å (µs per atom, median of synchronised calls):", "",
              "| atoms | ours triton | ours torch | vesin-torch |", "|---:|---:|---:|---:|"]
    for repeat in [] if dry_run else [(7, 6, 6), (10, 10, 10), (20, 20, 20), (30, 30, 30)]:
        case = cases.copper(repeat)
        cells = []
        for backend in ("triton", "torch", "vesin"):
            if backend == "vesin" and not have_vesin:
                cells.append("not installed")
                continue
            try:
                run = _vesin(case, device) if backend == "vesin" else _ours(case, backend, device)
                ms, _ = median_ms(run, per_case / 2, repeats=10, **timing)
                cells.append(f"{ms * 1e3 / case.n_atoms:.3f}")
            except Exception as exc:
                cells.append(f"failed: {type(exc).__name__}")
        lines.append(f"| {case.n_atoms} | " + " | ".join(cells) + " |")
    lines += ["", "- ours: `neighbor_list(..., backend=...)` on float64 inputs (one call per batch); 'triton' is the "
              "cell-list kernels of `mftcalc/kernels/_triton_search.py`, 'torch' the pure-torch search.",
              f"- vesin-torch: {vesin_version() or 'not installed'}; `NeighborList(cutoff, full_list=True)."
              "compute(..., 'ijSd')`, one call per structure."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny cases (runs on CPU through the interpreter)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    text = "\n".join(["# Neighbour search on a GPU", ""] + run_section(args.device, args.dry_run))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
