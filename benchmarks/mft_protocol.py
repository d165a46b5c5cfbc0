"""Issue 15's figure of merit: each strategy's OOD error at matched ID, from a protocol bench directory.

For every (task, training fraction) of ``<out_dir>/results.json`` (written by ``mftcalc bench`` with
``curve_probe`` > 0, e.g. ``configs/protocol/*.yaml``):

1. The OOD–ID line of FT: a least-squares line ``OOD = a + b · ID`` through every checkpoint of FT's curves
   (``curve/id_test/rmse``, ``curve/ood_test/rmse`` in each cell's ``val.csv``, fixed 2,000-molecule probes,
   all FT seeds).
2. Each cell's matched-ID residual: ``(OOD − line(ID)) / line(ID)`` at its best-on-validation checkpoint (probe
   values) and for its final full-set ID/OOD RMSE (the line fitted on probes). Negative = better OOD than FT
   at the same ID. The paper's claim is about −15 % for MFT.
3. Overfitting: train/val probe RMSE at the best checkpoint and at the end (FT overfits when < ~0.7).

Prints a Markdown table (paper layout plus residual, drift W1, force-field retention) and writes it to
``benchmarks/results/mft_protocol_<name>.md``, with the plots ``..._curves.png`` (OOD vs ID trajectories with
FT's line, and probe learning curves) beside it.

    python benchmarks/mft_protocol.py checkpoints/protocol_gate [--name gate]
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

PARTS = ("train", "val", "id_test", "ood_test")


def read_curve(cell_dir: Path) -> Dict[str, np.ndarray]:
    """Columns of a cell's ``val.csv`` as float arrays (empty when the cell logged no curves)."""
    path = cell_dir / "val.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "curve/id_test/rmse" not in rows[-1]:
        return {}
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]) for k in rows[-1]}


def cell_dir(out_dir: Path, key: str) -> Path:
    return out_dir / "cells" / key.replace("|", "__").replace(":", "_")


def fit_line(ids: np.ndarray, oods: np.ndarray) -> Tuple[float, float]:
    """Least-squares ``OOD = a + b · ID``; returns (a, b)."""
    b, a = np.polyfit(ids, oods, 1)
    return float(a), float(b)


def residual(line: Tuple[float, float], id_rmse: float, ood_rmse: float) -> float:
    """Relative distance of (ID, OOD) from the line at the same ID: negative is below (better OOD)."""
    expected = line[0] + line[1] * id_rmse
    return (ood_rmse - expected) / expected


def analyse(out_dir: Path, reference: str = "ft") -> List[Dict]:
    """One record per cell with curves: strategy, seed, group, best-step and final values, residuals."""
    results = json.loads((out_dir / "results.json").read_text())
    cells = []
    for key, r in results.items():
        if key.startswith("_"):
            continue
        task, strategy, seed, frac = key.split("|")
        curve = read_curve(cell_dir(out_dir, key))
        if not curve:
            continue
        val_key = next(k for k in curve if k.startswith("val/") and k.endswith("/mae"))
        best = int(np.nanargmin(curve[val_key]))
        cells.append({"key": key, "group": f"{task} {frac}", "strategy": strategy, "seed": seed, "curve": curve,
                      "best": best, "result": r})
    groups = sorted({c["group"] for c in cells})
    for group in groups:
        ref = [c for c in cells if c["group"] == group and c["strategy"] == reference]
        if not ref:
            continue
        ids = np.concatenate([c["curve"]["curve/id_test/rmse"] for c in ref])
        oods = np.concatenate([c["curve"]["curve/ood_test/rmse"] for c in ref])
        line = fit_line(ids, oods)
        for c in cells:
            if c["group"] != group:
                continue
            cv, b = c["curve"], c["best"]
            c["line"] = line
            c["probe_id"], c["probe_ood"] = cv["curve/id_test/rmse"][b], cv["curve/ood_test/rmse"][b]
            c["res_best"] = residual(line, c["probe_id"], c["probe_ood"])
            c["res_final"] = residual(line, c["result"]["id_test"]["rmse"], c["result"]["ood_test"]["rmse"])
            c["train_val_best"] = cv["curve/train/rmse"][b] / cv["curve/val/rmse"][b]
            c["train_val_end"] = cv["curve/train/rmse"][-1] / cv["curve/val/rmse"][-1]
    return [c for c in cells if "line" in c]


