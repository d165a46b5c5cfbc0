"""``mftcalc model-devi``: the force deviation of a committee of models over a trajectory or a structure file,
as deepmd-kit's ``dp model-devi`` (:mod:`mftcalc.workflows.model_deviation`), with DP-GEN's trust bounds to pick
the structures worth labelling next."""
from __future__ import annotations

import argparse
from typing import Any, List, Optional

import numpy as np

from mftcalc.workflows.model_deviation import ModelDeviation


def run_model_devi(models: List[str], input_path: str, out: str, dataset: Optional[str] = None, frequency: int = 1,
                   relative: Optional[float] = None, relative_v: Optional[float] = None,
                   trust_lo: Optional[float] = None, trust_hi: Optional[float] = None,
                   candidates: Optional[str] = None, dtype: str = "float32", device: str = "auto",
                   atomic: Optional[str] = None, plot: Optional[str] = None,
                   max_candidates: Optional[int] = None) -> ModelDeviation:
    """Compute the committee's deviation over ``input_path`` and write ``out`` (``.out``: deepmd-kit's
    ``model_devi.out``; ``.csv``: one row per structure, unit-suffixed columns), and with trust bounds the
    candidate structures (``trust_lo`` ≤ max_devi_f < ``trust_hi``; at most ``max_candidates`` of them, drawn at
    random with seed 0 as DP-GEN's ``fp_task_max``, kept in input order) to ``candidates`` (.extxyz), and with ``atomic``
    every structure with its atoms' force deviation as the per-atom array ``devi_f`` (.extxyz, for OVITO or ASE's
    GUI; deepmd-kit's ``--atomic``), and with ``plot`` the histogram of max_devi_f with the trust bounds (and the
    deviation against the reference forces' error, for a labelled input). Prints a summary:
    the largest deviations, DP-GEN's three classes, and, for a labelled input, how well ``max_devi_f`` ranks the
    committee mean's actual force error (Spearman)."""
    import csv
    import io

    from mftcalc.calculators.domains import formula
    from mftcalc.cli_evaluate import read_input
    from mftcalc.cli_model import DTYPES
    from mftcalc.data.io import write_extxyz
    from mftcalc.files import atomic_write_text
    from mftcalc.workflows.model_deviation import csv_columns, csv_rows, model_deviation, out_text, summary_counts
    kind = out.lower().rsplit(".", 1)[-1] if "." in out else ""
    if kind not in ("out", "csv"):
        raise SystemExit(f"--out {out}: give a name ending in .out (deepmd-kit's model_devi.out, as DP-GEN reads it) "
                         "or .csv (one row per structure, columns with units)")
    if (trust_lo is None) != (trust_hi is None) or (trust_lo is not None and not 0 <= trust_lo < trust_hi):
        raise SystemExit(f"--trust-lo {trust_lo} --trust-hi {trust_hi}: give both, with 0 ≤ lo < hi, in the unit of "
                         "max_devi_f (eV/Å, or unitless with --relative), e.g. --trust-lo 0.05 --trust-hi 0.15")
    if max_candidates is not None and (candidates is None or max_candidates < 1):
        raise SystemExit(f"--max-candidates {max_candidates}: a positive number of structures to write with "
                         "--candidates FILE")
    if candidates is not None and trust_lo is None:
        raise SystemExit(f"--candidates {candidates}: the candidates are the structures between --trust-lo and "
                         "--trust-hi; give both bounds")
    if atomic is not None and not atomic.lower().endswith((".extxyz", ".xyz")):
        raise SystemExit(f"--atomic {atomic}: the per-atom deviations are written as an .extxyz array; give a name "
                         "ending in .extxyz")
    if frequency < 1:
        raise SystemExit(f"--frequency {frequency}: the trajectory's steps between frames, a positive integer")
    structures = read_input(input_path)
    result = model_deviation(structures, models, dataset, relative, relative_v, device, DTYPES[dtype],
                             progress=len(structures) > 200)      # a bar per model on long trajectories
    if kind == "out":
        atomic_write_text(out, out_text(result, frequency, header=f"{input_path}; models: {' '.join(models)}"))
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=csv_columns(result))
        writer.writeheader()
        writer.writerows(csv_rows(result, structures, [formula(s) for s in structures]))
        atomic_write_text(out, buffer.getvalue())
    unit = "" if relative is not None else " eV/Å"
    worst = int(np.argmax(result.max_devi_f))
    print(f"{len(result)} structure{'s' if len(result) != 1 else ''}, {len(models)} models: max_devi_f median "
          f"{np.median(result.max_devi_f):.4g}{unit}, largest {result.max_devi_f[worst]:.4g}{unit} (structure "
          f"{worst}); wrote {out}")
    counts = summary_counts(result, trust_lo, trust_hi)
    if counts:
        print(f"trust bounds {trust_lo:g}–{trust_hi:g}{unit}: {counts['accurate']} accurate, {counts['candidate']} "
              f"candidates, {counts['failed']} failed (deviation too large to trust a label's neighbourhood)")
    if candidates is not None:
        between = [j for j, d in enumerate(result.max_devi_f) if trust_lo <= d < trust_hi]
        if max_candidates is not None and len(between) > max_candidates:
            between = sorted(np.random.default_rng(0).choice(between, max_candidates, replace=False).tolist())
        write_extxyz([structures[j].with_labels(info={**structures[j].info, "model_devi_index": j,
                                                      "max_devi_f": float(result.max_devi_f[j])})
                      for j in between], candidates)
        print(f"wrote {len(between)} of the {counts['candidate']} candidates to {candidates} (info: model_devi_index, "
              "max_devi_f): label them with your reference method and add them to the training data")
    if plot is not None:
        from mftcalc.analysis.plots import plot_model_deviation
        plot_model_deviation(result.max_devi_f, plot, "relative" if relative is not None else "eV/Å",
                             None if trust_lo is None else (trust_lo, trust_hi), result.max_error_f)
        print(f"plot written to {plot}")
    if atomic is not None:
        _write_atomic(structures, result, atomic)
        print(f"wrote every structure with its atoms' deviation (array devi_f) to {atomic}")
    labelled = np.isfinite(result.max_error_f)
    if labelled.sum() >= 3:
        from scipy.stats import spearmanr
        rho = spearmanr(result.max_devi_f[labelled], result.max_error_f[labelled]).statistic
        print(f"reference forces on {int(labelled.sum())} structures: the committee mean's largest force error has "
              f"median {np.median(result.max_error_f[labelled]):.4g} eV/Å; Spearman ρ(max_devi_f, max error) = "
              f"{rho:.3f}")
    return result


