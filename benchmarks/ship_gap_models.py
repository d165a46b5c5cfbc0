"""Ship the protocol's gap models (issue 15, item 5): the best FT and MFT seeds of a bench folder become
``models/ft_gap.pt`` and ``models/mft_gap.pt`` (with the ``gap_pi90`` interval head calibrated on the validation set
where the cell's model predates it), then both are re-scored with the user-facing commands.

    python benchmarks/ship_gap_models.py checkpoints/protocol_gate --fraction 0.0078125

For each strategy the cell with the lowest validation MAE among the finished seeds (``results.json``) is copied.
Then, as a user would, the BOOM ID and OOD sets of the gap are exported from the committed splits
(``mftcalc data qm9 --property gap --splits data/boom_splits.json.gz --export DIR``) and each shipped model is
scored on them (``mftcalc evaluate MODEL DIR/qm9_gap_id_test.extxyz.gz DIR/qm9_gap_ood_test.extxyz.gz``). The table
(``benchmarks/results/shipped_gap_models.md``) puts the bench's own full-set RMSE beside the re-scored one; they
must agree (``--tolerance``, relative), else the script exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("id_test", "ood_test")


def best_cells(out_dir: Path, fraction: str, task: str = "qm9:gap") -> dict:
    """``{strategy: (key, result)}`` of the lowest-validation-MAE finished seed of FT and MFT."""
    results = json.loads((out_dir / "results.json").read_text())
    chosen = {}
    for strategy in ("ft", "mft"):
        cells = [(k, r) for k, r in results.items()
                 if not k.startswith("_") and k.startswith(f"{task}|{strategy}|") and k.endswith(f"|frac{fraction}")]
        if not cells:
            raise SystemExit(f"{out_dir}: no finished {strategy} cell of {task} at fraction {fraction}")
        chosen[strategy] = min(cells, key=lambda kr: kr[1]["val"]["mae"])
    return chosen


def record_benchmark(path: Path, key: str, result: dict, out_dir: Path) -> None:
    """Store the bench's full-set errors in the shipped model's metadata (``benchmark``; ``mftcalc info`` shows
    them, ``tests/integration/test_shipped_models.py`` re-scores against them)."""
    from mftcalc.model.checkpoint import load_model, save_model

    model = load_model(path)
    metadata = dict(model.metadata)
    metadata["benchmark"] = {"cell": key, "bench": str(out_dir), "splits": "data/boom_splits.json.gz",
                             "property": key.split("|")[0].split(":")[-1],
                             "steps": result.get("steps"), "n_train": result.get("n_train"),
                             **{part: result[part] for part in ("val", *PARTS)}}
    save_model(model, path, metadata)


def add_interval(path: Path, val: Path) -> None:
    """Give a model fine-tuned before fine-tuning fitted one the ``gap_pi90`` head: ``mftcalc calibrate`` on the
    validation set, as ``mftcalc finetune`` does (``benchmarks/prediction_intervals.py`` measures its coverage)."""
    from mftcalc.cli_calibrate import calibrate
    from mftcalc.model.checkpoint import read_checkpoint
    if "gap_pi90" in read_checkpoint(path)["metadata"].get("heads", {}):
        return
    calibrated = path.with_name(path.stem + ".calibrated.pt")
    calibrate(str(path), [str(val)], "gap", str(calibrated))
    calibrated.replace(path)


def rescore(model: Path, sets: Path) -> dict:
    """Errors per part from :func:`mftcalc.cli_evaluate.evaluate_files`, the function behind ``mftcalc evaluate``
    (the command a user runs), with its parity plots."""
    from mftcalc.cli_evaluate import evaluate_files

    files = {part: str(sets / f"qm9_gap_{part}.extxyz.gz") for part in PARTS}
    table = evaluate_files(str(model), list(files.values()), plot=str(sets / f"{model.stem}_parity.png"))
    return {part: table[path]["properties"]["gap"] for part, path in files.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="bench folder with results.json and cells/")
    parser.add_argument("--fraction", default="0.0078125", help="training fraction of the cells, as in their key")
    parser.add_argument("--models", default=str(REPO / "models"))
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative agreement bench vs re-score")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "shipped_gap_models.md"))
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    chosen = best_cells(out_dir, args.fraction)
    sets = Path(tempfile.mkdtemp(prefix="qm9_gap_sets_"))
    subprocess.run([sys.executable, "-m", "mftcalc", "data", "qm9", "--property", "gap", "--splits",
                    str(REPO / "data" / "boom_splits.json.gz"), "--export", str(sets), "--parts",
                    "val,id_test,ood_test"], check=True, capture_output=True)
    rows, worst = [], 0.0
    for strategy, (key, result) in chosen.items():
        source = out_dir / "cells" / key.replace("|", "__").replace(":", "_") / "model.pt"
        target = Path(args.models) / f"{strategy}_gap.pt"
        shutil.copy2(source, target)
        record_benchmark(target, key, result, out_dir)
        add_interval(target, sets / "qm9_gap_val.extxyz.gz")
        start = time.perf_counter()
        again = rescore(target, sets)
        wall = time.perf_counter() - start
        for part in PARTS:
            bench, user = result[part]["rmse"], again[part]["rmse"]
            worst = max(worst, abs(user - bench) / bench)
            rows.append(f"| `{target.relative_to(REPO) if target.is_relative_to(REPO) else target}` | "
                        f"`{key.replace('|', ' ')}` | "
                        f"{part} | {again[part]['n']:,} | {bench:.5f} | {user:.5f} | {again[part]['mae']:.5f} |")
        print(f"{strategy}: {key} -> {target} (re-scored in {wall:.0f} s)", flush=True)
    ratio = {part: chosen["mft"][1][part]["rmse"] / chosen["ft"][1][part]["rmse"] for part in PARTS}
    lines = ["# Shipped gap models: FT and MFT, re-scored on BOOM's ID and OOD sets", "",
             f"`python benchmarks/ship_gap_models.py {args.out_dir} --fraction {args.fraction}`: the best seed "
             "(validation MAE) of each strategy copied from the bench, then scored as a user would:", "",
             "    mftcalc data qm9 --property gap --splits data/boom_splits.json.gz --export sets",
             "    mftcalc evaluate models/mft_gap.pt sets/qm9_gap_id_test.extxyz.gz sets/qm9_gap_ood_test.extxyz.gz",
             "    mftcalc evaluate models/ft_gap.pt sets/qm9_gap_id_test.extxyz.gz sets/qm9_gap_ood_test.extxyz.gz", "",
             "| model | bench cell | set | molecules | RMSE (bench, Hartree) | RMSE (mftcalc evaluate) | MAE (mftcalc "
             "evaluate) |", "|---|---|---|---:|---:|---:|---:|", *rows, "",
             f"MFT/FT RMSE: ID {ratio['id_test']:.3f}, OOD {ratio['ood_test']:.3f}. Largest relative difference "
             f"between the bench's figure and the re-score: {worst:.1e} (tolerance {args.tolerance:g})."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if worst > args.tolerance:
        raise SystemExit(f"re-scored RMSE differs from the bench's by {worst:.1e} > {args.tolerance:g}")


if __name__ == "__main__":
    main()
