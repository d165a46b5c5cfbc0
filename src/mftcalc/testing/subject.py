"""The model under check: a float64 copy loaded and called exactly as the calculator does (``ModelHandle``: the
structure check and force-field dataset choice, then ``module(batch, ...)``), with per-structure results."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc import keys as K
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.batch import collate
from mftcalc.data.structure import Structure
from mftcalc.testing.results import CheckResult, compare, measured

#: property-head classes, by how the value must behave when the structure is repeated or joined with another
INTENSIVE, EXTENSIVE, POOLED, DIPOLE, R2, OTHER = "intensive", "extensive", "pooled", "dipole", "r2", "other"
UNITS = {K.ENERGY: "eV", K.FORCES: "eV/Å", K.STRESS: "eV/Å³", K.ENERGIES: "eV"}

Row = Dict[str, np.ndarray]


def head_classes(metadata: Dict[str, Any]) -> Dict[str, str]:
    """``{property head: class}`` from checkpoint metadata: a scalar head is ``extensive`` (a sum of per-atom
    terms) or ``intensive`` (their mean); the applicability score (``knn_ood``, a function of the mean of per-atom
    features), the prediction interval (``interval``, a constant times it) and a group head on one structure
    (``group``: a function of the structure's mean node features) are ``pooled``: equal in a
    supercell, with no rule for two structures joined; the dipole magnitude and ⟨R²⟩ heads, which read positions,
    are ``dipole`` and ``r2``; other kinds ``other``."""
    out = {}
    for name, head in (metadata.get("heads") or {}).items():
        kind = head.get("kind")
        if kind == "forcefield":
            continue
        if kind == "scalar":
            out[name] = EXTENSIVE if head.get("extensive") else INTENSIVE
        elif kind in ("knn_ood", "interval", "group"):   # an interval head is a constant times the score; a group
            # head on one structure (a group of one) is a function of its mean node features
            out[name] = POOLED
        elif kind in (DIPOLE, R2):
            out[name] = kind
        else:
            out[name] = OTHER
    return out


@dataclass
class Subject:
    """A loaded model in float64 and how to call it. ``label``: how reports name it."""

    handle: ModelHandle
    label: str

    @classmethod
    def load(cls, model: Any, dataset: Optional[str] = None, head: Optional[str] = None,
             device: str = "cpu") -> "Subject":
        """From a checkpoint or TorchScript path (loaded in float64) or a model object (deep-copied, then cast to
        float64, so the caller's model is left as it was). Elements the model was not trained on are allowed (with
        the handle's warning): the checks test consistency, which must hold whatever the weights."""
        if isinstance(model, (str, Path)):
            label = str(model)
        else:
            label = type(model).__name__
            metadata = getattr(model, "metadata", None)       # a plain attribute: a ScriptModule's copy drops it
            if metadata is None and isinstance(model, torch.jit.ScriptModule):
                raise ValueError("a TorchScript module object carries no metadata (heads, units, datasets): pass the "
                                 "export's path, or set module.metadata to the metadata load_any returns")
            with torch.no_grad():                              # a ScriptModule copied under grad has non-leaf weights
                model = copy.deepcopy(model)
            if metadata is not None:
                model.metadata = metadata
        handle = ModelHandle.load(model, device=device, dtype=torch.float64, head=head, dataset=dataset,
                                  allow_untrained_elements=True)
        return cls(handle, label)

    @property
    def module(self) -> torch.nn.Module:
        return self.handle.module

    @property
    def has_forcefield(self) -> bool:
        return bool(self.handle.forcefield_heads)

    @property
    def properties(self) -> Dict[str, str]:
        """``{property head: class}`` (:func:`head_classes`)."""
        return head_classes(self.handle.metadata)

    def cutoff(self, name: str) -> Optional[float]:
        """The module's cutoff ``e_rcut`` or ``a_rcut`` (Å), None when it does not expose it."""
        value = getattr(self.module, name, None)
        return float(value) if value is not None else None

    def datasets(self, structures: Sequence[Structure]) -> List[int]:
        """Force-field dataset index of each structure, by the calculator's rule (after its structure check)."""
        return self.handle.check_structures(structures)

    def evaluate(self, structures: Sequence[Structure], forces: bool = True) -> List[Row]:
        """One forward call on all ``structures`` as one batch: per structure ``energy`` (eV), ``energies`` [n]
        (eV), ``forces`` [n, 3] (eV/Å), ``stress`` [3, 3] (eV/Å³, zero unless periodic in 3 directions) when the
        model has a force-field head and ``forces``; every property head's value in its unit. All float64."""
        structures = list(structures)
        datasets = self.datasets(structures)
        batch = collate(structures, dtype=torch.float64, dataset=datasets, properties=[], device=self.handle.device,
                        frame_params=self.handle.frame_params)
        grad = forces and self.has_forcefield
        out = self.module(batch, compute_forces=grad, compute_stress=grad, compute_properties=True, features=False)
        keep = [K.ENERGY, K.ENERGIES] + ([K.FORCES, K.STRESS] if grad else []) + list(self.properties)
        arrays = {k: out[k].detach().cpu().to(torch.float64).numpy() for k in keep if k in out}
        offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in structures])])
        rows: List[Row] = []
        for k in range(len(structures)):
            a, b = offsets[k], offsets[k + 1]
            rows.append({key: (value[a:b] if K.SCOPES.get(key, "system") == "atom" else value[k]).copy()
                         for key, value in arrays.items()})
        return rows

    def one(self, structure: Structure, forces: bool = True) -> Row:
        """:meth:`evaluate` of one structure alone."""
        return self.evaluate([structure], forces)[0]

    def energy(self, structure: Structure) -> float:
        """Energy (eV) of one structure alone, without forces or stress."""
        return float(self.one(structure, forces=False)[K.ENERGY])


def compare_rows(check: str, structure: str, value: Row, expected: Row, keys: Sequence[str], rtol: float,
                 atol: float, note: str = "") -> List[CheckResult]:
    """One result per output in ``keys`` present in ``expected``: ``value[key]`` against ``expected[key]`` with
    the tolerance ``atol + rtol * max|expected[key]|`` (:func:`~mftcalc.testing.results.compare`)."""
    out: List[CheckResult] = []
    for key in keys:
        if key not in expected:
            continue
        if key not in value:           # a model that drops an output fails the check (inf error), it does not pass
            out.append(measured(check, structure, key, float("inf"), 0.0, UNITS.get(key, ""),
                                f"the model returned no {key!r}; it returned {sorted(value)}"))
            continue
        out.append(compare(check, structure, key, value[key], expected[key], rtol, atol, UNITS.get(key, ""), note))
    return out
