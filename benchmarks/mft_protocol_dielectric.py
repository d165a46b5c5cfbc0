"""Issue 15's MatBench arm: FT against MFT on the dielectric folds of a protocol bench (``grid_dielectric.yaml``).

Reads ``<out_dir>/results.json`` (written by ``mftcalc bench``) and, for every fold where both strategies have
finished:

- the test MAE and RMSE of the refractive index (unitless), the validation MAE (the held-out part of the training
  folds: in-distribution for LOCO, whose test fold is a left-out cluster), and MFT/FT of each;
- representation drift (W1 against the prior) and force-field retention (force MAE, eV/Å, of the fine-tuned model's
  force field on held-out DFT structures of pretraining; the prior's own figures from the bench's reference, or
  evaluated here when the bench has not written it yet);
- per fold kind (LOCO, random): the geometric mean of MFT/FT test MAE over folds, how many folds MFT wins, and a
  paired Wilcoxon signed-rank test of the per-fold log ratios once there are at least 5 folds (below that, no
  test: the table says so).

Prints the Markdown report, writes it to ``benchmarks/results/mft_protocol_dielectric.md`` (``--write``) with a plot
``..._ratios.png`` (MFT/FT per fold, and force MAE of each cell against the prior's).

    python benchmarks/mft_protocol_dielectric.py [--bench configs/protocol/grid_dielectric.yaml] [--write]
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

RESULTS = Path(__file__).parent / "results"
KEY = re.compile(r"matbench:dielectric-(?P<kind>[A-Za-z]+)-(?P<fold>\d+)\|(?P<strategy>\w+)\|seed(?P<seed>\d+)")


def fold_pairs(results: Dict[str, Dict]) -> List[Dict]:
    """One record per (fold kind, fold, seed) with both ``ft`` and ``mft`` finished (and any other strategy finished
    there, by name), LOCO first, then by fold."""
    cells: Dict[tuple, Dict[str, Dict]] = {}
    for key, result in results.items():
        m = KEY.match(key)
        if m:
            cells.setdefault((m["kind"], int(m["fold"]), int(m["seed"])), {})[m["strategy"]] = result
    pairs = [{"kind": k, "fold": f, "seed": s, **v} for (k, f, s), v in cells.items() if {"ft", "mft"} <= set(v)]
    return sorted(pairs, key=lambda p: (p["kind"] != "LOCO", p["kind"], p["fold"], p["seed"]))


def prior_forcefield(results: Dict, bench: Optional[str]) -> Dict[str, Dict[str, float]]:
    """The prior's held-out force-field errors: the bench's ``_forcefield_reference``, else evaluated now."""
    reference = results.get("_forcefield_reference", {}).get("pretrained")
    if reference or bench is None:
        return reference or {}
    from mftcalc.experiments.bench import forcefield_retention
    from mftcalc.experiments.config import BenchConfig
    cfg = BenchConfig.from_yaml(bench)
    return forcefield_retention(Path(cfg.pretrained), cfg, {})


def fold_summary(pairs: List[Dict]) -> List[str]:
    """Per fold kind: geometric-mean MFT/FT test MAE, wins, and the paired test when there are ≥ 5 folds; then each
    control (a strategy beside FT and MFT, e.g. ``ft_anchor``) against FT and against MFT on the folds it has."""
    lines = []
    for kind in sorted({p["kind"] for p in pairs}, key=lambda k: k != "LOCO"):
        mine = [p for p in pairs if p["kind"] == kind]
        lines.append(f"- **{kind}**, " + _compare(mine, "mft", "ft"))
        for control in controls_of(mine):
            have = [p for p in mine if control in p]
            for other in ("ft", "mft"):
                lines.append(f"- **{kind}**, {control.upper()} against {other.upper()}: " + _compare(have, control, other))
    return lines


def controls_of(pairs: List[Dict]) -> List[str]:
    """The strategies of these fold records beside FT and MFT, sorted."""
    return sorted({k for p in pairs for k in p if k not in ("kind", "fold", "seed", "ft", "mft")})


def _compare(pairs: List[Dict], a: str, b: str) -> str:
    """Geometric mean of a/b test MAE and RMSE over the folds, wins, and the paired test from 5 folds on."""
    ratios = np.array([p[a]["test"]["mae"] / p[b]["test"]["mae"] for p in pairs])
    rmse = np.array([p[a]["test"]["rmse"] / p[b]["test"]["rmse"] for p in pairs])
    A, B = a.upper(), b.upper()
    text = (f"{len(ratios)} fold{'s' if len(ratios) > 1 else ''}: {A}/{B} test MAE geometric mean "
            f"{float(np.exp(np.log(ratios).mean())):.3f} (per fold {', '.join(f'{r:.3f}' for r in ratios)}), RMSE "
            f"{float(np.exp(np.log(rmse).mean())):.3f}; {A} lower on {int((ratios < 1).sum())} of {len(ratios)}. ")
    if len(ratios) >= 5:
        from scipy.stats import wilcoxon
        pvalue = float(wilcoxon(np.log(ratios)).pvalue)
        text += (f"Paired Wilcoxon signed-rank test of the log ratios: p = {pvalue:.3g} (exact, two-sided; with "
                 f"{len(ratios)} folds the smallest possible p is {2 / 2 ** len(ratios):.4f}).")
    else:
        text += "Too few folds for a paired test (needs 5); read each fold as one draw."
    return text


def table(pairs: List[Dict], prior: Dict[str, Dict[str, float]]) -> List[str]:
    """The Markdown table: one row per cell, MFT's row with its ratios to FT."""
    sets = sorted({name for p in pairs for s in ("ft", "mft") for name in p[s].get("forcefield", {})})
    head = ["fold", "strategy", "test MAE", "test RMSE", "/FT MAE", "/FT RMSE", "val MAE", "drift W1",
            *[f"force MAE {n} (eV/Å)" for n in sets], "interval coverage (test)", "train h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    if prior:
        lines.append("| – | prior | – | – | – | – | – | – | "
                     + " | ".join(f"{prior[n]['f_mae']:.3f}" if n in prior else "–" for n in sets) + " | – | – |")
    for p in pairs:
        for strategy in ("ft", "mft", *controls_of([p])):
            r = p[strategy]
            ratio = (f"{r['test']['mae'] / p['ft']['test']['mae']:.3f}", f"{r['test']['rmse'] / p['ft']['test']['rmse']:.3f}") \
                if strategy != "ft" else ("", "")
            coverage = r["test"].get("interval_coverage")
            cells = [f"{p['kind']} {p['fold']}", strategy.upper(), f"{r['test']['mae']:.3f}", f"{r['test']['rmse']:.3f}",
                     *ratio, f"{r['val']['mae']:.3f}", f"{r['drift_w1']:.3f}" if "drift_w1" in r else "–",
                     *[f"{r['forcefield'][n]['f_mae']:.3f}" if n in r.get("forcefield", {}) else "–" for n in sets],
                     "–" if coverage is None or math.isnan(coverage) else f"{coverage:.2f}",
                     f"{r['train_wall_s'] / 3600:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def plot(pairs: List[Dict], prior: Dict[str, Dict[str, float]], path: Path) -> None:
    """Left: MFT/FT test MAE and RMSE per fold. Right: each cell's force MAE over the prior's, per held-out set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{p['kind']} {p['fold']}" for p in pairs]
    x = np.arange(len(pairs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shown = []
    for shift, metric in ((-0.18, "mae"), (0.18, "rmse")):
        shown += [p["mft"]["test"][metric] / p["ft"]["test"][metric] for p in pairs]
        left.bar(x + shift, shown[-len(pairs):], 0.36, label=f"test {metric.upper()}")
    left.set_ylim(min(0.8, min(shown) - 0.05), max(1.2, max(shown) + 0.05))     # the bars' differences, not 0
    left.axhline(1.0, color="k", lw=0.8)
    left.axhline(0.9, color="grey", ls="--", lw=0.8, label="issue 15's 0.9")
    left.set_xticks(x, labels, rotation=30)
    left.set_ylabel("MFT / FT")
    left.set_title("refractive index, MFT over FT per fold")
    left.legend(fontsize=8)
    sets = sorted({n for p in pairs for n in p["mft"].get("forcefield", {}) if n in prior})
    width = 0.8 / max(1, 2 * len(sets))
    for k, name in enumerate(sets):
        for j, strategy in enumerate(("ft", "mft")):
            ratio = [p[strategy]["forcefield"][name]["f_mae"] / prior[name]["f_mae"] for p in pairs]
            right.bar(x - 0.4 + width * (2 * k + j + 0.5), ratio, width, label=f"{strategy.upper()} {name}",
                      hatch="//" if strategy == "ft" else None)
    right.axhline(1.0, color="k", lw=0.8)
    right.set_yscale("log")
    right.set_xticks(x, labels, rotation=30)
    right.set_ylabel("force MAE / prior's")
    right.set_title("force-field retention (held-out DFT)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out_dir: Path, bench: Optional[str], controls: Sequence[Path] = ()) -> tuple:
    """The Markdown report, the fold records and the prior's force-field errors. ``controls``: the out_dirs of
    benches of control strategies on the same folds (e.g. ``grid_dielectric_anchor.yaml``), merged in."""
    results = json.loads((out_dir / "results.json").read_text())
    for control in controls:
        results.update({k: v for k, v in json.loads((Path(control) / "results.json").read_text()).items()
                        if not k.startswith("_")})
    pairs = fold_pairs(results)
    if not pairs:
        raise SystemExit(f"{out_dir}/results.json has no fold where both FT and MFT have finished")
    prior = prior_forcefield(results, bench)
    command = " ".join(["python benchmarks/mft_protocol_dielectric.py --out-dir", str(out_dir),
                        *[f"--control {c}" for c in controls]])
    lines = [f"# MatBench dielectric: FT against MFT ({out_dir})", "",
             f"`{command}`; {len(pairs)} fold pair(s) "
             "finished. Refractive index (unitless); force MAE of the fine-tuned model's force field on held-out DFT "
             "structures of pretraining.", "", *table(pairs, prior), "", *fold_summary(pairs)]
    return "\n".join(lines) + "\n", pairs, prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="checkpoints/protocol_dielectric", help="the bench's out_dir")
    parser.add_argument("--bench", default="configs/protocol/grid_dielectric.yaml",
                        help="the bench config, to evaluate the prior's force field when results.json lacks it")
    parser.add_argument("--control", action="append", default=[],
                        help="out_dir of a control bench on the same folds (repeatable), e.g. "
                             "checkpoints/protocol_dielectric_anchor")
    parser.add_argument("--write", action="store_true", help="write the report and plot to benchmarks/results/")
    args = parser.parse_args()
    text, pairs, prior = report(Path(args.out_dir), args.bench, [Path(c) for c in args.control])
    print(text)
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "mft_protocol_dielectric.md").write_text(text)
        plot(pairs, prior, RESULTS / "mft_protocol_dielectric_ratios.png")
        print(f"wrote {RESULTS / 'mft_protocol_dielectric.md'} and {RESULTS / 'mft_protocol_dielectric_ratios.png'}")


if __name__ == "__main__":
    main()
