"""Error metrics of a model on labelled structures (energy per atom, forces, stress, properties)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mftcalc.data.structure import Structure
from mftcalc.model.inference import predict_structures
from mftcalc.training.sampler import Source


def require_labels(structures: Sequence[Structure], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` (a file) when none of ``structures`` carries an energy, force or
    property label: without one every error would be NaN."""
    if any(s.energy is not None or s.forces is not None or s.properties for s in structures):
        return
    raise ValueError(f"{source}: none of its {len(structures)} structures has an energy, force or property label "
                     "(missing labels: energy, forces, properties), so there is nothing to compare the model with; "
                     "give a labelled file (extxyz: energy=... or a property such as gap=... on each comment line, "
                     "a forces:R:3 column), or use `mftcalc predict` for unlabelled structures")


def forcefield_errors(model: torch.nn.Module, structures: Sequence[Structure], dataset: int = 0,
                      max_atoms: int = 4096) -> Dict[str, float]:
    """Energy MAE/RMSE per atom (eV/atom), force MAE/RMSE per component (eV/Å), stress MAE (eV/Å³) if labelled,
    and ``n_structures``."""
    want_stress = any(s.stress is not None for s in structures)
    preds = predict_structures(model, structures, dataset, compute_forces=True, compute_stress=want_stress,
                               max_atoms=max_atoms)
    return {"n_structures": float(len(structures)), **errors_from_predictions(structures, preds)[0]}


def errors_from_predictions(structures: Sequence[Structure], preds: Sequence[Dict[str, Any]]
                            ) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Energy, force and stress errors of ``structures`` against their predictions ``preds`` (one dict per
    structure, as :func:`~mftcalc.model.inference.predict_structures` returns them).

    Returns the errors, each only where some structure has the label: ``e_mae_per_atom``, ``e_rmse_per_atom``
    (eV/atom), ``f_mae``, ``f_rmse`` (eV/Å, per force component), ``s_mae`` (eV/Å³, where ``preds`` hold
    stresses); and the parity arrays ``e_ref``/``e_pred`` [n labelled] (eV/atom) and ``f_ref``/``f_pred``
    [3 x labelled atoms] (eV/Å)."""
    e_ref = np.array([s.energy / s.n_atoms for s in structures if s.energy is not None])
    e_pred = np.array([float(p["energy"]) / s.n_atoms for s, p in zip(structures, preds) if s.energy is not None])
    f_ref = np.concatenate([s.forces.ravel() for s in structures if s.forces is not None] or [np.zeros(0)])
    f_pred = np.concatenate([p["forces"].ravel() for s, p in zip(structures, preds) if s.forces is not None]
                            or [np.zeros(0)])
    s_err = [(p["stress"] - s.stress).ravel() for s, p in zip(structures, preds)
             if s.stress is not None and "stress" in p]
    out: Dict[str, float] = {}
    if e_ref.size:
        e = e_pred - e_ref
        out.update(e_mae_per_atom=float(np.abs(e).mean()), e_rmse_per_atom=float(np.sqrt((e * e).mean())))
    if f_ref.size:
        f = f_pred - f_ref
        out.update(f_mae=float(np.abs(f).mean()), f_rmse=float(np.sqrt((f * f).mean())))
    if s_err:
        out.update(s_mae=float(np.abs(np.concatenate(s_err)).mean()))
    return out, {"e_ref": e_ref, "e_pred": e_pred, "f_ref": f_ref, "f_pred": f_pred}


def per_structure_errors(structures: Sequence[Structure], preds: Sequence[Dict[str, Any]], properties: Sequence[str],
                         unit_tag: Any) -> List[Dict[str, Any]]:
    """One dict per structure (input order) of its labels, predictions and errors, keys carrying their units:
    ``energy_ref_eV``, ``energy_pred_eV``, ``energy_error_eV_per_atom`` (predicted − reference, per atom) where it
    has an energy label; ``force_mae_eV_per_A`` (per component) and ``force_max_error_eV_per_A`` (the largest
    ‖F_pred − F_ref‖ of an atom) where it has forces; ``<p>_ref_<unit>``, ``<p>_pred_<unit>`` for each of
    ``properties`` it is labelled with (``unit_tag(p)``: the head's unit as a column suffix, e.g. ``Hartree``).
    Values absent for a structure are absent from its dict."""
    rows = []
    for s, p in zip(structures, preds):
        row: Dict[str, Any] = {"n_atoms": s.n_atoms}
        if s.energy is not None:
            row.update(energy_ref_eV=s.energy, energy_pred_eV=float(p["energy"]),
                       energy_error_eV_per_atom=(float(p["energy"]) - s.energy) / s.n_atoms)
        if s.forces is not None and "forces" in p:
            diff = np.asarray(p["forces"]) - s.forces
            row.update(force_mae_eV_per_A=float(np.abs(diff).mean()),
                       force_max_error_eV_per_A=float(np.linalg.norm(diff, axis=1).max()))
        for name in properties:
            if name in s.properties:
                suffix = unit_tag(name)
                row.update({f"{name}_ref_{suffix}": s.properties[name], f"{name}_pred_{suffix}": float(p[name])})
        rows.append(row)
    return rows


def property_errors(model: torch.nn.Module, structures: Sequence[Structure], name: str,
                    max_atoms: int = 4096, predictions: Optional[np.ndarray] = None) -> Dict[str, float]:
    """MAE and RMSE of property ``name`` (unit of the labels) over the structures that carry it."""
    labelled = [s for s in structures if name in s.properties]
    if not labelled:
        raise ValueError(f"no structure carries a label for property {name!r}")
    if predictions is None:
        predictions = property_predictions(model, labelled, name, max_atoms)
    y = np.array([s.properties[name] for s in labelled])
    diff = predictions - y
    return {"mae": float(np.abs(diff).mean()), "rmse": float(np.sqrt((diff * diff).mean())), "n": float(len(y))}


def property_predictions(model: torch.nn.Module, structures: Sequence[Structure], name: Union[str, Sequence[str]],
                         max_atoms: int = 4096) -> Union[np.ndarray, List[np.ndarray]]:
    """Predicted values [B] of property ``name``; one array per name, from one pass, for a list of names.
    ``structures`` may be assemblies (:mod:`mftcalc.data.assembly`): values [G] of a group head (and the
    components' largest ``ood_score``)."""
    names = [name] if isinstance(name, str) else list(name)
    if structures and hasattr(structures[0], "components"):       # assemblies: one row per group
        from mftcalc.model.inference import predict_assemblies
        preds = predict_assemblies(model, structures, max_atoms)
    else:
        preds = predict_structures(model, structures, 0, compute_forces=False, compute_stress=False,
                                   max_atoms=max_atoms)
    for n in names:
        if preds and n not in preds[0]:
            raise KeyError(f"model has no property head {n!r}")
    arrays = [np.array([float(p[n]) for p in preds]) for n in names]
    return arrays[0] if isinstance(name, str) else arrays


def validation_metrics(model: torch.nn.Module, val_sources: Sequence[Source]) -> Dict[str, float]:
    """``val/<source>/<metric>`` of ``model`` on each validation source: energy/force/stress errors
    (:func:`forcefield_errors`) or property MAE/RMSE (:func:`property_errors`)."""
    metrics: Dict[str, float] = {}
    for source in val_sources:
        if source.kind == "forcefield":
            errs = forcefield_errors(model, source.structures, source.dataset_index)
        else:
            errs = property_errors(model, source.structures, source.property)
        metrics.update({f"val/{source.name}/{k}": v for k, v in errs.items() if k not in ("n", "n_structures")})
    return metrics
