"""``mftcalc evaluate``: energy/force errors of a model per data file and a parity plot."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mftcalc.data.io import read_structures
from mftcalc.data.structure import Structure, StructureError
from mftcalc.model.inference import predict_structures
from mftcalc.training.evaluate import require_forcefield_labels

READ_FIX = ("check the file's format; in extxyz each comment line's Properties= entry is name:type:count triplets "
            "(types S, R, I, L), e.g. Properties=species:S:1:pos:R:3:forces:R:3")


def read_labelled(path: str, max_structures: Optional[int] = None) -> List[Structure]:
    """The structures of one data file (the first ``max_structures``), checked to carry energy or force labels.

    Raises ``SystemExit`` (the ``mftcalc evaluate`` exit, status 1) with a message naming the file and the problem
    when it cannot be read or none of its structures has an energy or a force label.
    """
    try:
        structures = read_structures(path)
    except (FileNotFoundError, StructureError) as exc:   # these already name the file (and frame) and the fix
        raise SystemExit(str(exc)) from None
    except (ValueError, KeyError, IndexError, OSError, EOFError) as exc:   # raw parser errors (ASE, gzip)
        raise SystemExit(f"{path}: cannot read the structures ({type(exc).__name__}: {exc}); {READ_FIX}") from None
    if max_structures is not None:
        structures = structures[:max_structures]
    try:
        require_forcefield_labels(structures, str(path))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return structures


def evaluate_files(model_path: str, data_paths: Sequence[str], dataset: Optional[str] = None,
                   plot: Optional[str] = "parity.png", max_structures: Optional[int] = None,
                   device: str = "cpu") -> Dict[str, Dict]:
    """Print a table of errors per file (energy MAE/atom meV, force MAE/RMSE meV/Å) and write a parity plot.

    Every file is read and checked (:func:`read_labelled`) before the model runs, so an unreadable or unlabelled
    file stops the command (``SystemExit``, status 1) with a message naming it. A column a file has no labels for
    is printed as ``-``. ``device``: ``cpu``, ``cuda[:k]`` or ``auto`` (``mftcalc evaluate --device``).
    """
    from mftcalc.calculators.model_handle import ModelHandle
    files = [(path, read_labelled(path, max_structures)) for path in data_paths]
    try:
        handle = ModelHandle.load(model_path, dataset=dataset, device=device)
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"{model_path}: {exc}") from None
    table: Dict[str, Dict] = {}
    parity = []
    for path, structures in files:
        try:            # the calculator's structure check and dataset rule, on every structure
            datasets = handle.check_structures(structures)
        except ValueError as exc:
            raise SystemExit(f"{path}: {exc}") from None
        preds = predict_structures(handle.module, structures, datasets, compute_forces=True, compute_stress=False)
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
        print(f"{Path(name).name:40s} {row['n']:6d} {_cell(row, 'e_mae_mev_atom', 15, 2)} "
              f"{_cell(row, 'f_mae_mev_A', 12, 1)} {_cell(row, 'f_rmse_mev_A', 13, 1)}")
    if plot:
        from mftcalc.analysis.plots import plot_forcefield_parity
        plot_forcefield_parity(parity, plot)
    return table


def _cell(row: Dict, key: str, width: int, digits: int) -> str:
    """A table cell: the value, or ``-`` when the file had no labels for it."""
    return f"{row[key]:{width}.{digits}f}" if key in row else f"{'-':>{width}s}"
