"""Does a better-pretrained prior carry more of the gap into its frozen features? (issue 15: the gate's premise)

    python benchmarks/prior_ladder.py                                   # ≈ 10 min on one core

The gate asks whether a frozen prior's linear probe lies below fine-tuning's OOD–ID line. It did not on the
step-87,016 prior. This script asks the question along the pretraining history, which is in git: the committed
training states of ``checkpoints/pretrain/state.pt`` at several steps (all one architecture), plus the same
network at its random initialisation (step 0) as the floor. For each prior and each gap training fraction
(1/128, 1/32; the bench's seed-0 subsets of the BOOM train split) it

1. computes the mean-pooled backbone node features (``mftcalc.model.applicability.pooled_features``, [B, 64]) of
   the train, ID-test (5,983) and OOD-test (10,000) molecules (QM9 DFT geometries);
2. fits two frozen probes on train: a least-squares fit on element fractions with an intercept (the composition
   baseline) and, on its residual, scikit-learn's ``RidgeCV`` (linear probe) and an RBF
   ``KernelRidge`` with alpha and gamma chosen by 5-fold ``GridSearchCV`` (nonlinear probe);
3. reports ID and OOD RMSE (Hartree), beside the bench's trained LP and FT cells on the step-87,016 prior
   (``checkpoints/protocol_gate``; full sets, mean over seeds). The plot draws FT's OOD–ID line (fitted on FT's
   checkpoint curves by ``benchmarks/mft_protocol.py``) solid over the ID range FT's curves cover and dotted
   beyond. No residual against that line is tabulated: the line runs through all of FT's checkpoints, the early
   ones included, and beyond their ID range even the composition baseline, which sees no structure, falls 3–9 %
   "below" its extrapolation. The composition rows do not depend on the prior; they are listed once, under the
   random initialisation.

The held-out xTB force MAE of each prior is read from ``checkpoints/pretrain/val.csv`` (the validation nearest
below the state's step; the validation set itself changed when the third cycle started at step 44,200).
Caveat: states before step 44,200 were trained on xTB conformers chosen against the old (void) splits, so some
of today's OOD molecules' conformers (forces, not gap labels) were in their training data.

``--models FILE ...`` adds exported priors of the same architecture (their pretraining chain's steps, their card's
force MAE), e.g. the shipped ``models/pretrained.pt``; ``--report`` names the Markdown file (the plot goes beside it).

Writes ``benchmarks/results/prior_ladder.md`` and ``prior_ladder.png``.
"""
from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pretrain_forecast import COLUMN, read_validations  # noqa: E402  (a sibling script)

STATE = "checkpoints/pretrain/state.pt"
# commits whose checkpoints/pretrain/state.pt is the pretraining state at a step (see `git log -- STATE`)
DEFAULT_REVISIONS = ("27086a3", "cd10e06", "e146da5", "2ebbddd", "8b2a08a")   # steps 14,000 ... 87,016
FRACTIONS = (0.0078125, 0.03125)


def state_weights(revision: str) -> tuple[int, Dict[str, torch.Tensor]]:
    """(step, model state dict) of the committed training state at ``revision``."""
    with tempfile.NamedTemporaryFile(suffix=".pt") as fh:
        fh.write(subprocess.run(["git", "show", f"{revision}:{STATE}"], cwd=REPO, check=True,
                                capture_output=True).stdout)
        fh.flush()
        state = torch.load(fh.name, map_location="cpu", weights_only=False)
    if state.get("format") != "mftcalc-train-state":
        raise SystemExit(f"{revision}:{STATE} is not an mftcalc training state")
    return int(state["step"]), state["model"]


def force_mae_at(step: int, validations: pd.DataFrame) -> float:
    """Held-out xTB force MAE (eV/Å) of the last validation at or below ``step``; nan before the first one."""
    rows = validations[validations["step"] <= step]
    return float(rows.iloc[-1][COLUMN]) if len(rows) else float("nan")


def composition(structures: Sequence) -> np.ndarray:
    """[B, 119] element fractions (:func:`mftcalc.model.fitting.element_counts` over the atom count)."""
    from mftcalc.model.fitting import element_counts
    return element_counts(structures) / np.array([[len(s.numbers)] for s in structures], dtype=float)


