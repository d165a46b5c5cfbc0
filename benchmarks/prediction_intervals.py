"""Do the shipped gap models' prediction intervals hold? Coverage and width on BOOM's ID and OOD test sets.

    OMP_NUM_THREADS=1 python benchmarks/prediction_intervals.py [--write]

Three ways to put a 90 % interval around a fine-tuned model's gap, all calibrated on the same BOOM validation
set (6,042 ID molecules the models were not trained on), measured in the same run:

- ``gaussian``: ŷ ± 1.645 · RMSE(val), the textbook interval that assumes normal, equal errors everywhere;
- ``conformal``: ŷ ± q, q the split-conformal quantile of |y − ŷ| on val (constant width);
- ``conformal × ood_score`` (what ``mftcalc finetune`` and ``mftcalc calibrate`` ship as ``gap_pi90``):
  ŷ ± q · ood_score, q the split-conformal quantile of |y − ŷ| / ood_score.

The second table measures the applicability limit (``ModelHandle.applicability_limit``: the largest ood_score of a
training structure against the others, above which the calculators warn): the fraction of each set beyond it and
the mean absolute error there against the rest.

The table gives coverage (the fraction of test molecules whose true gap lies in the interval; nominal 0.90) and
the mean half-width on the ID test set (5,983 molecules) and on the OOD test set (the 10,000 lowest-density
gaps); the plot, coverage against nominal level from 0.5 to 0.95. ``--write`` calibrates each model's
``gap_pi90`` head on val (``mftcalc.model.intervals.calibrate_interval``) and rewrites the shipped checkpoints.
The sets are exported once from the committed splits into ``--sets`` (``mftcalc data qm9 ... --export``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PARTS = ("val", "id_test", "ood_test")
LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def export_sets(sets: Path) -> None:
    """The BOOM val, ID and OOD sets of the gap as labelled extxyz (the command a user runs)."""
    if all((sets / f"qm9_gap_{p}.extxyz.gz").exists() for p in PARTS):
        return
    subprocess.run([sys.executable, "-m", "mftcalc.cli", "data", "qm9", "--property", "gap", "--splits",
                    str(REPO / "data" / "boom_splits.json.gz"), "--export", str(sets), "--parts", ",".join(PARTS)],
                   check=True)


def predictions(model_path: Path, structures: dict) -> dict:
    """``{part: (truth, predicted, ood_score)}`` [n] each, gap in Hartree."""
    from mftcalc.model.checkpoint import load_model
    from mftcalc.model.inference import predict_structures
    model = load_model(model_path)
    out = {}
    for part, items in structures.items():
        rows = predict_structures(model, items, compute_forces=False, compute_stress=False, progress=True)
        out[part] = (np.array([s.properties["gap"] for s in items]), np.array([float(r["gap"]) for r in rows]),
                     np.array([float(r["ood_score"]) for r in rows]))
    return out


def half_widths(method: str, level: float, data: dict) -> dict:
    """``{part: half-width [n]}`` of one method at one nominal level, calibrated on ``data['val']``."""
    from mftcalc.model.intervals import conformal_quantile
    truth, pred, score = data["val"]
    resid = np.abs(truth - pred)
    if method == "gaussian":
        from scipy.stats import norm
        width = float(norm.ppf(0.5 + level / 2)) * float(np.sqrt(np.mean(resid ** 2)))   # two-sided normal
        return {p: np.full(len(d[0]), width) for p, d in data.items()}
    if method == "conformal":
        q = conformal_quantile(resid, level)
        return {p: np.full(len(d[0]), q) for p, d in data.items()}
    q = conformal_quantile(resid / score, level)
    return {p: q * d[2] for p, d in data.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["models/mft_gap.pt", "models/ft_gap.pt"])
    parser.add_argument("--sets", default="sets", help="folder of the exported QM9 gap sets")
    parser.add_argument("--write", action="store_true", help="calibrate and rewrite each model's gap_pi90 head")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "prediction_intervals"))
    args = parser.parse_args()
    from scipy.stats import spearmanr
    from mftcalc.data.io import read_structures
    sets = Path(args.sets)
    export_sets(sets)
    structures = {p: read_structures(sets / f"qm9_gap_{p}.extxyz.gz") for p in PARTS}
    methods = ("gaussian", "conformal", "conformal × ood_score")
    lines = ["| model | interval (90 %) | ID coverage | ID mean half-width (Ha) | OOD coverage | "
             "OOD mean half-width (Ha) |", "|---|---|---|---|---|---|"]
    curves, notes = {}, []
    limit_rows = ["| model | limit | set | beyond the limit | MAE beyond (Ha) | MAE within (Ha) | ratio |",
                  "|---|---:|---|---:|---:|---:|---:|"]
    started = time.perf_counter()
    for model_path in args.models:
        name = Path(model_path).stem
        data = predictions(REPO / model_path, structures)
        for method in methods:
            for level in LEVELS:
                hw = half_widths(method, level, data)
                curves[(name, method, level)] = {p: float(np.mean(np.abs(d[0] - d[1]) <= hw[p]))
                                                 for p, d in data.items()}
                if level == 0.9:
                    cov = curves[(name, method, level)]
                    lines.append(f"| `{name}` | {method} | {cov['id_test']:.3f} | {hw['id_test'].mean():.4f} | "
                                 f"{cov['ood_test']:.3f} | {hw['ood_test'].mean():.4f} |")
        rho = {p: spearmanr(np.abs(data[p][0] - data[p][1]), data[p][2])[0] for p in ("id_test", "ood_test")}
        med = {p: float(np.median(data[p][2])) for p in ("id_test", "ood_test")}
        notes.append(f"- `{name}`: Spearman ρ(|error|, ood_score) {rho['id_test']:.2f} (ID), {rho['ood_test']:.2f} "
                     f"(OOD); median ood_score {med['id_test']:.2f} (ID), {med['ood_test']:.2f} (OOD)")
        limit_rows.extend(limit_table(name, REPO / model_path, data))
        if args.write:
            from mftcalc.model.checkpoint import load_model, save_model
            from mftcalc.model.intervals import calibrate_interval
            model = load_model(REPO / model_path, dtype=None)
            metadata = dict(model.metadata)
            metadata["heads"] = dict(metadata["heads"])
            record = calibrate_interval(model, structures["val"], "gap", 0.9, metadata=metadata,
                                        source="BOOM's gap validation set: part val of data/boom_splits.json.gz")
            from mftcalc.model.intervals import conformal_quantile
            truth, pred, score = data["val"]
            q_table = conformal_quantile(np.abs(truth - pred) / score, 0.9)
            assert abs(record["q"] - q_table) <= 1e-6 * q_table, f"head q {record['q']} vs table q {q_table}"
            save_model(model, REPO / model_path, metadata)
            notes.append(f"- wrote `{model_path}`: head `gap_pi90`, q = {record['q']:.5f} Ha per unit of ood_score")
    wall = time.perf_counter() - started
    text = "\n".join(["# Prediction intervals of the shipped gap models", "",
                      "`OMP_NUM_THREADS=1 python benchmarks/prediction_intervals.py" + (" --write" if args.write
                                                                                         else "") + "`", "",
                      "Calibrated on BOOM's gap validation set (6,042 ID molecules); nominal coverage 0.90.", "",
                      *lines, "", "Applicability limit (the calculators' warning):", "", *limit_rows, "",
                      *notes, f"- {wall / 60:.1f} min on one core (predictions of 3 sets × "
                      f"{len(args.models)} models)", ""])
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    print(text)
    plot(curves, args.models, methods, out.with_suffix(".png"))
    return 0


def limit_table(name: str, model_path: Path, data: dict) -> list:
    """Rows of the limit table: per set, how many molecules lie beyond the model's applicability limit and the
    mean absolute error of the gap beyond it and within it."""
    from mftcalc.calculators.model_handle import ModelHandle
    limit = ModelHandle.load(model_path).applicability_limit("ood_score")
    rows = []
    for part in PARTS:
        truth, pred, score = data[part]
        error, beyond = np.abs(truth - pred), score > limit
        out = error[beyond].mean() if beyond.any() else float("nan")
        rows.append(f"| `{name}` | {limit:.2f} | {part} | {beyond.sum():,} of {len(score):,} "
                    f"({100 * beyond.mean():.2f} %) | {out:.4f} | {error[~beyond].mean():.4f} | "
                    f"{out / error[~beyond].mean():.2f} |")
    from ase import Atoms
    from ase.build import molecule
    from mftcalc import predict
    odd = {"CH4": molecule("CH4"), "C (one atom)": Atoms("C"), "C60": molecule("C60")}   # unlike QM9's molecules
    found = predict(list(odd.values()), model_path, properties=["gap", "ood_score"], dataset="xtb_qm9")
    rows.append(f"| `{name}` | {limit:.2f} | off QM9: " + ", ".join(
        f"{k} ood_score {r['ood_score']:.3g}, gap {r['gap']:.3f} Ha" for k, r in zip(odd, found)) + " | | | | |")
    return rows


def plot(curves: dict, models: list, methods: tuple, path: Path) -> None:
    """Coverage against nominal level, ID and OOD, one panel per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4.2), squeeze=False)
    for ax, model_path in zip(axes[0], models):
        name = Path(model_path).stem
        ax.plot(LEVELS, LEVELS, color="grey", lw=0.8, ls=":", label="nominal")
        for method, colour in zip(methods, ("tab:grey", "tab:blue", "tab:red")):
            for part, style in (("id_test", "-"), ("ood_test", "--")):
                ax.plot(LEVELS, [curves[(name, method, lv)][part] for lv in LEVELS], style, color=colour,
                        marker="o", ms=3, label=f"{method}, {part.replace('_test', '')}")
        ax.set(title=name, xlabel="nominal coverage", ylabel="measured coverage", ylim=(0.0, 1.0))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
