"""Assemblies: one labelled value for a weighted group of component structures (DPA-ADAPT's ``group_property``).

A polymer's cloud point from its repeat unit and end groups, an electrolyte's conductivity from its molecules at
their mole fractions, an adsorption energy from a slab and its adsorbate: the label belongs to the group, not to
any one structure. In a file (any format :func:`mftcalc.data.io.read_structures` reads) each component is one
frame whose ``info`` names its group (``group=...`` by default) and its weight (``weight=...``, default 1); the
frames of one group carry the same label and the same frame parameters (:mod:`mftcalc.data.frame_params`).
Weights are non-zero; negative ones (a reaction: products +ν, reactants −ν) need a head that sums its components
(``group_reduce="sum"``, ``--extensive``): a weighted mean of signed weights is refused
(:func:`check_signed_weights`).

:func:`group_structures` turns such frames into :class:`Assembly` records;
:func:`mftcalc.data.batch.collate_assemblies` (which ``collate`` calls for them) turns assemblies into one batch: the components' fields (``mftcalc.keys``) plus ``group_index [B]``, ``group_weight
[B]`` and the labels ``property:<name> [G]``, one per group, which a model's group head
(:class:`mftcalc.model.heads.GroupHead`) predicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mftcalc.data.structure import Structure

DEFAULT_GROUP_KEY = "group"
DEFAULT_WEIGHT_KEY = "weight"


@dataclass
class Assembly:
    """One group of component structures and its labels.

    Attributes:
        components: the C component structures (any mix of molecules and crystals).
        weights: [C] float64, each component's weight in the group (non-zero, no unit), e.g. mole fractions, or
            signed stoichiometric coefficients for a summing head.
        properties: the group's labels (``{"cloud_point": 305.2}``), units in ``property_units``.
        property_units: unit of each property.
        info: the group's key under ``"group"`` and ``"name"``, its frame parameters and (from
            :func:`group_structures`) ``"frames"``, the indices of its components among the frames grouped.
    """

    components: List[Structure]
    weights: np.ndarray
    properties: Dict[str, float] = field(default_factory=dict)
    property_units: Dict[str, str] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = self.info.get("name", "")
        if not self.components:
            raise ValueError(f"group {name!r} has no component structures")
        self.weights = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if self.weights.shape != (len(self.components),):
            raise ValueError(f"group {name!r}: {self.weights.size} weights for {len(self.components)} components")
        if not (np.all(np.isfinite(self.weights)) and np.all(self.weights != 0)):
            raise ValueError(f"group {name!r}: component weights must be finite and non-zero, got "
                             f"{self.weights.tolist()}")

    @property
    def n_atoms(self) -> int:
        """Atoms of all components together."""
        return int(sum(c.n_atoms for c in self.components))

    @property
    def numbers(self) -> np.ndarray:
        """[n] int64 atomic numbers of all components, in component order."""
        return np.concatenate([c.numbers for c in self.components])

    @property
    def pbc(self) -> np.ndarray:
        """[3] bool: periodic along an axis when any component is."""
        return np.any(np.stack([c.pbc for c in self.components]), axis=0)


def is_assembly(item: Any) -> bool:
    """Whether ``item`` is a group of structures (has ``components``) rather than one structure."""
    return hasattr(item, "components") and hasattr(item, "weights")


def components_of(items: Sequence[Any]) -> List[Structure]:
    """The structures of ``items``: assemblies give their components in order, structures themselves."""
    out: List[Structure] = []
    for item in items:
        out.extend(item.components if is_assembly(item) else [item])
    return out


def _weight(structure: Structure, key: str, where: str) -> float:
    value = structure.info.get(key, 1.0)
    try:
        number = float(np.asarray(value, dtype=np.float64).item())
    except (TypeError, ValueError):
        raise ValueError(f"{where}: component weight {key}={value!r} is not one real number") from None
    if not (math.isfinite(number) and number != 0):
        raise ValueError(f"{where}: component weight {key}={number} must be finite and non-zero (a mole fraction, "
                         "a count, a mass share; negative for a reaction's reactants with --extensive)")
    return number


def check_signed_weights(assemblies: Sequence[Any], reduce_mean: bool, where: str) -> None:
    """Raise ``ValueError`` naming the group and the fix when a head that takes the weighted mean of its components
    (``reduce_mean``) would be given negative weights: their sum can vanish, and a mean of a reaction is not one.
    Summing heads take any non-zero weights."""
    if not reduce_mean:
        return
    for a in assemblies:
        if hasattr(a, "weights") and np.any(np.asarray(a.weights) < 0):
            raise ValueError(f"{where}: group {a.info.get('group', a.info.get('name', ''))!r} has negative component "
                             f"weights {np.asarray(a.weights).tolist()}, and the head takes their weighted mean; "
                             "signed weights (a reaction: products +, reactants -) need a summing head: fine-tune "
                             "with --extensive (group_reduce sum)")


def _same(values: List[Optional[float]]) -> bool:
    return all(v == values[0] for v in values)


def group_structures(structures: Sequence[Structure], group_key: str = DEFAULT_GROUP_KEY,
                     weight_key: str = DEFAULT_WEIGHT_KEY, frame_params: Sequence[str] = (),
                     where: str = "data") -> List[Assembly]:
    """Group frames into assemblies by ``info[group_key]``, groups in order of first appearance.

    Each frame's weight is ``info[weight_key]`` (default 1). The labels (``properties``) and the frame parameters
    named in ``frame_params`` must be equal on every frame of a group: the group carries them once. Raises
    ``ValueError`` naming ``where``, the frame, the group and the fix when a frame has no group key, a weight is
    not a positive number, or the frames of one group disagree on a label or a condition.
    """
    members: Dict[Any, List[int]] = {}
    for k, s in enumerate(structures):
        if group_key not in s.info:
            raise ValueError(f"{where}: frame {k} has no group key {group_key!r}: give every component frame "
                             f"info[{group_key!r}] (in an extxyz comment line {group_key}=...), the same value on "
                             "the frames of one group")
        key = s.info[group_key]
        key = key.item() if isinstance(key, np.generic) else key
        members.setdefault(key if isinstance(key, (str, int)) else str(key), []).append(k)
    out: List[Assembly] = []
    for key, idx in members.items():
        comps = [structures[i] for i in idx]
        label = f"{where}: group {key!r} (frames {', '.join(str(i) for i in idx[:8])}{'...' if len(idx) > 8 else ''})"
        weights = [_weight(structures[i], weight_key, f"{where}: frame {i} (group {key!r})") for i in idx]
        names = sorted({p for c in comps for p in c.properties})
        properties: Dict[str, float] = {}
        units: Dict[str, str] = {}
        for name in names:
            values = [c.properties.get(name) for c in comps]
            if not _same(values):
                raise ValueError(f"{label}: its frames carry different {name!r} values {values[:8]}; a group "
                                 f"has one label: give every frame of the group the same {name}=...")
            properties[name] = float(values[0])
            units[name] = comps[0].property_units.get(name, "")
        info: Dict[str, Any] = {"group": key, "name": str(key), "frames": list(idx)}
        for name in frame_params:
            values = [c.info.get(name) for c in comps]
            if not _same(values):
                raise ValueError(f"{label}: its frames carry different frame parameter {name!r} values "
                                 f"{values[:8]}; a condition belongs to the group: give its frames one value")
            if values[0] is not None:
                info[name] = values[0]
        out.append(Assembly(comps, np.array(weights), properties, units, info))
    return out
