"""``mftcalc evaluate``: energy, force and property errors of a model per data file, with parity plots."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mftcalc.data.io import PropertySpec, read_structures
from mftcalc.data.structure import Structure, StructureError
from mftcalc.model.inference import predict_structures
from mftcalc.training.evaluate import errors_from_predictions, per_structure_errors, require_labels
from mftcalc.workflows.group_predict import score_groups

READ_FIX = ("check the file's format; in extxyz each comment line's Properties= entry is name:type:count triplets "
            "(types S, R, I, L), e.g. Properties=species:S:1:pos:R:3:forces:R:3")


def read_input(path: str, properties: PropertySpec = None) -> List[Structure]:
    """The structures of one file (``properties``: info keys to take as labels, as for :func:`read_structures`);
    raises ``SystemExit`` (status 1) naming the file, the problem and the fix when it cannot be read."""
    try:
        return read_structures(path, properties=properties)
    except (FileNotFoundError, StructureError) as exc:   # these already name the file (and frame) and the fix
        raise SystemExit(str(exc)) from None
    except (ValueError, KeyError, IndexError, OSError, EOFError) as exc:   # raw parser errors (ASE, gzip)
        raise SystemExit(f"{path}: cannot read the structures ({type(exc).__name__}: {exc}); {READ_FIX}") from None


def read_labelled(path: str, max_structures: Optional[int] = None) -> List[Structure]:
    """The structures of one data file (the first ``max_structures``), checked to carry energy, force or property
    labels.

    Raises ``SystemExit`` (the ``mftcalc evaluate`` exit, status 1) with a message naming the file and the problem
    when it cannot be read or none of its structures has a label.
    """
    structures = read_input(path)
    if max_structures is not None:
        structures = structures[:max_structures]
    try:
        require_labels(structures, str(path))
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return structures


def evaluate_files(model_path: str, data_paths: Sequence[str], dataset: Optional[str] = None,
                   plot: Optional[str] = "parity.png", max_structures: Optional[int] = None,
                   device: str = "cpu", group_by: Optional[str] = None,
                   detail: Optional[str] = None) -> Dict[str, Dict]:
    """Print a table of errors per file and write parity plots.

    Force field: energy MAE/atom (meV), force MAE/RMSE (meV/Å), where the file has those labels; ``plot``.
    Properties: MAE and RMSE of every labelled property the model has a head for, in the unit of its head (the
    labels' own unit must agree: a file that declares another unit is refused); ``<plot stem>_<property>.png``;
    where the model has a prediction interval of the property (``<property>_pi90``), the fraction of the file's
    structures it holds and its mean half-width (a row's ``properties[name]["interval"]``).
    Every file is read and checked (:func:`read_labelled`) before the model runs, so an unreadable or unlabelled
    file stops the command (``SystemExit``, status 1) with a message naming it; so does a file whose only labels
    are properties the model does not predict. A column a file has no labels for is printed as ``-``.
    A group head (:mod:`mftcalc.data.assembly`) on frames that carry the group key it was trained with is scored
    per group (``n`` counts groups). ``device``: ``cpu``, ``cuda[:k]`` or ``auto`` (``mftcalc evaluate --device``). ``group_by``: an ``info`` key
    (e.g. ``config_type``); the energy and force errors are also given per value of it, under each file (a row's
    ``groups``; ``(none)`` for structures without the key). ``detail``: a ``.csv`` with one row per structure of
    every file (deepmd-kit's ``dp test --detail-file``, in one table): reference and predicted energy, the energy
    error per atom, the force MAE and largest force error, and each per-structure property's reference and
    prediction, in the units the column names carry; the structures with the largest force errors are named.
    """
    if detail is not None and not detail.lower().endswith(".csv"):
        raise SystemExit(f"--detail {detail}: the per-structure table is written as .csv; give a name ending in .csv")
    from mftcalc.calculators.domains import formula
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.model.intervals import interval_coverage, intervals_by_property
    from mftcalc.workflows.screen_format import unit_tag
    files = [(path, read_labelled(path, max_structures)) for path in data_paths]
    try:
        handle = ModelHandle.load(model_path, dataset=dataset, device=device)
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"{model_path}: {exc}") from None
    table: Dict[str, Dict] = {}
    parity, property_parity = [], {}
    details: List[Dict[str, str]] = []
    for path, structures in files:
        names = _property_names(path, structures, handle)
        want_forces = any(s.forces is not None for s in structures)
        forcefield = want_forces or any(s.energy is not None for s in structures)
        try:            # the calculator's structure check, and its dataset rule where energies or forces are scored
            datasets = handle.check_structures(structures, forcefield=forcefield)
        except ValueError as exc:
            raise SystemExit(f"{path}: {exc}") from None
        preds = predict_structures(handle.module, structures, datasets, compute_forces=want_forces,
                                   compute_stress=False)
        row, (e_ref, e_pred, f_ref, f_pred) = _forcefield_row(structures, preds)
        row["properties"] = {}
        for name in names:
            try:                        # a group head on frames that carry its group key: one error per group
                grouped = score_groups(handle, structures, name, str(path))
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
            true = np.array([s.properties[name] for s in structures if name in s.properties])
            pred = np.array([float(p[name]) for s, p in zip(structures, preds) if name in s.properties])
            if grouped is not None:
                true, pred = grouped
            row["properties"][name] = {"n": int(true.size), "mae": float(np.abs(pred - true).mean()),
                                       "rmse": float(np.sqrt(((pred - true) ** 2).mean())), "unit": handle.unit(name)}
            head = intervals_by_property(handle.heads).get(name)      # the model's prediction interval of it
            if head is not None:
                width = np.array([float(p[head]) for s, p in zip(structures, preds) if name in s.properties])
                row["properties"][name]["interval"] = {
                    "head": head, "nominal": handle.heads[head]["interval"]["coverage"],
                    "mean_half_width": float(width.mean()), "coverage": interval_coverage(true, pred, width)}
            property_parity.setdefault(name, {}).update({f"{Path(path).name}_true": true,
                                                         f"{Path(path).name}_pred": pred})
        table[str(path)] = row
        if detail is not None:
            per_structure = [n for n in names if n not in handle.group_heads]    # a group head scores groups
            errors = per_structure_errors(structures, preds, per_structure, lambda n: unit_tag(handle.unit(n)))
            details.extend({"file": str(path), "index": i, "formula": formula(s), **e}
                           for i, (s, e) in enumerate(zip(structures, errors)))
        if e_ref.size or f_ref.size:
            parity.append((Path(path).name, e_ref, e_pred, f_ref, f_pred))
            if group_by:
                row["groups"] = _grouped_rows(structures, preds, group_by)
    if parity:
        print(f"{'data':40s} {'n':>6s} {'E MAE meV/atom':>15s} {'F MAE meV/Å':>12s} {'F RMSE meV/Å':>13s}")
        for name, row in table.items():
            if "e_mae_mev_atom" in row or "f_mae_mev_A" in row:
                print(f"{Path(name).name:40s} {row['n']:6d} {_cell(row, 'e_mae_mev_atom', 15, 2)} "
                      f"{_cell(row, 'f_mae_mev_A', 12, 1)} {_cell(row, 'f_rmse_mev_A', 13, 1)}")
                for value, sub in row.get("groups", {}).items():
                    label = f"  {group_by}={value}"
                    print(f"{label[:40]:40s} {sub['n']:6d} {_cell(sub, 'e_mae_mev_atom', 15, 2)} "
                          f"{_cell(sub, 'f_mae_mev_A', 12, 1)} {_cell(sub, 'f_rmse_mev_A', 13, 1)}")
    if property_parity:
        print(f"{'data':40s} {'property':>12s} {'n':>7s} {'MAE':>12s} {'RMSE':>12s}  unit")
        for name, row in table.items():
            for prop, err in row["properties"].items():
                iv = err.get("interval")
                covered = (f"  {iv['head']} holds {iv['coverage']:.3f} (nominal {iv['nominal']:g}; mean half-width "
                           f"{iv['mean_half_width']:.4g})" if iv else "")
                print(f"{Path(name).name:40s} {prop:>12s} {err['n']:7d} {err['mae']:12.6g} {err['rmse']:12.6g}  "
                      f"{err['unit']}{covered}")
    if detail is not None:
        _write_detail(details, detail)
    if plot:
        from mftcalc.analysis.plots import plot_forcefield_parity, plot_parity
        if parity:
            plot_forcefield_parity(parity, plot)
        for prop, arrays in property_parity.items():
            target = Path(plot).with_name(f"{Path(plot).stem}_{prop}{Path(plot).suffix or '.png'}")
            plot_parity(arrays, target, f"{Path(model_path).name}: {prop}", handle.unit(prop))
            print(f"wrote {target}")
    return table


def _write_detail(rows: List[Dict], path: str) -> None:
    """The per-structure table (columns: every key any row has, in first-seen order; empty cells where a structure
    lacks a label), written atomically; prints the structures with the largest force errors."""
    import csv
    import io

    from mftcalc.files import atomic_write_text
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    worst = sorted((r for r in rows if "force_max_error_eV_per_A" in r), key=lambda r: -r["force_max_error_eV_per_A"])
    named = ", ".join(f"{Path(r['file']).name}:{r['index']} ({r['formula']}, {r['force_max_error_eV_per_A']:.3g} eV/Å)"
                      for r in worst[:5])
    print(f"wrote {path} ({len(rows)} structures)" + (f"; largest force errors: {named}" if named else ""))


def _forcefield_row(structures: Sequence[Structure], preds: Sequence[Dict]) -> Tuple[Dict, Tuple[np.ndarray, ...]]:
    """The table row of :func:`~mftcalc.training.evaluate.errors_from_predictions` in meV: ``n``;
    ``e_mae_mev_atom`` where energies are labelled; ``f_mae_mev_A``, ``f_rmse_mev_A`` where forces are (per force
    component); and the parity arrays: per-atom energies (eV/atom) and force components (eV/Å), reference and
    predicted."""
    errors, arrays = errors_from_predictions(structures, preds)
    row: Dict = {"n": len(structures)}
    for key, column in (("e_mae_per_atom", "e_mae_mev_atom"), ("f_mae", "f_mae_mev_A"), ("f_rmse", "f_rmse_mev_A")):
        if key in errors:
            row[column] = 1000 * errors[key]
    return row, (arrays["e_ref"], arrays["e_pred"], arrays["f_ref"], arrays["f_pred"])


def _grouped_rows(structures: Sequence[Structure], preds: Sequence[Dict], key: str) -> Dict[str, Dict]:
    """Energy and force error rows per value of ``info[key]`` (``(none)`` where a structure lacks the key), in
    order of first appearance."""
    groups: Dict[str, List[int]] = {}
    for i, s in enumerate(structures):
        groups.setdefault(str(s.info.get(key, "(none)")), []).append(i)
    return {value: _forcefield_row([structures[i] for i in idx], [preds[i] for i in idx])[0]
            for value, idx in groups.items()}


def _property_names(path: str, structures: Sequence[Structure], handle) -> List[str]:
    """The labelled properties of a file that the model predicts, with their units checked; ``SystemExit`` when the
    file has no force-field label and none of its property labels is a head of the model."""
    labelled = sorted({name for s in structures for name in s.properties})
    names = [n for n in labelled if n in handle.property_names]
    for name in names:
        units = {s.property_units.get(name, "") for s in structures if name in s.properties} - {""}
        if units and units != {handle.unit(name)}:
            raise SystemExit(f"{path}: property {name!r} is labelled in {sorted(units)} but the model predicts it in "
                             f"{handle.unit(name)!r}; convert the labels to {handle.unit(name)!r}")
    if not names and not any(s.energy is not None or s.forces is not None for s in structures):
        raise SystemExit(f"{path}: its labels are properties {labelled} but the model predicts "
                         f"{handle.property_names or 'no property'}; nothing to compare")
    return names


def _cell(row: Dict, key: str, width: int, digits: int) -> str:
    """A table cell: the value, or ``-`` when the file had no labels for it."""
    return f"{row[key]:{width}.{digits}f}" if key in row else f"{'-':>{width}s}"
