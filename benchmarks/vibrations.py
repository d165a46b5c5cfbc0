"""Vibrational analysis: mftcalc's batched Hessian against ASE's ``Vibrations`` on the same calculator, same model.

Usage: OMP_NUM_THREADS=1 python benchmarks/vibrations.py [--model models/mft_gap.pt] [--repeats 3] [--write]

The 8 bundled molecules (``src/mftcalc/examples/molecules.extxyz``, 3–18 atoms) are relaxed first (float64, BFGS,
fmax 1e-4 eV/Å, dataset ``xtb_qm9``). Then, per molecule, in turn and after one untimed warm-up of each:

- ``ase``: ``ase.vibrations.Vibrations(atoms, delta=0.005, nfree=2)`` with ``MFTCalculator`` (float64): 6N + 1
  single-structure calls, each with its own neighbour search, force evaluation and cache file;
- ``mftcalc``: ``mftcalc.workflows.vibrations.hessians`` with the calculator's loaded model: the 6N + 1 structures
  in batched calls (``calc.get_vibrations(atoms)`` does the same).

A second table times phonopy force constants (``mftcalc.workflows.phonons.phonons``) of diamond Si rattled by 0.03 Å
(no symmetry left), 2×2×2 supercell, ``models/pretrained.pt`` float64: an ``MFTCalculator`` (all displaced
supercells in batched calls) against the same calculator behind ASE's ``LinearCombinationCalculator`` (one
supercell per call, as for any ASE calculator).

The table gives the best-of-``repeats`` time per molecule, the ratio ase/mftcalc, the largest Hessian difference
(eV/Å²) and the largest frequency difference after the rigid-body projection (cm⁻¹). ``--write`` saves the table to
``benchmarks/results/vibrations.md``. Run it alone (other jobs paused): it measures CPU time on one thread.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    from ase.optimize import BFGS
    from ase.vibrations import Vibrations

    from mftcalc import MFTCalculator, read_structures
    from mftcalc.workflows.screening import example_path
    from mftcalc.workflows.vibrations import hessians, normal_modes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mft_gap.pt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="save the table to benchmarks/results/vibrations.md")
    args = parser.parse_args()
    load_before = C.load_average()
    torch.set_num_threads(1)
    calc = MFTCalculator(args.model, dtype=torch.float64, dataset="xtb_qm9")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for k, structure in enumerate(read_structures(example_path())):
            atoms = structure.to_ase()
            atoms.calc = calc
            BFGS(atoms, logfile=None).run(fmax=1e-4, steps=500)
            relaxed = type(structure).from_ase(atoms)

            def run_ase(tag: str) -> np.ndarray:
                vib = Vibrations(atoms, delta=0.005, nfree=2, name=os.path.join(scratch, f"vib{k}{tag}"))
                vib.run()
                hessian = vib.get_vibrations().get_hessian_2d()
                vib.clean()
                return hessian

            def run_ours() -> np.ndarray:
                return hessians([relaxed], calc.handle, delta=0.005)[0]

            run_ase("warm")
            run_ours()
            times = {"ase": [], "mftcalc": []}
            for r in range(args.repeats):
                start = time.perf_counter()
                reference = run_ase(str(r))
                times["ase"].append(time.perf_counter() - start)
                start = time.perf_counter()
                ours = run_ours()
                times["mftcalc"].append(time.perf_counter() - start)
            f_ase = normal_modes(relaxed, reference).frequencies
            f_ours = normal_modes(relaxed, ours).frequencies
            rows.append((atoms.get_chemical_formula(), len(atoms), min(times["ase"]), min(times["mftcalc"]),
                         float(np.abs(ours - reference).max()), float(np.abs(f_ours - f_ase).max()), f_ours[0]))
    lines = [f"Vibrational analysis, {args.model} (float64, delta 0.005 Å), one thread, {platform.processor() or platform.machine()}; "
             f"best of {args.repeats}. `OMP_NUM_THREADS=1 python benchmarks/vibrations.py`", "",
             "| molecule | atoms | ASE Vibrations (s) | mftcalc batched (s) | ASE / mftcalc | max ΔH (eV/Å²) | "
             "max Δν (cm⁻¹) | lowest ν (cm⁻¹) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, n, t_ase, t_ours, dh, dnu, low in rows:
        lines.append(f"| {name} | {n} | {t_ase:.3f} | {t_ours:.3f} | {t_ase / t_ours:.1f} | {dh:.1e} | {dnu:.1e} | "
                     f"{low:.1f} |")
    total_ase, total_ours = sum(r[2] for r in rows), sum(r[3] for r in rows)
    lines.append(f"| all {len(rows)} | {sum(r[1] for r in rows)} | {total_ase:.3f} | {total_ours:.3f} | "
                 f"{total_ase / total_ours:.1f} | | | |")
    lines += ["", *phonon_table(args.repeats)]
    text = C.report_header("Vibrational analysis: batched Hessians against ASE Vibrations", sys.argv, load_before) + "\n\n" + "\n".join(lines)
    C.write_report(str(RESULTS / "vibrations.md") if args.write else None, text)


def phonon_table(repeats: int) -> list:
    """Phonopy force constants of rattled Si, batched through the model against one supercell per call."""
    from ase.build import bulk
    from ase.calculators.mixing import LinearCombinationCalculator

    from mftcalc import MFTCalculator
    from mftcalc.workflows.phonons import phonons
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=0)
    calc = MFTCalculator("models/pretrained.pt", dtype=torch.float64, dataset="mlearn_si")
    plain = LinearCombinationCalculator([calc], [1.0])
    phonons(atoms, calc, mesh=(2, 2, 2))
    phonons(atoms, plain, mesh=(2, 2, 2))
    times = {"batched": [], "one by one": []}
    constants = {}
    for _ in range(repeats):
        for name, c in (("batched", calc), ("one by one", plain)):
            start = time.perf_counter()
            ph = phonons(atoms, c, mesh=(2, 2, 2))
            times[name].append(time.perf_counter() - start)
            constants[name] = ph.force_constants
    n = len(ph.supercells_with_displacements)
    difference = float(np.abs(constants["batched"] - constants["one by one"]).max())
    return [f"Phonopy force constants, Si (rattled, 2×2×2 supercell, {n} displaced supercells of 16 atoms), "
            f"models/pretrained.pt float64, best of {repeats}; largest force-constant difference {difference:.1e} eV/Å²:",
            "",
            "| forces from | time (s) | one by one / batched |", "|---|---:|---:|",
            f"| MFTCalculator, batched | {min(times['batched']):.3f} | {min(times['one by one']) / min(times['batched']):.1f} |",
            f"| the same calculator, one supercell per call | {min(times['one by one']):.3f} | 1.0 |"]


if __name__ == "__main__":
    main()
