"""``mftcalc vibrations``: harmonic frequencies, imaginary modes and zero-point energies of (relaxed) structures from
the model's force field (:mod:`mftcalc.workflows.vibrations`)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

COLUMNS = ["index", "formula", "n_atoms", "energy_eV", "fmax_eV_per_A", "n_imaginary", "lowest_frequency_cm-1",
           "highest_frequency_cm-1", "zero_point_energy_eV", "n_rigid"]


def run_vibrations(model: str, input_path: str, out: str, delta: float = 0.005, modes: Optional[str] = None,
                   dataset: Optional[str] = None, dtype: str = "float64", device: str = "auto",
                   stationary_fmax: float = 0.05, imaginary_threshold: float = 20.0) -> List[Dict[str, Any]]:
    """Analyse every structure of ``input_path`` into the table ``out`` (.csv; resumable: rows are appended
    block by block under a provenance record, and a rerun skips the structures done, or refuses when the model,
    input or options changed) and, with ``modes`` (.npz, written at the end of a run that computed every
    structure), each structure's frequencies, modes and Hessian. Prints a summary naming structures with imaginary
    modes or not at a stationary point. Returns the table's rows (column -> value), in input order."""
    import numpy as np

    from mftcalc.calculators.domains import formula
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.cli_evaluate import read_input
    from mftcalc.cli_model import DTYPES
    from mftcalc.filehash import sha256_file
    from mftcalc.files import atomic_write_binary
    from mftcalc.workflows.results_store import ResultsCSV, make_provenance
    from mftcalc.workflows.vibrations import iter_vibrational_analysis
    if not out.lower().endswith(".csv"):
        raise SystemExit(f"--out {out}: the table is written as .csv; give a name ending in .csv (--modes FILE.npz "
                         "keeps the frequencies, modes and Hessians)")
    if modes is not None and not modes.lower().endswith(".npz"):
        raise SystemExit(f"--modes {modes}: give a name ending in .npz")
    structures = read_input(input_path)
    handle = ModelHandle.load(model, device, DTYPES[dtype], dataset=dataset)
    options = {"command": "vibrations", "delta": delta, "dtype": dtype, "dataset": dataset,
               "imaginary_threshold": imaginary_threshold}
    provenance = make_provenance(sha256_file(model), str(model), input_path, options, COLUMNS)
    arrays: Dict[str, Any] = {}
    with ResultsCSV(out, COLUMNS, provenance, _validator(len(structures))) as store:
        if modes is not None and store.done:
            raise SystemExit(f"--modes {modes}: {out} already holds {len(store.done)} rows of an earlier run, whose "
                             "modes this run would not recompute; resume without --modes, or write to a new --out")
        todo = [k for k in range(len(structures)) if k not in store.done]
        blocks = iter_vibrational_analysis([structures[k] for k in todo], handle, delta,
                                           progress=sum(6 * structures[k].n_atoms for k in todo) > 2000)
        for results in blocks:
            rows = []
            for result in results:
                j, nm = todo[result["index"]], result["modes"]
                f = nm.frequencies
                rows.append({"index": j, "formula": formula(structures[j]), "n_atoms": structures[j].n_atoms,
                             "energy_eV": f"{result['energy']:.8f}", "fmax_eV_per_A": f"{result['fmax']:.6f}",
                             "n_imaginary": nm.n_imaginary(imaginary_threshold),
                             "lowest_frequency_cm-1": f"{f[0]:.2f}" if f.size else "",
                             "highest_frequency_cm-1": f"{f[-1]:.2f}" if f.size else "",
                             "zero_point_energy_eV": f"{nm.zero_point_energy:.6f}", "n_rigid": nm.n_rigid})
                if modes is not None:
                    arrays.update({f"frequencies_{j}": f, f"modes_{j}": nm.modes, f"hessian_{j}": result["hessian"]})
            store.append(rows)
            store.done.update({int(r["index"]): {c: str(v) for c, v in r.items()} for r in rows})
        table = [store.done[k] for k in range(len(structures))]
    if modes is not None:
        atomic_write_binary(modes, lambda fh: np.savez_compressed(fh, **arrays))
    saddles = [k for k, row in enumerate(table) if int(row["n_imaginary"])]
    moving = [k for k, row in enumerate(table) if float(row["fmax_eV_per_A"]) > stationary_fmax]
    resumed = len(structures) - len(todo)
    print(f"{len(table)} structure{'s' if len(table) != 1 else ''}"
          + (f" ({resumed} done by an earlier run)" if resumed else "")
          + f": {len(table) - len(saddles)} without and {len(saddles)} with imaginary modes (beyond "
          f"{imaginary_threshold:g} cm⁻¹)" + (f", structures {_few(saddles)}" if saddles else "") + f"; wrote {out}"
          + (f" and {modes}" if modes else ""))
    if moving:
        print(f"structures {_few(moving)} are not at a stationary point (fmax above {stationary_fmax:g} eV/Å): their "
              "frequencies are not those of a minimum; relax them first (mftcalc relax MODEL FILE --out R.extxyz)")
    return table


def _validator(n_structures: int):
    """A resumed row is kept when its index is one of the input's and its numbers parse."""
    def validate(row: Dict[str, str]) -> Optional[str]:
        try:
            if not 0 <= int(row["index"]) < n_structures:
                return f"index {row['index']} outside the input's {n_structures} structures"
            int(row["n_imaginary"])
            for column in ("energy_eV", "fmax_eV_per_A", "zero_point_energy_eV"):
                float(row[column])
        except ValueError as exc:
            return f"a value that does not parse ({exc})"
        return None
    return validate


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
    p.add_argument("--modes", default=None, help=".npz of frequencies_<i> (cm⁻¹), modes_<i> [3F − n_rigid, N, 3] "
                   "and hessian_<i> [3F, 3F] (eV/Å²) of structure i, F its free atoms (all but those an ASE FixAtoms "
                   "holds, extxyz move_mask, as ASE's Vibrations)")
    p.add_argument("--delta", type=float, default=0.005, help="finite-difference displacement, Å")
    p.add_argument("--fmax", type=float, default=0.05, help="largest force (eV/Å) of a structure counted as at a "
                   "stationary point; structures above it are named, with the advice to relax them first")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="floating-point precision of the model (float32 moved relaxed ethanol's frequencies by at most "
                   "0.02 cm⁻¹)")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    p.set_defaults(func=_vibrations)
