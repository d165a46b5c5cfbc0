"""The ``mftcalc data`` sub-command: QM9 BOOM splits and MatBench folds, printed as size/range tables.

``mftcalc data qm9 --property P [--summary] [--cache-dir D] [--splits FILE] [--splits-out FILE] [--seed S]
[--export DIR [--parts id_test,ood_test]]``
``mftcalc data matbench DATASET --folds KIND --path DIR [--per-fold]``

Each sub-command stores its handler as ``args.func`` (``func(args) -> int`` exit status).
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import numpy as np


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data`` (with ``qm9`` and ``matbench``) on the top-level sub-parsers; returns the ``data`` parser."""
    from mftcalc.data.matbench import FOLD_KINDS, MATBENCH_DATASETS
    from mftcalc.data.qm9 import QM9_PROPERTIES

    data = subparsers.add_parser("data", help="inspect datasets and their splits",
                                 description="Inspect QM9 BOOM splits and MatBench folds.")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="{qm9,matbench}")
    qm9 = sub.add_parser("qm9", help="BOOM OOD splits of QM9 (from the qm9pack CSVs, cached)")
    qm9.add_argument("--property", required=True, choices=[*QM9_PROPERTIES, "all"],
                     help="property to split on, or 'all' for the eight splits")
    qm9.add_argument("--summary", action="store_true", help="also print a summary of the whole dataset")
    qm9.add_argument("--cache-dir", help="QM9 cache directory (default $MFTCALC_CACHE or ~/.cache/mftcalc)")
    qm9.add_argument("--splits-out", help="write the split(s) as JSON of QM9 indices (.json or .json.gz)")
    qm9.add_argument("--seed", type=int, default=0, help="seed of the validation draw from BOOM's training set (the OOD and ID sets are BOOM's: no seed)")
    qm9.add_argument("--splits", help="use the splits saved in this file (e.g. data/boom_splits.json.gz, the ones "
                     "every bench config names) instead of computing them")
    qm9.add_argument("--export", metavar="DIR",
                     help="write each split part as DIR/qm9_<property>_<part>.extxyz.gz: the QM9 geometries "
                     "(Å) with the property in its unit, ready for `mftcalc evaluate MODEL FILE` or `mftcalc "
                     "predict`")
    qm9.add_argument("--parts", default="id_test,ood_test",
                     help="comma list of the parts to export (train, val, id_test, ood_test; default: the two "
                     "test sets)")
    qm9.set_defaults(func=run_qm9)
    mb = sub.add_parser("matbench", help="MatBench folds (5 random or 50 OOD) with sizes and target ranges")
    mb.add_argument("dataset", choices=list(MATBENCH_DATASETS))
    mb.add_argument("--folds", required=True, choices=list(FOLD_KINDS), help="fold kind")
    mb.add_argument("--path", required=True, help="directory with <dataset>.extxyz.gz and the fold files")
    mb.add_argument("--per-fold", action="store_true", help="one line per fold even for the 50 OOD folds")
    mb.set_defaults(func=run_matbench)
    return data


def run_qm9(args: argparse.Namespace) -> int:
    """Compute (and optionally save) BOOM splits of QM9 and print their sizes and property ranges."""
    from mftcalc.data.boom import boom_splits, save_splits, test_union
    from mftcalc.data.qm9 import QM9_PROPERTIES, load_qm9

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in ("train", "val", "id_test", "ood_test")]
    if unknown:
        raise SystemExit(f"--parts: unknown parts {unknown}; choose from train, val, id_test, ood_test")
    names = list(QM9_PROPERTIES) if args.property == "all" else [args.property]
    if args.splits:
        from mftcalc.data.boom import load_splits
        saved = load_splits(args.splits)
        missing = [n for n in names if n not in saved]
        if missing:
            raise SystemExit(f"{args.splits} has no split of {missing} (it has {sorted(saved)}); compute them "
                             "without --splits")
    dataset = load_qm9(cache_dir=args.cache_dir)
    if args.summary:
        _print_qm9_summary(dataset)
    splits = ({n: saved[n] for n in names} if args.splits else boom_splits(dataset, names, seed=args.seed))
    for name, split in splits.items():
        values = dataset.property(name)
        origin = f"from {args.splits}" if args.splits else f"seed {args.seed}"
        print(f"\nBOOM split of {name} ({QM9_PROPERTIES[name]}), {origin}")
        _print_table(["split", "size", "min", "max", "mean"],
                     [[part, *_size_range(values[dataset.rows(idx)])] for part, idx in split.parts().items()])
    if len(splits) > 1:
        print(f"\nID or OOD test molecules over these {len(splits)} splits: {test_union(splits).size:,}")
    if args.splits_out:
        save_splits(splits, args.splits_out)
        print(f"wrote {args.splits_out}")
    if args.export:
        _export_parts(dataset, splits, parts, args.export)
    return 0