def _write_atomic(structures: List[Any], result: ModelDeviation, path: str) -> None:
    """The structures (extxyz, atomically) with ``devi_f`` per atom (eV/Å, unitless when relative)."""
    import ase.io

    from mftcalc.files import atomic_write
    frames = []
    for s, devi in zip(structures, result.atomic_devi_f):
        atoms = s.to_ase()
        atoms.calc = None
        atoms.arrays["devi_f"] = np.asarray(devi, dtype=float)
        frames.append(atoms)
    atomic_write(path, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))


def _model_devi(args: argparse.Namespace) -> int:
    run_model_devi(args.models, args.input, args.out, args.dataset, args.frequency, args.relative, args.relative_v,
                   args.trust_lo, args.trust_hi, args.candidates, args.dtype, args.device, args.atomic, args.plot,
                   args.max_candidates)
    return 0


def add_model_devi_parser(subparsers: Any) -> None:
    """Register ``model-devi``."""
    from mftcalc.cli_model import DATASET_HELP
    p = subparsers.add_parser("model-devi", help="force/virial/energy deviation of a committee of models over "
                              "structures (deepmd-kit's dp model-devi; DP-GEN's error indicator and trust bounds)")
    p.add_argument("input", help="structures (a trajectory: extxyz, ASE .traj/.db, DeePMD dir, any ASE-readable "
                   "file); with reference forces, their error is reported beside the deviation")
    p.add_argument("-m", "--models", nargs="+", required=True, help="two or more checkpoints or TorchScript "
                   "exports with force-field heads, trained from different seeds")
    p.add_argument("-o", "--out", required=True, help="model_devi.out (deepmd-kit's columns: step, max/min/avg_devi_v "
                   "in eV/atom, max/min/avg_devi_f in eV/Å, devi_e in eV/atom; nan virial for molecules) or .csv")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    p.add_argument("-f", "--frequency", type=int, default=1, help="trajectory steps between frames (the .out's step "
                   "column is frame index × this)")
    p.add_argument("--relative", type=float, default=None, help="relative force deviation ε/(|F| + L), L in eV/Å "
                   "(deepmd-kit's --relative)")
    p.add_argument("--relative-v", type=float, default=None, help="relative virial deviation, L in eV/atom")
    p.add_argument("--trust-lo", type=float, default=None, help="DP-GEN's model_devi_f_trust_lo: below it a "
                   "structure counts as accurate")
    p.add_argument("--trust-hi", type=float, default=None, help="DP-GEN's model_devi_f_trust_hi: at or above it a "
                   "structure counts as failed")
    p.add_argument("--candidates", default=None, help="write the structures between the trust bounds here (.extxyz): "
                   "the ones to label next")
    p.add_argument("--max-candidates", type=int, default=None, help="write at most this many candidates, drawn at "
                   "random (seed 0; DP-GEN's fp_task_max); default all")
    p.add_argument("--atomic", default=None, help="also write every structure with its atoms' force deviation as "
                   "the per-atom array devi_f (.extxyz; deepmd-kit's --atomic)")
    p.add_argument("--plot", default=None, help="histogram of max_devi_f with the trust bounds, and the deviation "
                   "against the reference forces' error for a labelled input (e.g. devi.png)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="model precision")
    p.set_defaults(func=_model_devi)