def _ms(values: List[float], fmt: str = "{:.4f}") -> str:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return "–"
    return (fmt.format(arr.mean()) + (" ± " + fmt.replace("+", "").format(arr.std(ddof=1)) if arr.size > 1 else ""))


def table(cells: List[Dict]) -> List[str]:
    lines = ["| task, fraction | strategy | runs | ID RMSE | OOD RMSE | residual at matched ID (best ckpt) | "
             "residual (final, full sets) | train/val (best / end) | drift W1 | drift rel | FF force MAE (eV/Å) | "
             "ood_score AUROC (ID vs OOD) | ood_score vs \\|error\\| (Spearman, OOD) |",
             "|---|---|---:|---|---|---|---|---|---|---|---|---|---|"]
    for group in sorted({c["group"] for c in cells}):
        for strategy in ("scratch", "lp", "ft", "mft", *sorted({c["strategy"] for c in cells} -
                                                                {"scratch", "lp", "ft", "mft"})):
            cs = [c for c in cells if c["group"] == group and c["strategy"] == strategy]
            if not cs:
                continue
            ff = [next(iter(c["result"].get("forcefield", {}).values()), {}).get("f_mae") for c in cs]
            lines.append(
                f"| {group} | {strategy} | {len(cs)} | {_ms([c['result']['id_test']['rmse'] for c in cs])} | "
                f"{_ms([c['result']['ood_test']['rmse'] for c in cs])} | "
                f"{_ms([100 * c['res_best'] for c in cs], '{:+.1f}')} % | "
                f"{_ms([100 * c['res_final'] for c in cs], '{:+.1f}')} % | "
                f"{_ms([c['train_val_best'] for c in cs], '{:.2f}')} / {_ms([c['train_val_end'] for c in cs], '{:.2f}')} | "
                f"{_ms([c['result'].get('drift_w1') for c in cs], '{:.3f}')} | "
                f"{_ms([c['result'].get('drift_rel') for c in cs], '{:.3f}')} | {_ms(ff, '{:.3f}')} | "
                f"{_ms([c['result'].get('ood_score', {}).get('auroc_id_vs_ood') for c in cs], '{:.3f}')} | "
                f"{_ms([c['result'].get('ood_score', {}).get('ood_test_spearman_abs_error') for c in cs], '{:.3f}')} |")
    return lines


def verdicts(cells: List[Dict]) -> List[str]:
    """Per group, each fine-tuning strategy that is not FT, LP or scratch (MFT, and controls such as an anchored
    FT) against FT: the issue's test (OOD ≤ 0.9 × FT with ID within ±5 %) and the seed test; and each control
    against MFT (seed test only)."""
    out = []
    for group in sorted({c["group"] for c in cells}):
        mine = [c for c in cells if c["group"] == group]
        by = {s: [c for c in mine if c["strategy"] == s] for s in sorted({c["strategy"] for c in mine})}
        others = sorted((s for s in by if s not in ("ft", "lp", "scratch")), key=lambda s: (s != "mft", s))
        for name in others:
            if "ft" in by:
                out.append(ratio_verdict(group, by[name], by["ft"], name, "ft"))
            if name != "mft" and "mft" in by:
                out.append(f"- {group}: {name.upper()} against MFT." + seed_test(by[name], by["mft"], name, "mft"))
    return out