def probe(features: Dict[str, np.ndarray], comps: Dict[str, np.ndarray], y: Dict[str, np.ndarray]) -> Dict:
    """ID/OOD RMSE of the composition baseline and the ridge and kernel-ridge probes on its residual."""
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler

    base = LinearRegression().fit(comps["train"], y["train"])
    residual = {k: y[k] - base.predict(comps[k]) for k in y}
    scaler = StandardScaler().fit(features["train"])
    x = {k: scaler.transform(v) for k, v in features.items()}
    ridge = RidgeCV(alphas=np.logspace(-4, 4, 17)).fit(x["train"], residual["train"])
    krr = GridSearchCV(KernelRidge(kernel="rbf"), {"alpha": np.logspace(-6, 0, 7),
                                                   "gamma": np.logspace(-4, 0, 5) / x["train"].shape[1]},
                       cv=5, scoring="neg_mean_squared_error").fit(x["train"], residual["train"])
    out = {}
    for name, model in (("composition", None), ("ridge", ridge), ("kernel ridge", krr)):
        for part in ("id_test", "ood_test"):
            pred = model.predict(x[part]) if model is not None else 0.0
            out[(name, part)] = float(np.sqrt(np.mean((residual[part] - pred) ** 2)))
    return out


def bench_reference(bench_dir: Path) -> Dict[float, Dict]:
    """Per gap fraction: FT's OOD–ID line (intercept, slope) and the ID range of FT's checkpoint curves
    (benchmarks/mft_protocol.py), and the full-set (ID, OOD) RMSE of each strategy's finished cells."""
    from mft_protocol import analyse
    out: Dict[float, Dict] = {}
    for cell in analyse(bench_dir):
        task, frac = cell["group"].split()
        if task != "qm9:gap":
            continue
        entry = out.setdefault(float(frac.removeprefix("frac")), {"cells": {}})
        entry["cells"].setdefault(cell["strategy"], []).append(
            (cell["result"]["id_test"]["rmse"], cell["result"]["ood_test"]["rmse"]))
        if cell["strategy"] == "ft":
            entry["line"] = cell["line"]
            ids = cell["curve"]["curve/id_test/rmse"]
            low, high = entry.get("id_range", (np.inf, -np.inf))
            entry["id_range"] = (min(low, float(np.nanmin(ids))), max(high, float(np.nanmax(ids))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", nargs="*", default=list(DEFAULT_REVISIONS))
    parser.add_argument("--models", nargs="*", default=[],
                        help="exported model files of the same architecture as further priors (e.g. "
                             "models/pretrained.pt); their step is the whole pretraining chain's, their xTB force "
                             "MAE the one their card records")
    parser.add_argument("--skeleton", default="checkpoints/protocol_gate/prior/pretrained.pt",
                        help="a model file of the same architecture; the states' weights are loaded into it")
    parser.add_argument("--bench-dir", default="checkpoints/protocol_gate")
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "prior_ladder.md"))
    args = parser.parse_args()
    torch.manual_seed(0)

    from mftcalc.experiments.config import TaskSpec
    from mftcalc.experiments.tasks import load_task
    from mftcalc.model.applicability import pooled_features
    from mftcalc.model.card import pretraining_lineage
    from mftcalc.model.checkpoint import load_model

    started = time.time()
    reference = bench_reference(REPO / args.bench_dir)
    cache: Dict = {}
    tasks = {f: load_task(TaskSpec(kind="qm9", property="gap"), f, None, 0, cache,
                          qm9_splits=str(REPO / "data" / "boom_splits.json.gz")) for f in FRACTIONS}
    first = tasks[FRACTIONS[0]]
    tests = {"id_test": first.test_parts["id_test"], "ood_test": first.test_parts["ood_test"]}
    # per fraction, what does not depend on the prior: element fractions and labels of train and test sets
    inputs = {}
    for fraction, task in tasks.items():
        parts = {"train": task.train, **tests}
        inputs[fraction] = ({k: composition(v) for k, v in parts.items()},
                            {k: np.array([s.properties["gap"] for s in v]) for k, v in parts.items()})
    validations = read_validations(REPO / "checkpoints" / "pretrain" / "val.csv")
    skeleton = load_model(REPO / args.skeleton)
    priors: List[tuple] = [("random init", 0, None)]
    for revision in args.revisions:
        step, weights = state_weights(revision)
        priors.append((revision, step, weights))

    for path in args.models:
        loaded = load_model(REPO / path)
        card = loaded.metadata.get("pretraining") or {}
        chain_steps = sum(run["steps"] for run in pretraining_lineage(card))
        priors.append((Path(path).name, chain_steps, loaded))

    rows = []
    for label, step, weights in priors:
        if isinstance(weights, torch.nn.Module):      # an exported model file: its card holds its force MAE
            model = weights
            f_mae = float(weights.metadata["pretraining"]["validation"].get(COLUMN, float("nan")))
        else:
            model = copy.deepcopy(skeleton)
            if weights is None:                       # the same architecture, freshly initialised (seed 0)
                model.backbone.load_state_dict(type(skeleton.backbone)(skeleton.config.backbone).state_dict())
            else:
                model.load_state_dict(weights)
            f_mae = force_mae_at(step, validations) if step else float("nan")
        model.eval()
        test_features = {k: pooled_features(model, v) for k, v in tests.items()}
        for fraction, task in tasks.items():
            features = {"train": pooled_features(model, task.train), **test_features}
            scores = probe(features, *inputs[fraction])
            for name in ("composition", "ridge", "kernel ridge"):
                if name == "composition" and label != "random init":
                    continue
                rows.append({"prior": f"{label} (step {step:,})", "step": step, "f_mae": f_mae,
                             "fraction": fraction, "probe": name, "id": scores[(name, "id_test")],
                             "ood": scores[(name, "ood_test")]})
        print(f"{label} step {step}: done ({time.time() - started:.0f} s)", flush=True)

    frame = pd.DataFrame(rows)
    out = ["# Frozen-feature probes along the pretraining history (issue 15, the gate's premise)", "",
           f"`{' '.join(['python', 'benchmarks/prior_ladder.py', *sys.argv[1:]])}` ({time.time() - started:.0f} s, one core). Gap (Hartree), BOOM split, "
           "seed-0 training subsets, full ID (5,983) and OOD (10,000) test sets; xTB force MAE as logged in "
           "`checkpoints/pretrain/val.csv` (a model file's: as its card records it). Last rows: the bench's trained cells on the step-87,016 prior "
           f"(`{args.bench_dir}`, 20,000 steps, mean over seeds).", "",
           "| fraction | prior | xTB force MAE (eV/Å) | probe | ID RMSE | OOD RMSE |",
           "|---|---|---:|---|---:|---:|"]
    for r in rows:
        out.append(f"| 1/{round(1 / r['fraction'])} | {r['prior']} | {r['f_mae']:.3f} | {r['probe']} | "
                   f"{r['id']:.4f} | {r['ood']:.4f} |")
    for fraction in FRACTIONS:
        for strategy, pairs in sorted(reference.get(fraction, {}).get("cells", {}).items()):
            ids, oods = np.mean(pairs, axis=0)
            out.append(f"| 1/{round(1 / fraction)} | step 87,016, bench | 0.161 | {strategy.upper()} trained "
                       f"({len(pairs)} seed{'s' if len(pairs) > 1 else ''}) | {ids:.4f} | {oods:.4f} |")
    text = "\n".join(out) + "\n"
    Path(args.report).write_text(text)
    print(text)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(FRACTIONS), figsize=(5.5 * len(FRACTIONS), 4.2))
    for ax, fraction in zip(np.atleast_1d(axes), FRACTIONS):
        part = frame[(frame["fraction"] == fraction) & (frame["probe"] != "composition")]
        for name, marker in (("ridge", "o"), ("kernel ridge", "s")):
            sub = part[part["probe"] == name].sort_values("step")
            ax.plot(sub["id"], sub["ood"], marker=marker, ls="-", label=name)
            for _, r in sub.iterrows():
                ax.annotate(f"{r['step'] // 1000}k", (r["id"], r["ood"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ref = reference.get(fraction, {})
        if "line" in ref:
            a, b = ref["line"]
            low, high = ref["id_range"]
            xs = np.linspace(low, high, 20)
            ax.plot(xs, a + b * xs, "k-", lw=1, label="FT's OOD–ID line (its curves' range)")
            xs = np.linspace(high, frame["id"].max() * 1.05, 20)
            ax.plot(xs, a + b * xs, "k:", lw=1, label="extrapolated")
        for strategy, pairs in sorted(ref.get("cells", {}).items()):
            pts = np.array(pairs)
            ax.plot(pts[:, 0], pts[:, 1], "x", ms=7, label=f"bench {strategy.upper()} (step 87,016)")
        ax.set_title(f"gap, train fraction 1/{round(1 / fraction)}")
        ax.set_xlabel("ID RMSE (Ha)")
        ax.set_ylabel("OOD RMSE (Ha)")
        ax.legend(fontsize=8)
    fig.suptitle("Frozen-feature probes along pretraining (labels: pretraining step)", fontsize=10)
    fig.tight_layout()
    fig.savefig(Path(args.report).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
