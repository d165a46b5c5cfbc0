"""The ``mftcalc label`` sub-command: GFN2-xTB force-field labels for conformers of QM9 molecules outside every
BOOM test set.

``mftcalc label --out DIR [--n-molecules N] [--conformers-per-molecule K] [--workers W] [--seed S]
[--chunk-size C] [--qm9-cache DIR] [--splits FILE | --split-seed S]``

Loads QM9, takes the BOOM splits of all eight properties from ``--splits`` (as written by
``mftcalc data qm9 --property all --splits-out FILE``) or computes them, excludes every molecule in the union of
their ID and OOD test sets, draws N of the remaining molecules (seeded) and labels K conformers of each with
:func:`mftcalc.labelling.labeller.label_molecules` (resumable: rerun the same command after an interruption).
"""
from __future__ import annotations

import argparse
import json


def add_label_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``label`` on the top-level sub-parsers; returns its parser (handler in ``args.func``)."""
    label = subparsers.add_parser(
        "label", help="GFN2-xTB energies/forces of QM9 conformers outside the BOOM test sets (resumable)",
        description="Generate off-equilibrium conformers (rattles, model-Hessian normal modes, xTB MD) of QM9 "
                    "molecules outside every BOOM ID/OOD test set and label them with GFN2-xTB (tblite). "
                    "Rerun the same command to resume an interrupted run.")
    label.add_argument("--out", required=True, help="output directory (chunk files, summary.json, failures.log)")
    label.add_argument("--n-molecules", type=int, default=8000, help="molecules to label (default 8000)")
    label.add_argument("--conformers-per-molecule", type=int, default=7,
                       help="conformers per molecule (default 7: 2 rattle, 2 normal-mode, 2 MD, 1 equilibrium)")
    label.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    label.add_argument("--seed", type=int, default=0, help="seed of the molecule draw and conformers (default 0)")
    label.add_argument("--chunk-size", type=int, default=100, help="molecules per chunk file (default 100)")
    label.add_argument("--qm9-cache", help="QM9 cache directory (default $MFTCALC_CACHE or ~/.cache/mftcalc)")
    label.add_argument("--splits", help="BOOM split file of the eight properties (default: compute the splits)")
    label.add_argument("--split-seed", type=int, default=0,
                       help="seed of the BOOM ID-test draw when computing the splits (default 0)")
    label.set_defaults(func=run_label)
    return label


def run_label(args: argparse.Namespace) -> int:
    """Select the molecules and label them; prints where the data went and the summary."""
    from mftcalc.data.boom import boom_splits, load_splits, test_union
    from mftcalc.data.qm9 import QM9_PROPERTIES, load_qm9
    from mftcalc.labelling.labeller import label_molecules, select_molecules

    dataset = load_qm9(cache_dir=args.qm9_cache)
    splits = load_splits(args.splits) if args.splits else boom_splits(dataset, list(QM9_PROPERTIES),
                                                                       seed=args.split_seed)
    missing = sorted(set(QM9_PROPERTIES) - set(splits))
    if missing:
        raise SystemExit(f"{args.splits}: no split for {missing}; write all eight with "
                         "`mftcalc data qm9 --property all --splits-out FILE`")
    excluded = test_union(splits)
    try:
        chosen = select_molecules(dataset.qm9_index, excluded, args.n_molecules, args.seed)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    print(f"QM9: {len(dataset):,} molecules, {excluded.size:,} in an ID/OOD test set of the eight BOOM splits "
          f"(excluded); labelling {chosen.size:,} x {args.conformers_per_molecule} conformers into {args.out}")
    molecules = dataset.structures(dataset.rows(chosen), properties=[])
    summary = label_molecules(molecules, args.out, conformers_per_molecule=args.conformers_per_molecule,
                              workers=args.workers, chunk_size=args.chunk_size, seed=args.seed, exclude=excluded)
    print(json.dumps(summary, indent=1))
    return 0