def ratio_verdict(group: str, a: List[Dict], b: List[Dict], a_name: str, b_name: str) -> str:
    """``a_name``/``b_name`` mean ID and OOD RMSE, whether the OOD ≤ 0.9× test with ID within ±5 % is met, and the
    seed test."""
    r_id = np.mean([c["result"]["id_test"]["rmse"] for c in a]) / np.mean([c["result"]["id_test"]["rmse"] for c in b])
    r_ood = np.mean([c["result"]["ood_test"]["rmse"] for c in a]) / np.mean([c["result"]["ood_test"]["rmse"] for c in b])
    ok = r_ood <= 0.9 and abs(r_id - 1) <= 0.05
    A, B = a_name.upper(), b_name.upper()
    return (f"- {group}: {A}/{B} ID {r_id:.3f}, OOD {r_ood:.3f} ({len(a)} vs {len(b)} runs): "
            f"{'meets' if ok else 'does not meet'} OOD ≤ 0.9× {B} with ID within ±5 %." + seed_test(a, b, a_name, b_name))


def seed_test(a_cells: List[Dict], b_cells: List[Dict], a_name: str = "mft", b_name: str = "ft") -> str:
    """Welch's t-test of ``a_name`` against ``b_name`` over seeds, on the full-set OOD RMSE and on the residual at
    matched ID (best checkpoint), with the 95 % confidence interval of the difference (for the OOD RMSE also
    relative to the second's mean, the scale of the issue's 0.9× test); a note instead with fewer than two runs on
    either side."""
    if len(a_cells) < 2 or len(b_cells) < 2:
        return " (no seed test: fewer than two runs on one side)"
    from scipy.stats import ttest_ind
    A, B = a_name.upper(), b_name.upper()
    parts = []
    for label, get, relative in (("OOD RMSE", lambda c: c["result"]["ood_test"]["rmse"], True),    # the 0.9× test
                                 ("residual at matched ID", lambda c: c["res_best"], False)):
        a, b = np.array([get(c) for c in a_cells]), np.array([get(c) for c in b_cells])
        test = ttest_ind(a, b, equal_var=False)
        low, high = test.confidence_interval(0.95)
        span = f"95 % CI {low:+.4g} to {high:+.4g}"
        if relative:
            span += f", {100 * low / b.mean():+.1f} % to {100 * high / b.mean():+.1f} % of {B}'s mean"
        parts.append(f"{label}: {A} − {B} {a.mean() - b.mean():+.4g} ({span}), Welch p = {test.pvalue:.2f}")
    return " Over seeds, " + "; ".join(parts) + "."


