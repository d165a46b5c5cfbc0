"""Neighbour-list speed: mftcalc.kernels.neighbor_list against peers, all measured in one run.

Run ``python benchmarks/neighbors.py [--threads N] [--quick]``. Peers (vesin, vesin-torch, matscipy,
ASE, torch-cluster) are optional: a missing one is skipped with the reason printed. Prints one
table (median wall and process-CPU time per call, ratios to the fastest peer on the same case) and
writes it as Markdown to benchmarks/results/neighbors.md.

Cases: (a) 1024 molecule-like clusters of 9-29 atoms as one batch, cutoff 6 Å (per-structure peers
loop over the molecules); (b) rattled fcc Cu supercells of 4,000 and 32,000 atoms, cutoff 6 Å;
(c) a 2-atom triclinic cell with cutoff 3x its cell length; (d) scaling from 1k to 100k atoms of Cu
(time per atom for ours and vesin).
"""
import argparse
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

try:
    from mftcalc.kernels import NeighborList, neighbor_list
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from mftcalc.kernels import NeighborList, neighbor_list

CUTOFF = 6.0
RESULTS = Path(__file__).resolve().parent / "results" / "neighbors.md"


class Case:
    """One structure set: positions per structure [n, 3] Å, cells [3, 3] Å, pbc [3] bool."""

    def __init__(self, name: str, cutoff: float, positions: List[np.ndarray], cells: List[np.ndarray], pbc: List[np.ndarray]):
        self.name, self.cutoff = name, cutoff
        self.positions, self.cells, self.pbc = positions, cells, pbc
        self.n_atoms = sum(len(p) for p in positions)
        self.periodic = any(p.any() for p in pbc)

    def batch(self, dtype: torch.dtype = torch.float64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        positions = torch.tensor(np.concatenate(self.positions), dtype=dtype)
        batch = torch.cat([torch.full((len(p),), k, dtype=torch.long) for k, p in enumerate(self.positions)])
        return positions, batch, torch.tensor(np.stack(self.cells), dtype=dtype), torch.tensor(np.stack(self.pbc))


def molecules(n: int, seed: int = 0) -> Case:
    """Random molecule-like clusters of 9-29 atoms grown bond by bond (1.1-1.5 Å, no contact < 1 Å)."""
    rng = np.random.default_rng(seed)
    positions = []
    for _ in range(n):
        atoms = [np.zeros(3)]
        target = int(rng.integers(9, 30))
        while len(atoms) < target:
            direction = rng.normal(size=3)
            candidate = atoms[int(rng.integers(len(atoms)))] + direction / np.linalg.norm(direction) * rng.uniform(1.1, 1.5)
            if np.linalg.norm(np.asarray(atoms) - candidate, axis=1).min() > 1.0:
                atoms.append(candidate)
        positions.append(np.asarray(atoms) + rng.uniform(-20, 20, 3))
    return Case(f"(a) {n} molecules, 1 batch", CUTOFF, positions, [np.zeros((3, 3))] * n, [np.zeros(3, bool)] * n)


def copper(repeat: Tuple[int, int, int], seed: int = 1) -> Case:
    """Rattled (σ = 0.05 Å) fcc Cu supercell of 4 * prod(repeat) atoms, a = 3.61 Å."""
    a = 3.61
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(*[np.arange(r) for r in repeat], indexing="ij"), -1).reshape(-1, 1, 3)
    positions = ((grid + basis).reshape(-1, 3) * a) + np.random.default_rng(seed).normal(0, 0.05, (len(grid) * 4, 3))
    return Case(f"(b) Cu fcc {len(positions)} atoms", CUTOFF, [positions], [np.diag(np.array(repeat) * a)], [np.ones(3, bool)])


def tiny_triclinic() -> Case:
    """2 atoms in a triclinic cell (lengths ~2.6 Å) with a cutoff 3x the longest cell length."""
    cell = np.array([[2.5, 0.0, 0.0], [0.9, 2.4, 0.0], [0.6, -0.7, 2.3]])
    cutoff = 3 * float(np.linalg.norm(cell, axis=1).max())
    positions = np.array([[0.1, 0.2, 0.3], [1.6, 1.1, 1.2]])
    return Case(f"(c) 2-atom triclinic, cutoff {cutoff:.1f} Å", cutoff, [positions], [cell], [np.ones(3, bool)])


def median_time(run: Callable[[], int], budget: float, max_repeats: int) -> Tuple[float, float, int]:
    """Median wall and process-CPU seconds per call (after one warm-up call), pairs of the last call.

    On a shared machine the CPU time (user + system of this process, all its threads) is the
    steadier figure: it leaves out time spent waiting for a core.
    """
    pairs = run()
    wall: List[float] = []
    cpu: List[float] = []
    start = time.perf_counter()
    while len(wall) < max_repeats and (len(wall) < 3 or time.perf_counter() - start < budget):
        t0, c0 = time.perf_counter(), time.process_time()
        pairs = run()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), pairs


