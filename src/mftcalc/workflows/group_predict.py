"""``mftcalc predict MODEL DATA --group-key KEY``: one row per assembly (a group of component frames) for the
model's group heads (:class:`mftcalc.model.heads.GroupHead`, fine-tuned with ``mftcalc finetune --group-key``).

Columns: ``group``, ``n_components``, ``n_atoms``, each group head's value ``<name>_<unit>``, ``ood_score_unitless``
(the largest of the components' scores) when the model has one, and ``<name>_<unit>_label`` where the data
carries the group's label. Written atomically as CSV.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mftcalc.data.assembly import DEFAULT_WEIGHT_KEY, group_structures
from mftcalc.files import atomic_write_text
from mftcalc.workflows.screen_format import property_column


def predict_groups(model: Any, path: str | Path, out: Optional[str | Path], group_key: str,
                   weight_key: str = DEFAULT_WEIGHT_KEY, dtype: torch.dtype = torch.float32,
                   device: str = "cpu", relax_options: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """Rows (one per group of ``path``'s frames, in order of first appearance) of every group head of ``model``
    (a checkpoint, an export or a model object); written to ``out`` (``.csv``) when given. Raises, naming the
    fix, when the model has no group head, a frame lacks the group key, or the frames of a group disagree.

    ``relax_options`` (``fmax``, ``steps``, ``optimizer``, ``cell_filter`` of :func:`mftcalc.relax`): relax every
    component with the model's force field first, then predict the groups at the relaxed geometries; the rows
    then also give ``n_converged`` (components that reached ``fmax``) and ``fmax_eV_per_A`` (the largest)."""
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.data.io import read_structures
    from mftcalc.model.inference import predict_assemblies
    if out is not None and Path(out).suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: group predictions are written as CSV; give a .csv path")
    handle = ModelHandle.load(model, device=device, dtype=dtype)
    names = handle.group_heads
    if not names:
        raise ValueError(f"{model}: the model has no group head (its property heads: {handle.property_names}); "
                         "--group-key is for models fine-tuned on groups (mftcalc finetune --group-key KEY). "
                         "Drop --group-key to predict each structure")
    structures = read_structures(path)
    for name in names:                  # the groups' labels where every frame carries one: shown beside
        if all(name in s.properties or _number(s.info.get(name)) is not None for s in structures):
            structures = [s if name in s.properties else s.with_labels(
                properties={**s.properties, name: _number(s.info[name])}) for s in structures]
    handle.check_structures(structures, forcefield=relax_options is not None)
    assemblies = group_structures(structures, group_key, weight_key, handle.frame_params, where=str(path))
    # elements and periodicity outside the heads' training domain warn (the group key itself is expected here)
    handle.warn_outside_domain([s.with_labels(info={k: v for k, v in s.info.items() if k != group_key})
                                for s in structures], names)
    relaxed = None
    if relax_options is not None:                    # the force field relaxes every component, then regroup
        from mftcalc.relaxation.api import relax
        relaxed = relax(structures, handle, properties=[], **relax_options)
        structures = [s.with_labels(positions=r.structure.positions, cell=r.structure.cell, energy=None,
                                    forces=None, stress=None) for s, r in zip(structures, relaxed)]
        assemblies = group_structures(structures, group_key, weight_key, handle.frame_params, where=str(path))
    predicted = predict_assemblies(handle.module, assemblies, names=names, device=handle.device, dtype=dtype)
    handle.warn_unfamiliar([None] * len(predicted), predicted, names,
                           [f"group {a.info['group']!r} (its least familiar component)" for a in assemblies])
    rows: List[Dict[str, Any]] = []
    for assembly, values in zip(assemblies, predicted):
        row: Dict[str, Any] = {"group": assembly.info["group"], "n_components": len(assembly.components),
                               "n_atoms": assembly.n_atoms}
        for name, value in values.items():
            row[property_column(handle, name)] = value
        if relaxed is not None:
            parts = [relaxed[i] for i in assembly.info["frames"]]
            row["n_converged"] = sum(r.converged for r in parts)
            row["fmax_eV_per_A"] = max(r.fmax for r in parts)
        for name in names:
            if name in assembly.properties:
                row[property_column(handle, name) + "_label"] = assembly.properties[name]
        rows.append(row)
    if out is not None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out, text.getvalue())
    return rows


def group_keys_of(metadata: Dict[str, Any], name: str) -> Optional[Tuple[str, str]]:
    """``(group key, weight key)`` that group head ``name`` was trained with (its domain record), or None."""
    head = metadata.get("heads", {}).get(name, {})
    domain = head.get("domain") or {}
    if head.get("kind") != "group" or not domain.get("group_key"):
        return None
    return str(domain["group_key"]), str(domain.get("weight_key") or DEFAULT_WEIGHT_KEY)


def score_groups(handle: Any, structures: Sequence[Any], name: str, where: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Labels and predictions [G] of group head ``name`` over ``structures`` grouped by the key it was trained
    with, when they carry it (``mftcalc evaluate``); None when none carries it (each structure is then a group
    of one). Raises ``ValueError`` when only some carry it."""
    from mftcalc.model.inference import predict_assemblies
    keys = group_keys_of(handle.metadata, name)
    labelled = [s for s in structures if name in s.properties]
    if keys is None or not any(keys[0] in s.info for s in labelled):
        return None
    missing = [k for k, s in enumerate(labelled) if keys[0] not in s.info]
    if missing:
        raise ValueError(f"{where}: {len(missing)} of the {len(labelled)} frames labelled with {name!r} have no "
                         f"group key {keys[0]!r} (frame {missing[0]} of them first): give every frame its group, or "
                         "none (each structure is then a group of one)")
    groups = group_structures(labelled, keys[0], keys[1], handle.frame_params, where)
    predicted = predict_assemblies(handle.module, groups, names=[name], device=handle.device, dtype=handle.dtype)
    return (np.array([g.properties[name] for g in groups]), np.array([r[name] for r in predicted]))


def _number(value: Any) -> Optional[float]:
    """``value`` as a float when it is one real number, else None."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