def plot(cells: List[Dict], path: Path) -> None:
    """Per group (task, fraction), three panels: OOD vs ID over training (every cell's probe trajectory, its best
    checkpoint, FT's line), each cell's residual at matched ID by strategy (best checkpoint filled, final full-set
    hollow, the paper's -15 % dashed), and the learning curves of seed 0."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter
    groups = sorted({c["group"] for c in cells})
    fig, axes = plt.subplots(len(groups), 3, figsize=(15.5, 4.4 * len(groups)), squeeze=False)
    colors = {"ft": "tab:red", "mft": "tab:blue", "lp": "tab:green", "scratch": "tab:gray", "ft_anchor": "tab:orange"}
    markers = "os^Dvp"
    for row, group in enumerate(groups):
        ax, ax_res, ax2 = axes[row]
        cs = [c for c in cells if c["group"] == group]
        for c in cs:
            cv, color = c["curve"], colors.get(c["strategy"], "tab:purple")
            seed = int(c["seed"].replace("seed", "")) if c["seed"].startswith("seed") else 0
            ax.plot(cv["curve/id_test/rmse"], cv["curve/ood_test/rmse"], "-", lw=0.8, alpha=0.5, color=color)
            ax.plot(c["probe_id"], c["probe_ood"], markers[seed % len(markers)], ms=6, color=color,
                    label=f"{c['strategy']} {c['seed']} (best)")
            if c["seed"] == "seed0":
                steps = cv["step"]
                ax2.semilogy(steps, cv["curve/ood_test/rmse"], "-", color=color, label=f"{c['strategy']} OOD")
                ax2.semilogy(steps, cv["curve/id_test/rmse"], "--", color=color, label=f"{c['strategy']} ID")
                ax2.semilogy(steps, cv["curve/train/rmse"], ":", color=color, label=f"{c['strategy']} train")
        a, b = cs[0]["line"]
        xs = np.linspace(*ax.get_xlim(), 50)
        ax.plot(xs, a + b * xs, "k--", lw=1, label=f"FT line: OOD = {a:.4f} + {b:.2f}·ID")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.3f"))
        ax.tick_params(axis="x", labelrotation=30)
        ax.set(xlabel="ID RMSE (probe)", ylabel="OOD RMSE (probe)", title=f"{group}: OOD vs ID over training")
        ax.legend(fontsize=6)
        order = [s for s in ("scratch", "lp", "ft", "mft") if any(c["strategy"] == s for c in cs)]
        order += sorted({c["strategy"] for c in cs} - set(order))
        for x, strategy in enumerate(order):
            mine = [c for c in cs if c["strategy"] == strategy]
            color = colors.get(strategy, "tab:purple")
            jitter = np.linspace(-0.12, 0.12, len(mine)) if len(mine) > 1 else np.zeros(1)
            best = np.array([100 * c["res_best"] for c in mine])
            final = np.array([100 * c["res_final"] for c in mine])
            ax_res.plot(x - 0.15 + jitter, best, "o", color=color, ms=6)
            ax_res.plot(x + 0.15 + jitter, final, "o", mfc="none", color=color, ms=6)
            ax_res.hlines([best.mean(), final.mean()], [x - 0.3, x], [x, x + 0.3], color=color, lw=2)
        ax_res.axhline(0, color="k", lw=1)
        ax_res.axhline(-15, color="k", lw=1, ls="--", label="paper: about -15 %")
        ax_res.set_xticks(range(len(order)), [s.upper() for s in order])
        ax_res.set(ylabel="OOD residual to FT's line at matched ID (%)",
                   title=f"{group}: residual (filled: best ckpt, hollow: final full sets; bar: mean)")
        ax_res.title.set_fontsize(9)
        ax_res.legend(fontsize=7)
        ax2.set(xlabel="step", ylabel="RMSE (probe)", title=f"{group}: learning curves (seed 0)")
        ax2.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="bench output directory (results.json, cells/*/val.csv)")
    parser.add_argument("--name", default=None, help="result name (default: the directory name)")
    parser.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    name = args.name or out_dir.name
    cells = analyse(out_dir)
    if not cells:
        raise SystemExit(f"{out_dir}: no finished cell with curves and an FT reference yet")
    target = Path(args.results_dir)
    target.mkdir(parents=True, exist_ok=True)
    plot(cells, target / f"mft_protocol_{name}_curves.png")
    lines = [f"# MFT protocol: {name}", "", f"Command: `python benchmarks/mft_protocol.py {args.out_dir}"
             + (f" --name {args.name}" if args.name else "") + "`", "",
             *table(cells), "", *verdicts(cells), "",
             "± is the sample standard deviation over seeds. Residual: (OOD − line(ID)) / line(ID) against the least-squares OOD–ID line through every FT "
             "checkpoint (fixed probes); best ckpt = best on the validation probe; final = full ID/OOD sets. "
             "train/val: probe RMSE ratio (FT overfits when it drops below ~0.7). Drift: sliced W1 of backbone "
             "features against the pretrained model, and rel = Σ‖h − h₀‖²/Σ‖h₀‖² atom by atom (cells from session "
             "23 on; – before). FF force MAE: held-out xTB (or first ff_eval set).",
             f"Plot: `mft_protocol_{name}_curves.png`."]
    text = "\n".join(lines) + "\n"
    print(text)
    (target / f"mft_protocol_{name}.md").write_text(text)


if __name__ == "__main__":
    main()