# ---- contenders: each returns a zero-argument callable that runs the search and returns E ----

def ours(case: Case, backend: str, scripted: bool) -> Callable[[], int]:
    positions, batch, cell, pbc = case.batch()
    module = NeighborList(case.cutoff, backend)
    if scripted:
        module = torch.jit.script(module)
    return lambda: int(module(positions, batch, cell, pbc)[0].shape[1])


def ours_cuda(case: Case, backend: str) -> Callable[[], int]:
    """Ours on the GPU ('triton': the Triton candidate filter; 'torch': pure torch), synchronised per call."""
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    positions, batch, cell, pbc = (t.cuda() for t in case.batch())

    def run() -> int:
        pairs = int(neighbor_list(positions, case.cutoff, batch, cell, pbc, backend)[0].shape[1])
        torch.cuda.synchronize()
        return pairs
    return run


def vesin_cuda(case: Case) -> Callable[[], int]:
    """vesin-torch's NeighborList on CUDA tensors, one structure per call (as vesin takes them)."""
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    from vesin.torch import NeighborList as VesinNL

    calculator = VesinNL(cutoff=case.cutoff, full_list=True)
    data = [(torch.tensor(p, device="cuda"), torch.tensor(c, device="cuda"), torch.tensor(b, device="cuda"))
            for p, c, b in zip(case.positions, case.cells, case.pbc)]

    def run() -> int:
        pairs = sum(int(calculator.compute(p, c, b, "ijSd")[0].shape[0]) for p, c, b in data)
        torch.cuda.synchronize()
        return pairs
    return run


def vesin_numpy(case: Case, threads: int) -> Callable[[], int]:
    from vesin import NeighborList as VesinNeighborList

    nl = VesinNeighborList(cutoff=case.cutoff, full_list=True, n_threads=threads)

    def run() -> int:
        return sum(len(nl.compute(p, c, b, "ijSd")[0]) for p, c, b in zip(case.positions, case.cells, case.pbc))
    return run


def vesin_torchscript(case: Case, threads: int) -> Callable[[], int]:
    from vesin.torch import NeighborList as VesinTorchNeighborList

    class Loop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nl = VesinTorchNeighborList(cutoff=case.cutoff, full_list=True, n_threads=threads)

        def forward(self, positions: List[torch.Tensor], cells: List[torch.Tensor], pbc: List[torch.Tensor]) -> int:
            total = 0
            for k in range(len(positions)):
                total += self.nl.compute(positions[k], cells[k], pbc[k], "ijSd")[0].shape[0]
            return total

    module = torch.jit.script(Loop())
    positions = [torch.tensor(p) for p in case.positions]
    cells = [torch.tensor(c) for c in case.cells]
    pbc = [torch.tensor(b) for b in case.pbc]
    return lambda: int(module(positions, cells, pbc))


def matscipy_list(case: Case) -> Callable[[], int]:
    from matscipy.neighbours import neighbour_list

    def run() -> int:
        total = 0
        for p, c, b in zip(case.positions, case.cells, case.pbc):
            box = c if b.any() else np.diag(np.ptp(p, axis=0) + 1.0)  # matscipy needs a cell
            total += len(neighbour_list("ijSd", positions=p, cell=box, pbc=b, cutoff=case.cutoff)[0])
        return total
    return run


def ase_list(case: Case) -> Callable[[], int]:
    from ase.neighborlist import primitive_neighbor_list

    def run() -> int:
        return sum(len(primitive_neighbor_list("ijSd", b, c, p, case.cutoff)[0])
                   for p, c, b in zip(case.positions, case.cells, case.pbc))
    return run


def torch_cluster_graph(case: Case) -> Callable[[], int]:
    if case.periodic:
        raise RuntimeError("non-periodic only")
    from torch_cluster import radius_graph

    positions, batch, _, _ = case.batch()
    return lambda: int(radius_graph(positions, case.cutoff, batch, loop=False, max_num_neighbors=1_000_000).shape[1])


def contenders(threads: int) -> List[Tuple[str, bool, Callable[[Case], Callable[[], int]]]]:
    """(row name, is ours, factory) in table order."""
    return [
        ("ours cpp (eager)", True, lambda c: ours(c, "cpp", False)),
        ("ours cpp (TorchScript)", True, lambda c: ours(c, "cpp", True)),
        ("ours torch (eager)", True, lambda c: ours(c, "torch", False)),
        ("ours torch (TorchScript)", True, lambda c: ours(c, "torch", True)),
        ("vesin (numpy)", False, lambda c: vesin_numpy(c, threads)),
        ("vesin-torch (TorchScript)", False, lambda c: vesin_torchscript(c, threads)),
        ("matscipy", False, matscipy_list),
        ("ASE", False, ase_list),
        ("torch-cluster radius_graph", False, torch_cluster_graph),
    ] + ([
        ("ours triton (CUDA)", True, lambda c: ours_cuda(c, "triton")),
        ("ours torch (CUDA)", True, lambda c: ours_cuda(c, "torch")),
        ("vesin-torch (CUDA)", False, vesin_cuda),
    ] if torch.cuda.is_available() else [])