def _export_parts(dataset, splits: Dict, parts: List[str], directory: str) -> None:
    """Write ``directory/qm9_<property>_<part>.extxyz.gz`` for every split and part (the property only)."""
    from pathlib import Path

    from mftcalc.data.io import write_extxyz

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, split in splits.items():
        for part in parts:
            path = out / f"qm9_{name}_{part}.extxyz.gz"
            write_extxyz(dataset.structures(dataset.rows(split.parts()[part]), properties=[name]), path)
            print(f"wrote {path}: {split.parts()[part].size:,} molecules with {name}")


def run_matbench(args: argparse.Namespace) -> int:
    """Print the folds of a MatBench dataset: sizes and target range of each (OOD folds summarised)."""
    from mftcalc.data.matbench import MATBENCH_DATASETS, load_folds, load_matbench, targets

    meta = MATBENCH_DATASETS[args.dataset]
    values = targets(load_matbench(args.dataset, args.path), args.dataset)
    if values.size != meta.n_rows:
        raise SystemExit(f"{args.path}: {values.size:,} {args.dataset} structures, but the folds index the "
                         f"{meta.n_rows:,} MatBench rows; use the complete dataset file")
    folds = load_folds(args.dataset, args.folds, args.path)
    print(f"MatBench {args.dataset}: {values.size:,} structures, target {meta.property} ({meta.unit}): "
          f"min {values.min():.4g}, max {values.max():.4g}, mean {values.mean():.4g}")
    print(f"{args.folds} folds: {len(folds)}; target range of each test set")
    rows = [[f.index, f"{f.train.size:,}", f"{f.val.size:,}", *_size_range(values[f.test])] for f in folds]
    header = ["fold", "train", "val", "test", "test min", "test max", "test mean"]
    if args.per_fold or len(folds) <= 10:
        _print_table(header, rows)
        return 0
    sizes = {part: np.array([getattr(f, part).size for f in folds]) for part in ("train", "val", "test")}
    stats = {"test min": [values[f.test].min() for f in folds], "test max": [values[f.test].max() for f in folds],
             "test mean": [values[f.test].mean() for f in folds]}
    summary = [[part, f"{s.min():,}", f"{int(np.median(s)):,}", f"{s.max():,}"] for part, s in sizes.items()]
    summary += [[name, f"{min(v):.4g}", f"{np.median(v):.4g}", f"{max(v):.4g}"] for name, v in stats.items()]
    _print_table(["over folds", "lowest", "median", "highest"], summary)
    print("(use --per-fold for one line per fold)")
    return 0


def _print_qm9_summary(dataset) -> None:
    from mftcalc.data.qm9 import QM9_PROPERTIES

    n_atoms = dataset.n_atoms
    elements, counts = np.unique(dataset.numbers, return_counts=True)
    print(f"QM9: {len(dataset):,} molecules, {n_atoms.sum():,} atoms ({n_atoms.min()}-{n_atoms.max()} per molecule), "
          f"atoms per element Z: " + ", ".join(f"{z}: {c:,}" for z, c in zip(elements, counts)))
    _print_table(["property", "unit", "min", "max", "mean"],
                 [[n, QM9_PROPERTIES[n], *_size_range(dataset.property(n))[1:]] for n in dataset.property_names])


def _size_range(values: np.ndarray) -> List[str]:
    """[size, min, max, mean] of ``values`` as strings (``-`` for an empty set)."""
    if values.size == 0:
        return ["0", "-", "-", "-"]
    return [f"{values.size:,}", f"{values.min():.6g}", f"{values.max():.6g}", f"{values.mean():.6g}"]


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells: List[List[str]] = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths: Dict[int, int] = {i: max(len(r[i]) for r in cells) for i in range(len(header))}
    for k, r in enumerate(cells):
        print("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            print("  ".join("-" * widths[i] for i in range(len(header))))
