"""``mftcalc evaluate``: energy/force errors of a model per data file and a parity plot."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mftcalc.data.io import read_structures
from mftcalc.model.checkpoint import load_any
from mftcalc.model.inference import predict_structures


def dataset_index(metadata: Dict, name: Optional[str]) -> int:
    """Index of the force-field dataset ``name`` in the model metadata (default 0); errors list what exists."""
    names: List[str] = list(metadata.get("datasets", ["default"]))
    if name is None:
        return 0
    if name not in names:
        raise KeyError(f"model has no force-field dataset {name!r}; it has {names}")
    return names.index(name)


def evaluate_files(model_path: str, data_paths: Sequence[str], dataset: Optional[str] = None,
                   plot: Optional[str] = "parity.png", max_structures: Optional[int] = None) -> Dict[str, Dict]:
    """Print a table of errors per file (energy MAE/atom meV, force MAE/RMSE meV/Å) and write a parity plot."""
    model, meta = load_any(model_path)
    ds = dataset_index(meta, dataset)
    table: Dict[str, Dict] = {}
    parity = []
    for path in data_paths:
        structures = read_structures(path)
        if max_structures is not None:
            structures = structures[:max_structures]
        preds = predict_structures(model, structures, ds, compute_forces=True, compute_stress=False)
        e_ref = np.array([s.energy / s.n_atoms for s in structures if s.energy is not None])
        e_pred = np.array([float(p["energy"]) / s.n_atoms for s, p in zip(structures, preds) if s.energy is not None])
        f_ref = np.concatenate([s.forces.ravel() for s in structures if s.forces is not None] or [np.zeros(0)])
        f_pred = np.concatenate([p["forces"].ravel() for s, p in zip(structures, preds) if s.forces is not None]
                                or [np.zeros(0)])
        row = {"n": len(structures)}
        if e_ref.size:
            row["e_mae_mev_atom"] = 1000 * float(np.abs(e_pred - e_ref).mean())
        if f_ref.size:
            row["f_mae_mev_A"] = 1000 * float(np.abs(f_pred - f_ref).mean())
            row["f_rmse_mev_A"] = 1000 * float(np.sqrt(((f_pred - f_ref) ** 2).mean()))
        table[str(path)] = row
        parity.append((Path(path).name, e_ref, e_pred, f_ref, f_pred))
    print(f"{'data':40s} {'n':>6s} {'E MAE meV/atom':>15s} {'F MAE meV/Å':>12s} {'F RMSE meV/Å':>13s}")
    for name, row in table.items():
        print(f"{Path(name).name:40s} {row['n']:6d} {row.get('e_mae_mev_atom', float('nan')):15.2f} "
              f"{row.get('f_mae_mev_A', float('nan')):12.1f} {row.get('f_rmse_mev_A', float('nan')):13.1f}")
    if plot:
        _parity_plot(parity, plot)
    return table


def _parity_plot(parity, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, e_ref, e_pred, f_ref, f_pred in parity:
        if e_ref.size:
            ax_e.scatter(e_ref - e_ref.mean(), e_pred - e_ref.mean(), s=4, label=name)
        if f_ref.size:
            ax_f.scatter(f_ref, f_pred, s=2, alpha=0.4, label=name)
    for ax, label in [(ax_e, "energy − mean (eV/atom)"), (ax_f, "force component (eV/Å)")]:
        lims = ax.get_xlim()
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