Row = Tuple[str, bool, Optional[Tuple[float, float]], str]  # name, is ours, (wall, cpu) s, note


def measure(case: Case, threads: int, skip: Tuple[str, ...], budget: float) -> List[Row]:
    rows: List[Row] = []
    for name, is_ours, factory in contenders(threads):
        if any(s in name for s in skip):
            rows.append((name, is_ours, None, "skipped (slow at this size)"))
            continue
        try:
            run = factory(case)
        except Exception as exc:  # peer not installed or not applicable
            rows.append((name, is_ours, None, f"skipped: {type(exc).__name__}: {exc}".splitlines()[0][:70]))
            continue
        wall, cpu, pairs = median_time(run, budget, 20)
        rows.append((name, is_ours, (wall, cpu), f"E={pairs}"))
    return rows


def format_table(results: Dict[str, List[Row]]) -> List[str]:
    lines = ["| case | implementation | time / call (ms) | vs fastest peer | CPU time / call (ms) | CPU vs fastest peer | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for case_name, rows in results.items():
        cells = []
        for k in (0, 1):  # wall, cpu
            peers = [t[k] for _, is_ours, t, _ in rows if not is_ours and t is not None]
            fastest = min(peers) if peers else None
            cells.append([("-", "-") if t is None else (f"{t[k] * 1e3:.2f}", f"{t[k] / fastest:.2f}x" if fastest else "-")
                          for _, _, t, _ in rows])
        for r, (name, _, _, note) in enumerate(rows):
            lines.append(f"| {case_name} | {name} | {cells[0][r][0]} | {cells[0][r][1]} | {cells[1][r][0]} | {cells[1][r][1]} | {note} |")
    return lines


def cpu_split(run: Callable[[], int], calls: int = 3) -> Tuple[float, float]:
    """Process user and system (kernel: page faults of fresh output memory) seconds per call."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(calls):
        run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return (after.ru_utime - before.ru_utime) / calls, (after.ru_stime - before.ru_stime) / calls


def scaling(threads: int, quick: bool) -> List[str]:
    """(d): time per atom of ours (both backends) and vesin on growing Cu supercells.

    Wall time includes the kernel's page faults on the freshly allocated output (E ~ 78 pairs per
    atom), which grow with the output on some machines; the user-time column is the search itself.
    """
    lines = ["| atoms | ours cpp (µs/atom) | ours cpp user / sys (µs/atom) | ours torch (µs/atom) | vesin (µs/atom) |",
             "|---:|---:|---:|---:|---:|"]
    repeats = [(7, 6, 6), (10, 10, 10), (14, 14, 13), (20, 20, 20)] + ([] if quick else [(30, 30, 28)])
    for repeat in repeats:
        case = copper(repeat)
        cells = []
        for factory in (lambda c: ours(c, "cpp", False), lambda c: ours(c, "torch", False), lambda c: vesin_numpy(c, threads)):
            try:
                run = factory(case)
                seconds, _, _ = median_time(run, 1.0, 5)
                cells.append(f"{seconds / case.n_atoms * 1e6:.2f}")
                if len(cells) == 1:
                    user, system = cpu_split(run)
                    cells.append(f"{user / case.n_atoms * 1e6:.2f} / {system / case.n_atoms * 1e6:.2f}")
            except Exception as exc:
                cells.append(f"skipped: {type(exc).__name__}")
        lines.append(f"| {case.n_atoms} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for ours and vesin")
    parser.add_argument("--quick", action="store_true", help="skip the 100k-atom scaling point")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # ours logs why a backend is used
    backend = NeighborList(CUTOFF).cpu_backend
    header = [f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} at start; ours with backend 'auto' on CPU uses '{backend}'"]
    print(header[0])
    cases = [
        (molecules(1024), ()),
        (copper((10, 10, 10)), ()),
        (copper((20, 20, 20)), ("ASE",)),
        (tiny_triclinic(), ()),
    ]
    results = {}
    for case, skip in cases:
        print(f"measuring {case.name} ...", flush=True)
        results[case.name] = measure(case, args.threads, skip, budget=2.0)
    table = format_table(results)
    print("\n".join(table))
    print("(d) scaling, rattled Cu, cutoff 6 Å")
    scale = scaling(args.threads, args.quick)
    print("\n".join(scale))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(["# Neighbour-list benchmark", "", "`python benchmarks/neighbors.py " + " ".join(sys.argv[1:]) + "`", "",
                                  header[0], "", *table, "", "## (d) scaling, rattled Cu, cutoff 6 Å", "", *scale, ""]))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
