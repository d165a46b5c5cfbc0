"""``mftcalc vibrations``: harmonic frequencies, imaginary modes and zero-point energies of (relaxed) structures from
the model's force field (:mod:`mftcalc.workflows.vibrations`)."""
from __future__ import annotations

import argparse
import csv
from typing import Any, List, Optional

COLUMNS = ["index", "formula", "n_atoms", "energy_eV", "fmax_eV_per_A", "n_imaginary", "lowest_frequency_cm-1",
           "highest_frequency_cm-1", "zero_point_energy_eV", "n_rigid"]


def run_vibrations(model: str, input_path: str, out: str, delta: float = 0.005, modes: Optional[str] = None,
                   dataset: Optional[str] = None, dtype: str = "float64", device: str = "auto",
                   stationary_fmax: float = 0.05, imaginary_threshold: float = 20.0) -> List[dict]:
    """Analyse every structure of ``input_path``, write the table ``out`` (.csv) and, with ``modes`` (.npz), each
    structure's frequencies, modes and Hessian; print a summary naming structures that are no minimum or no
    stationary point. Returns the rows of :func:`mftcalc.workflows.vibrations.vibrational_analysis`."""
    import numpy as np

    from mftcalc.calculators.domains import formula
    from mftcalc.cli_evaluate import read_input
    from mftcalc.cli_model import DTYPES
    from mftcalc.files import atomic_write, atomic_write_binary
    from mftcalc.workflows.vibrations import vibrational_analysis
    if not out.lower().endswith(".csv"):
        raise SystemExit(f"--out {out}: the table is written as .csv; give a name ending in .csv (--modes FILE.npz "
                         "keeps the frequencies, modes and Hessians)")
    if modes is not None and not modes.lower().endswith(".npz"):
        raise SystemExit(f"--modes {modes}: give a name ending in .npz")
    structures = read_input(input_path)
    rows = vibrational_analysis(structures, model, delta, dataset, DTYPES[dtype], device,
                                progress=sum(6 * s.n_atoms for s in structures) > 2000)
    table = []
    for k, row in enumerate(rows):
        nm = row["modes"]
        f = nm.frequencies
        table.append([k, formula(row["structure"]), row["structure"].n_atoms, f"{row['energy']:.8f}",
                      f"{row['fmax']:.6f}", nm.n_imaginary(imaginary_threshold), f"{f[0]:.2f}" if f.size else "",
                      f"{f[-1]:.2f}" if f.size else "", f"{nm.zero_point_energy:.6f}", nm.n_rigid])

    def write_table(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows(table)
    atomic_write(out, write_table)
    if modes is not None:
        arrays = {}
        for k, row in enumerate(rows):
            arrays.update({f"frequencies_{k}": row["modes"].frequencies, f"modes_{k}": row["modes"].modes,
                           f"hessian_{k}": row["hessian"]})
        atomic_write_binary(modes, lambda fh: np.savez_compressed(fh, **arrays))
    saddles = [k for k, row in enumerate(rows) if row["modes"].n_imaginary(imaginary_threshold)]
    moving = [k for k, row in enumerate(rows) if row["fmax"] > stationary_fmax]
    print(f"{len(rows)} structure{'s' if len(rows) != 1 else ''}: {len(rows) - len(saddles)} without and "
          f"{len(saddles)} with imaginary modes (beyond {imaginary_threshold:g} cm⁻¹)"
          + (f", structures {_few(saddles)}" if saddles else "") + f"; wrote {out}"
          + (f" and {modes}" if modes else ""))
    if moving:
        print(f"structures {_few(moving)} are not at a stationary point (fmax above {stationary_fmax:g} eV/Å): their "
              "frequencies are not those of a minimum; relax them first (mftcalc relax MODEL FILE --out R.extxyz)")
    return rows


def _few(indices: List[int]) -> str:
    return ", ".join(str(k) for k in indices[:10]) + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")


def _vibrations(args: argparse.Namespace) -> int:
    run_vibrations(args.model, args.input, args.out, args.delta, args.modes, args.dataset, args.dtype, args.device,
                   args.fmax)
    return 0


def add_vibrations_parser(subparsers: Any) -> None:
    """Register ``vibrations``."""
    from mftcalc.cli_model import DATASET_HELP
    p = subparsers.add_parser("vibrations", help="harmonic frequencies, imaginary modes and zero-point energies of "
                              "relaxed structures (Hessians by central differences, batched)")
    p.add_argument("model", help="checkpoint (.pt) or TorchScript export with a force-field head")
    p.add_argument("input", help="structures, relaxed (mftcalc relax writes them): extxyz, ASE db, any ASE-readable "
                   "file")
    p.add_argument("--out", required=True, help=f".csv table, one row per structure: {', '.join(COLUMNS)} "
                   "(an imaginary frequency as a negative number)")
    p.add_argument("--modes", default=None, help=".npz of frequencies_<k> (cm⁻¹), modes_<k> [3N−k, N, 3] and "
                   "hessian_<k> [3N, 3N] (eV/Å²) of structure k")
    p.add_argument("--delta", type=float, default=0.005, help="finite-difference displacement, Å")
    p.add_argument("--fmax", type=float, default=0.05, help="largest force (eV/Å) of a structure counted as at a "
                   "stationary point; structures above it are named, with the advice to relax them first")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="floating-point precision of the model (float64: the force differences need it)")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    p.set_defaults(func=_vibrations)
