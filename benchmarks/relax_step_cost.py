"""Cost of one optimiser step of the batched relaxation: ASE's optimiser objects stepped with batched forces against
hand-written numpy steps, each next to the model's own forward and backward pass on the same batch.

Usage: OMP_NUM_THREADS=1 python benchmarks/relax_step_cost.py [--model models/mft_gap.pt] [--n 64] [--steps 12]
       [--cells 8] [--supercell 2,1,1] [--out benchmarks/results/relax_step_cost.md]

Molecules: ``--n`` QM9 molecules rattled by 0.05 Å, all in one batch for ``--steps`` steps (no one leaves, so
every step has the same batch). Cells: ``--cells`` strained, rattled Si diamond supercells with a cell filter
(FIRE). Paths, all driven from the same model results and timed per step (the first two steps are warm-up):

- numpy: the per-structure numpy steps mftcalc shipped before issue 20 (FIRE, BFGS with a Cholesky solve, the
  UnitCell/Frechet generalised coordinates), reproduced below as the baseline;
- ASE as is: ``ase.optimize`` FIRE/BFGS/LBFGS objects (and ``ase.filters`` filters), one per structure, reading
  the batched results through :class:`mftcalc.relaxation.flight.ModelResults`;
- mftcalc: the registry's optimisers and filters (:mod:`mftcalc.relaxation.optimizers`, :mod:`mftcalc.relaxation.cell_filters`),
  through the engine's own calls (``start``, ``receive``, ``step``).

"step ms" counts everything between two model calls (results to numpy, fmax, the step); "model ms" the
forward + backward. Both are CPU time of this process (the machine may be shared; run with one thread).
"max |Δx| vs numpy" checks that every path takes the same steps.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import torch


# ----------------------------------------------------------------------------------------- numpy baseline paths
class _NumpyFire:
    """FIRE on [m, 3] arrays (ASE's rule), one structure."""

    def __init__(self) -> None:
        self.v, self.dt, self.a, self.n_pos = None, 0.1, 0.1, 0

    def step(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        if self.v is None:
            self.v = np.zeros_like(f)
        elif float((f * self.v).sum()) > 0.0:
            self.v = (1 - self.a) * self.v + self.a * f / np.sqrt((f * f).sum()) * np.sqrt((self.v * self.v).sum())
            if self.n_pos > 5:
                self.dt, self.a = min(self.dt * 1.1, 1.0), self.a * 0.99
            self.n_pos += 1
        else:
            self.v, self.a, self.dt, self.n_pos = np.zeros_like(f), 0.1, self.dt * 0.5, 0
        self.v = self.v + self.dt * f
        dr = self.dt * self.v
        norm = np.sqrt((dr * dr).sum())
        return x + (dr * 0.2 / norm if norm > 0.2 else dr)


class _NumpyBFGS:
    """BFGS on [m, 3] arrays (ASE's update and cap, Cholesky solve), one structure."""

    def __init__(self, hessian0: np.ndarray) -> None:
        self.h, self.x0, self.f0 = hessian0, None, None

    def step(self, x: np.ndarray, f: np.ndarray) -> np.ndarray:
        from mftcalc.relaxation.bfgs import abs_newton_step
        r, g = x.ravel(), f.ravel()
        if self.x0 is not None and np.abs(r - self.x0).max() >= 1e-7:
            dx, dg = r - self.x0, self.f0 - g
            hdx = self.h @ dx
            self.h = self.h + np.outer(dg, dg) / (dx @ dg) - np.outer(hdx, hdx) / (dx @ hdx)
        self.x0, self.f0 = r.copy(), g.copy()
        dr = abs_newton_step(self.h, g).reshape(-1, 3)
        longest = float(np.sqrt((dr * dr).sum(1)).max())
        return x + (dr * 0.2 / longest if longest >= 0.2 else dr)


class _NumpyCell:
    """UnitCellFilter (``log=False``) or FrechetCellFilter coordinates on arrays, one structure."""

    def __init__(self, cell: np.ndarray, n: int, log: bool) -> None:
        self.cell0, self.n, self.log = cell.copy(), float(n), log

    def to_general(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        from scipy.linalg import logm
        grad = np.linalg.solve(self.cell0, cell).T
        g = np.concatenate([np.linalg.solve(grad, positions.T).T, self.n * grad])
        if self.log:
            g[-3:] = np.real(logm(grad)) * self.n
        return g

    def from_general(self, g: np.ndarray) -> tuple:
        from scipy.linalg import expm
        grad = expm(g[-3:] / self.n) if self.log else g[-3:] / self.n
        return g[:-3] @ grad.T, self.cell0 @ grad.T

    def forces(self, forces: np.ndarray, stress: np.ndarray, cell: np.ndarray) -> np.ndarray:
        from scipy.linalg import expm_frechet, logm
        grad = np.linalg.solve(self.cell0, cell).T
        cell_grad = np.linalg.solve(grad, (-abs(np.linalg.det(cell)) * stress).T).T
        if self.log:                                      # nine Fréchet derivatives, as ASE
            log_grad, out = np.real(logm(grad)), np.zeros((3, 3))
            for mu in range(3):
                for nu in range(3):
                    e = np.zeros((3, 3))
                    e[mu, nu] = 1.0
                    out[mu, nu] = np.sum(expm_frechet(log_grad, e, compute_expm=False) * cell_grad)
            cell_grad = out
        return np.concatenate([forces @ grad, cell_grad / self.n])


class NumpyPath:
    """The baseline: per-structure numpy optimisers on positions or generalised cell coordinates."""

    def __init__(self, structures: list, make: Callable[[Any], Any], cell_filter: str = "") -> None:
        self.structures, self.opts = structures, [make(s) for s in structures]
        self.cells = [_NumpyCell(s.cell, s.n_atoms, cell_filter == "frechet") if cell_filter else None
                      for s in structures]
        self.x = [c.to_general(s.positions, s.cell) if c else s.positions.copy()
                  for s, c in zip(structures, self.cells)]

    def geometries(self) -> list:
        return [c.from_general(x) if c else (x, s.cell) for s, c, x in zip(self.structures, self.cells, self.x)]

    def step(self, res: Dict[str, torch.Tensor], offsets: np.ndarray, geoms: list) -> None:
        forces = res["forces"].detach().double().numpy()
        stress = res["stress"].detach().double().numpy() if "stress" in res else None
        for k, (opt, cell) in enumerate(zip(self.opts, self.cells)):
            f = forces[offsets[k]:offsets[k + 1]]
            if cell:
                f = cell.forces(f, stress[k], geoms[k][1])
            float(np.sqrt((f * f).sum(1)).max())                 # fmax, as the engine
            self.x[k] = opt.step(self.x[k], f)


class RegistryPath:
    """ASE or mftcalc optimiser objects through the engine's calls (:class:`mftcalc.relaxation.flight.InFlight`)."""

    def __init__(self, structures: list, optimizer: Any, cell_filter: Any = None) -> None:
        from mftcalc.relaxation.flight import InFlight
        self.optimizer = optimizer
        self.flights = [InFlight.start(k, s, 0, None, cell_filter) for k, s in enumerate(structures)]
        for f in self.flights:
            f.state = optimizer.start(f)

    def geometries(self) -> list:
        return [(f.atoms.positions.copy(), f.atoms.cell.array.copy()) for f in self.flights]

    def step(self, res: Dict[str, torch.Tensor], offsets: np.ndarray, geoms: list) -> None:
        self.optimizer.receive(self.flights, res["energy"], res["forces"], res.get("stress"), offsets)
        self.optimizer.step(self.flights)


def ase_as_is(name: str, **kwargs: Any) -> Any:
    """A registry-style optimiser stepping an unmodified ``ase.optimize`` class."""
    from ase import optimize
    from mftcalc.relaxation.optimizers import Optimizer

    class AsIs(Optimizer):
        def start(self, flight):
            opt = getattr(optimize, name)(flight.target, logfile=None)
            if "hessian0" in kwargs:
                opt.H0 = kwargs["hessian0"](flight.structure)
            return opt
    return AsIs()


# ----------------------------------------------------------------------------------------------------- runner
def run(path: Any, structures: list, handle: Any, steps: int, with_stress: bool) -> tuple:
    """(model ms per step, step ms per step, final positions) of ``steps`` steps of ``path``."""
    from mftcalc.data.batch import collate
    datasets = [handle.dataset_index(s) for s in structures]
    offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in structures])])
    t_model = t_step = 0.0
    for it in range(steps):
        t0 = time.process_time()
        geoms = path.geometries()
        chunk = [s.with_labels(positions=p, cell=c) for s, (p, c) in zip(structures, geoms)]
        batch = collate(chunk, handle.dtype, dataset=datasets, properties=[], device=handle.device)
        t1 = time.process_time()
        res = handle.module(batch, compute_forces=True, compute_stress=with_stress, compute_properties=False,
                            features=False)
        t2 = time.process_time()
        path.step(res, offsets, geoms)
        t3 = time.process_time()
        if it >= 2:
            t_model += t2 - t1
            t_step += (t1 - t0) + (t3 - t2)
    n = max(steps - 2, 1)
    return 1e3 * t_model / n, 1e3 * t_step / n, [p for p, _ in path.geometries()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mft_gap.pt")
    parser.add_argument("--n", type=int, default=64, help="QM9 molecules in the batch")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--cells", type=int, default=8, help="Si crystals in the cell-filter batch")
    parser.add_argument("--supercell", default="2,1,1", help="repeats of the 8-atom cubic Si cell")
    parser.add_argument("--out", default="benchmarks/results/relax_step_cost.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from ase.build import bulk
    from threadpoolctl import threadpool_limits
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.data import Structure
    from mftcalc.data.qm9 import load_qm9
    from mftcalc.geometry.lindh import lindh_hessian
    from mftcalc.relaxation.bfgs import BFGSParams
    from mftcalc.relaxation.cell_filters import CELL_FILTERS
    from mftcalc.relaxation.optimizers import make_optimizer
    from ase.filters import FrechetCellFilter, UnitCellFilter

    handle = ModelHandle.load(args.model)
    ds = load_qm9(progress=False)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(ds), args.n, replace=False))
    mols = [s.with_labels(positions=s.positions + rng.normal(scale=0.05, size=s.positions.shape))
            for s in ds.structures(rows, properties=[])]
    reps = tuple(int(r) for r in args.supercell.split(","))
    cells = []
    for k in range(args.cells):
        atoms = bulk("Si", "diamond", a=5.3 + 0.3 * k / max(args.cells - 1, 1), cubic=True) * reps
        atoms.rattle(0.05, seed=k)
        cells.append(Structure.from_ase(atoms))

    def lindh(s):
        return lindh_hessian(numbers=s.numbers, positions=s.positions) + 10.0 * np.eye(3 * s.n_atoms)

    alpha = BFGSParams().hessian0
    cases = {   # (label, structures, with stress, {path: factory})
        "FIRE": (mols, False, {"numpy": lambda: NumpyPath(mols, lambda s: _NumpyFire()),
                               "ASE as is = mftcalc": lambda: RegistryPath(mols, make_optimizer("fire"))}),
        "BFGS": (mols, False, {"numpy": lambda: NumpyPath(mols, lambda s: _NumpyBFGS(alpha(s.positions, s.numbers))),
                               "ASE as is": lambda: RegistryPath(mols, ase_as_is("BFGS")),
                               "mftcalc (ASE + Cholesky)": lambda: RegistryPath(mols, make_optimizer("bfgs"))}),
        "BFGS-Lindh": (mols, False, {"numpy": lambda: NumpyPath(mols, lambda s: _NumpyBFGS(lindh(s))),
                                     "ASE as is": lambda: RegistryPath(mols, ase_as_is("BFGS", hessian0=lindh)),
                                     "mftcalc (ASE + Cholesky)": lambda: RegistryPath(mols, make_optimizer("bfgs-lindh"))}),
        "LBFGS": (mols, False, {"ASE as is = mftcalc": lambda: RegistryPath(mols, make_optimizer("lbfgs"))}),
        "BFGS-internal": (mols, False, {"mftcalc (own)": lambda: RegistryPath(mols, make_optimizer("bfgs-internal"))}),
    }
    for name, ase_cls in (("unitcell", UnitCellFilter), ("frechet", FrechetCellFilter)):
        cases[f"FIRE + {name} filter"] = (cells, True, {
            "numpy": lambda name=name: NumpyPath(cells, lambda s: _NumpyFire(), cell_filter=name),
            "ASE as is": lambda c=ase_cls: RegistryPath(cells, make_optimizer("fire"), c),
            "mftcalc (ASE filter, forces once" + (", 1 Fréchet)" if name == "frechet" else ")"):
                lambda name=name: RegistryPath(cells, make_optimizer("fire"), CELL_FILTERS[name])})

    table = ["| optimiser | batch | path | model ms/step | step ms/step | step / model | step / numpy step | "
             "max \\|Δx\\| vs numpy Å |", "|---|---|---|---:|---:|---:|---:|---:|"]
    load_before = os.getloadavg()
    with threadpool_limits(limits=1, user_api="blas"):
        for label, (structures, with_stress, paths) in cases.items():
            base_step, base_x = None, None
            batch = f"{len(structures)} × {np.mean([s.n_atoms for s in structures]):.1f} atoms"
            for path_name, factory in paths.items():
                model_ms, step_ms, x = run(factory(), structures, handle, args.steps, with_stress)
                if path_name == "numpy":
                    base_step, base_x = step_ms, x
                dx = "–" if base_x is None else f"{max(np.abs(a - b).max() for a, b in zip(x, base_x)):.1e}"
                ratio = "–" if base_step is None else f"{step_ms / base_step:.2f}"
                table.append(f"| {label} | {batch} | {path_name} | {model_ms:.1f} | {step_ms:.2f} | "
                             f"{100 * step_ms / model_ms:.1f} % | {ratio} | {dx} |")
                print(table[-1], flush=True)
    load_after = os.getloadavg()
    text = (f"# Batched relaxation: cost of one optimiser step\n\n`OMP_NUM_THREADS={torch.get_num_threads()} python "
            f"benchmarks/relax_step_cost.py --model {args.model} --n {args.n} --steps {args.steps} --cells "
            f"{args.cells} --supercell {args.supercell}`; torch {torch.__version__} ({torch.get_num_threads()} "
            f"thread(s)), numpy BLAS 1 thread, {platform.machine()}, {os.cpu_count()} CPUs; load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after. CPU ms per step, averaged over steps 3-{args.steps}."
            f"\n\n" + "\n".join(table) + "\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
