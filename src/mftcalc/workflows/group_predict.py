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
from typing import Any, Dict, List, Optional

import torch

from mftcalc.data.assembly import DEFAULT_WEIGHT_KEY, group_structures
from mftcalc.files import atomic_write_text
from mftcalc.workflows.screen_format import property_column


def group_head_names(metadata: Dict[str, Any]) -> List[str]:
    """Names of a model's group heads, from its metadata."""
    return [k for k, v in metadata.get("heads", {}).items() if v.get("kind") == "group"]


def predict_groups(model: Any, path: str | Path, out: Optional[str | Path], group_key: str,
                   weight_key: str = DEFAULT_WEIGHT_KEY, dtype: torch.dtype = torch.float32,
                   device: str = "cpu") -> List[Dict[str, Any]]:
    """Rows (one per group of ``path``'s frames, in order of first appearance) of every group head of ``model``
    (a checkpoint, an export or a model object); written to ``out`` (``.csv``) when given. Raises, naming the
    fix, when the model has no group head, a frame lacks the group key, or the frames of a group disagree."""
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.data.io import read_structures
    from mftcalc.model.inference import predict_assemblies
    if out is not None and Path(out).suffix.lower() != ".csv":
        raise ValueError(f"--out {out}: group predictions are written as CSV; give a .csv path")
    handle = ModelHandle.load(model, device=device, dtype=dtype)
    names = group_head_names(handle.metadata)
    if not names:
        raise ValueError(f"{model}: the model has no group head (its property heads: {handle.property_names}); "
                         "--group-key is for models fine-tuned on groups (mftcalc finetune --group-key KEY). "
                         "Drop --group-key to predict each structure")
    structures = read_structures(path)
    for name in names:                  # the groups' labels where every frame carries one: shown beside
        if all(name in s.properties or _number(s.info.get(name)) is not None for s in structures):
            structures = [s if name in s.properties else s.with_labels(
                properties={**s.properties, name: _number(s.info[name])}) for s in structures]
    handle.check_structures(structures, forcefield=False)
    assemblies = group_structures(structures, group_key, weight_key, handle.frame_params, where=str(path))
    predicted = predict_assemblies(handle.module, assemblies, names=names, device=handle.device, dtype=dtype)
    rows: List[Dict[str, Any]] = []
    for assembly, values in zip(assemblies, predicted):
        row: Dict[str, Any] = {"group": assembly.info["group"], "n_components": len(assembly.components),
                               "n_atoms": assembly.n_atoms}
        for name, value in values.items():
            row[property_column(handle, name)] = value
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


def _number(value: Any) -> Optional[float]:
    """``value`` as a float when it is one real number, else None."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
