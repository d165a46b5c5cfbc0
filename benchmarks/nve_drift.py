"""Energy conservation in NVE molecular dynamics with the shipped models: what a user running MD needs to know.

Usage: OMP_NUM_THREADS=1 python benchmarks/nve_drift.py [--steps 2000] [--write]

Velocity Verlet (ASE), time step 0.5 fs, velocities drawn at 300 K (Maxwell–Boltzmann, seed 0, momentum and
rotation removed), after a relaxation to fmax 0.01 eV/Å:

- ethanol with ``models/mft_gap.pt`` (force field of the gap model, dataset ``xtb_qm9``);
- diamond Si, 2×2×2 conventional cells (64 atoms), with ``models/pretrained.pt`` (dataset ``mlearn_si``).

Each in float32 and float64. The table gives the linear drift of the total energy (least squares over the run,
meV/atom/ps), the standard deviation of the total energy about that line (meV/atom, the integrator's own
fluctuation at this step) and the mean temperature. A force field whose energy is smooth (C¹ at the cutoff) and whose
forces are its exact gradient conserves energy up to the integrator's O(dt²) fluctuation; float32 adds a random walk.
``--write`` saves the table to ``benchmarks/results/nve_drift.md``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run(atoms, calc, steps: int, dt_fs: float = 0.5) -> dict:
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS
    atoms = atoms.copy()
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=0.01, steps=300)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, timestep=dt_fs * units.fs)
    energies, temperatures = [], []

    def record() -> None:
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        temperatures.append(atoms.get_temperature())
    dyn.attach(record, interval=1)
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    n = len(atoms)
    t_ps = np.arange(len(energies)) * dt_fs / 1000.0
    slope, intercept = np.polyfit(t_ps, np.array(energies) / n, 1)
    residual = np.array(energies) / n - (slope * t_ps + intercept)
    return {"atoms": n, "drift": 1000 * slope, "fluctuation": 1000 * residual.std(),
            "temperature": float(np.mean(temperatures)), "ms_per_step": 1000 * wall / steps, "ps": t_ps[-1]}


def main() -> None:
    from ase.build import bulk, molecule

    from mftcalc import MFTCalculator
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    load_before = C.load_average()
    torch.set_num_threads(1)
    systems = [("ethanol", molecule("CH3CH2OH"), "models/mft_gap.pt", "xtb_qm9"),
               ("Si 64", bulk("Si", "diamond", a=5.43, cubic=True).repeat(2), "models/pretrained.pt", "mlearn_si")]
    lines = [f"NVE velocity Verlet, 0.5 fs, {args.steps} steps from 300 K, one thread. "
             "`OMP_NUM_THREADS=1 python benchmarks/nve_drift.py`", "",
             "| system | model | dtype | atoms | drift (meV/atom/ps) | fluctuation (meV/atom) | mean T (K) | ms/step |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, atoms, model, dataset in systems:
        for dtype in (torch.float32, torch.float64):
            r = run(atoms, MFTCalculator(model, dtype=dtype, dataset=dataset), args.steps)
            lines.append(f"| {name} | {model} | {str(dtype).replace('torch.', '')} | {r['atoms']} | {r['drift']:+.4f} | "
                         f"{r['fluctuation']:.4f} | {r['temperature']:.0f} | {r['ms_per_step']:.1f} |")
            print(lines[-1], flush=True)
    text = C.report_header("Energy conservation in NVE molecular dynamics", sys.argv, load_before) + "\n\n" + "\n".join(lines)
    C.write_report(str(RESULTS / "nve_drift.md") if args.write else None, text)


if __name__ == "__main__":
    main()
