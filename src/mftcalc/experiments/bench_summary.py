"""The bench summary: Markdown tables of a ``results.json`` in the paper's layout (QM9: ID and OOD RMSE; MatBench:
test MAE per fold kind; mean ± std over seeds and folds), force-field retention per dataset, and MFT/FT ratios
against the paper's claim."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np


def _mean_std(values: List[float]) -> str:
    if not values:
        return "–"
    arr = np.asarray(values)
    return f"{arr.mean():.4g} ± {arr.std():.2g}" if len(arr) > 1 else f"{arr.mean():.4g}"


def summary_markdown(results: Dict[str, Dict], settings: Dict[str, Any], seeds: List[int]) -> str:
    """Paper-layout tables of a bench ``results.json``: QM9 ID/OOD RMSE and MatBench test MAE per (task,
    strategy), mean ± std over the runs of each row; the bench's ``settings`` and ``seeds`` head the table."""
    rows: Dict[tuple, Dict[str, List[float]]] = {}
    for key, r in results.items():
        if key.startswith("_"):
            continue
        task, strategy, _, frac = key.split("|")
        base = task.rsplit("-", 1)[0] if task.startswith("matbench") else task
        cell = rows.setdefault((base, frac, strategy), {})
        for part in ("id_test", "ood_test", "test"):
            if part in r:
                metric = "rmse" if task.startswith("qm9") else "mae"
                cell.setdefault(f"{part}_{metric}", []).append(r[part][metric])
                if "interval_coverage" in r[part]:
                    cell.setdefault(f"cover:{part}", []).append(r[part]["interval_coverage"])
        if "drift_w1" in r:
            cell.setdefault("drift", []).append(r["drift_w1"])
        for ds, errs in r.get("forcefield", {}).items():
            if "f_mae" in errs:
                cell.setdefault(f"ff:{ds}", []).append(errs["f_mae"])
        cell.setdefault("runs", []).append(1.0)
    lines = [f"Settings: {settings}; seeds {seeds}; mean ± std over the runs of each row.", "",
             "| task | train fraction | strategy | runs | ID RMSE | OOD RMSE | test MAE | drift (sliced W1) | "
             "FF force MAE (eV/Å) | interval coverage |",
             "|---|---|---|---:|---|---|---|---|---|---|"]
    for (task, frac, strategy), cell in sorted(rows.items()):
        lines.append(f"| {task} | {frac[4:]} | {strategy} | {len(cell['runs'])} | "
                     f"{_mean_std(cell.get('id_test_rmse', []))} | "
                     f"{_mean_std(cell.get('ood_test_rmse', []))} | {_mean_std(cell.get('test_mae', []))} | "
                     f"{_mean_std(cell.get('drift', []))} | {_ff_column(cell)} | {_coverage_column(cell)} |")
    lines += _mft_vs_ft(rows)
    ref = results.get("_forcefield_reference", {}).get("pretrained", {})
    if ref:
        lines += ["", "Pretrained model on the same force-field data: " +
                  ", ".join(f"{k}: force MAE {v.get('f_mae', float('nan')):.4f} eV/Å" for k, v in ref.items())]
    return "\n".join(lines) + "\n"


def _coverage_column(cell: Dict[str, List[float]]) -> str:
    """Measured coverage of the models' prediction interval (``<property>_pi90``) per test part, mean over runs;
    ``–`` for cells fine-tuned before models carried one."""
    names = {"id_test": "ID", "ood_test": "OOD", "test": "test"}
    parts = [f"{names[p]} {np.mean(cell[f'cover:{p}']):.3f}" for p in names if f"cover:{p}" in cell]
    return ", ".join(parts) if parts else "–"


def _ff_column(cell: Dict[str, List[float]]) -> str:
    """Force MAE per force-field dataset (``name mean ± std``), one entry per held-out set, never mixed."""
    parts = [(k[3:], v) for k, v in sorted(cell.items()) if k.startswith("ff:")]
    if not parts:
        return "–"
    if len(parts) == 1:
        return _mean_std(parts[0][1])
    return "; ".join(f"{name} {_mean_std(v)}" for name, v in parts)


def _mft_vs_ft(rows: Dict[tuple, Dict[str, List[float]]]) -> List[str]:
    """One line per (task, fraction) with both strategies: MFT/FT ratios of the mean ID and OOD errors, against the
    paper's claim (OOD ≤ 0.9 × FT with ID within ±5 %)."""
    out: List[str] = []
    for (task, frac, strategy), cell in sorted(rows.items()):
        if strategy != "mft" or (task, frac, "ft") not in rows:
            continue
        ft = rows[(task, frac, "ft")]
        if cell.get("ood_test_rmse") and ft.get("ood_test_rmse"):
            r_id = np.mean(cell["id_test_rmse"]) / np.mean(ft["id_test_rmse"])
            r_ood = np.mean(cell["ood_test_rmse"]) / np.mean(ft["ood_test_rmse"])
            verdict = "meets" if (r_ood <= 0.9 and abs(r_id - 1.0) <= 0.05) else "does not meet"
            out.append(f"- {task}, fraction {frac[4:]}: MFT/FT ID RMSE {r_id:.3f}, OOD RMSE {r_ood:.3f} "
                       f"({len(cell['runs'])} vs {len(ft['runs'])} runs): {verdict} the target OOD ≤ 0.9× with "
                       "ID within ±5 %")
        elif cell.get("test_mae") and ft.get("test_mae"):
            out.append(f"- {task}, fraction {frac[4:]}: MFT/FT test MAE "
                       f"{np.mean(cell['test_mae']) / np.mean(ft['test_mae']):.3f}")
    return ([""] + out) if out else []
