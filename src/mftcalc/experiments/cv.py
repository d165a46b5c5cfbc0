"""K-fold cross-validation of a fine-tuning strategy on the user's own data (``mftcalc cv``).

Folds come from scikit-learn: ``KFold`` (shuffled, seeded) or ``GroupKFold`` over a grouping of the structures
(``formula``: the chemical formula, so isomers stay together; ``scaffold``: the Bemis–Murcko scaffold of
``info["smiles"]``, RDKit, so a chemical series is never split between train and test). Each fold fine-tunes on
the other folds (validation: a seeded share of them) and is scored on its own structures; the report gives each
fold's MAE/RMSE, their mean ± std, and one parity plot of the out-of-fold predictions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mftcalc.data.assembly import is_assembly
from mftcalc.data.structure import Structure


def group_keys(structures: Sequence[Structure], group_by: Optional[str]) -> Optional[List[str]]:
    """One key per structure for ``group_by`` (``None``, ``formula`` or ``scaffold``)."""
    if group_by is None:
        return None
    if group_by == "formula":
        from ase.formula import Formula
        from ase.data import chemical_symbols
        return [Formula.from_list([chemical_symbols[z] for z in s.numbers]).format("hill") for s in structures]
    if group_by == "scaffold":
        missing = [k for k, s in enumerate(structures) if "smiles" not in s.info]
        if missing:
            raise ValueError(f"--group-by scaffold needs info['smiles'] (a SMILES CSV gives it); structure "
                             f"{missing[0]} has none; use --group-by formula")
        from rdkit.Chem.Scaffolds.MurckoScaffold import MurckoScaffoldSmiles
        return [MurckoScaffoldSmiles(smiles=str(s.info["smiles"])) or str(s.info["smiles"]) for s in structures]
    raise ValueError(f"group_by must be formula or scaffold, got {group_by!r}")


def fold_indices(n: int, folds: int, keys: Optional[List[str]], seed: int) -> List[np.ndarray]:
    """Test indices of each fold (sorted), from ``KFold``/``GroupKFold``."""
    from sklearn.model_selection import GroupKFold, KFold
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if keys is None:
        if n < folds:
            raise ValueError(f"{n} structures are too few for {folds} folds")
        splits = KFold(folds, shuffle=True, random_state=seed).split(np.arange(n))
    else:
        if len(set(keys)) < folds:
            raise ValueError(f"only {len(set(keys))} groups for {folds} folds; use fewer folds or another grouping")
        splits = GroupKFold(folds).split(np.arange(n), groups=keys)
    return [np.sort(test) for _, test in splits]


def cross_validate(structures: List[Structure], prop: str, unit: str, intensive: bool, settings: Any,
                   pretrained: Optional[str], out_dir: str | Path, folds: int = 5, group_by: Optional[str] = None,
                   val_fraction: float = 0.1, seed: int = 0,
                   frame_params: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run every fold (resumable: each fold keeps its own run directory) and write ``report.md`` and
    ``parity.png`` in ``out_dir``; returns the per-fold and summary errors (property units). ``frame_params``:
    ``{info key: unit}`` the property head reads beside the structure (:mod:`mftcalc.data.frame_params`).
    ``structures`` may be assemblies (:func:`mftcalc.data.assembly.group_structures`): folds then split groups,
    and each fold trains a group head."""
    from mftcalc.analysis.plots import plot_parity
    from mftcalc.training.finetune import finetune
    from mftcalc.experiments.tasks import PropertyTask

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tests = fold_indices(len(structures), folds, group_keys(structures, group_by), seed)
    recipe = dict(kind="scalar", extensive=not intensive, element_bias=True, loss="mse")
    if structures and is_assembly(structures[0]):     # groups of frames (mftcalc.data.assembly): a group head
        recipe = dict(kind="group", extensive=False, element_bias=False, loss="mse",
                      group_reduce="mean" if intensive else "sum")
    rows, true_all, pred_all = [], [], []
    for k, test in enumerate(tests):
        rest = np.setdiff1d(np.arange(len(structures)), test)
        perm = np.random.default_rng(seed + k).permutation(rest)
        n_val = max(1, int(round(val_fraction * len(rest))))
        task = PropertyTask(f"cv-{prop}-fold{k}", prop, unit, [structures[i] for i in np.sort(perm[n_val:])],
                            [structures[i] for i in np.sort(perm[:n_val])], {"test": [structures[i] for i in test]},
                            recipe, f"{prop}, fold {k + 1} of {folds}", dict(frame_params or {}))
        result = finetune(task, settings, out_dir / f"fold{k}", pretrained)
        rows.append({"fold": k, "n_test": int(len(test)), **{m: result["test"][m] for m in ("mae", "rmse")}})
        parity = np.load(out_dir / f"fold{k}" / "parity.npz")
        true_all.append(parity["test_true"])
        pred_all.append(parity["test_pred"])
    mae = np.array([r["mae"] for r in rows])
    rmse = np.array([r["rmse"] for r in rows])
    summary = {"folds": rows, "mae_mean": float(mae.mean()), "mae_std": float(mae.std()),
               "rmse_mean": float(rmse.mean()), "rmse_std": float(rmse.std()), "group_by": group_by}
    plot_parity({"out-of-fold_true": np.concatenate(true_all), "out-of-fold_pred": np.concatenate(pred_all)},
                out_dir / "parity.png", f"{prop}: {folds}-fold CV ({settings.strategy})", unit)
    lines = [f"# {folds}-fold cross-validation of {prop} ({settings.strategy}, grouped by {group_by or 'nothing'})",
             "", f"| fold | test structures | MAE ({unit}) | RMSE ({unit}) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['fold']} | {r['n_test']} | {r['mae']:.4g} | {r['rmse']:.4g} |" for r in rows]
    lines += ["", f"MAE {mae.mean():.4g} ± {mae.std():.2g}, RMSE {rmse.mean():.4g} ± {rmse.std():.2g} {unit} "
              "(mean ± std over folds). Out-of-fold parity plot: parity.png."]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    return summary
