"""Training domains (elements, periodicity) of force-field datasets and property heads, and the force-field
dataset chosen for each structure.

The force-field head has one dataset embedding per pretraining dataset (``metadata["datasets"]``), each fitted
to its own reference method (xTB, DFT with different functionals), so the same structure gets different
energies under different datasets. The dataset of a structure is chosen by this rule, in order:

1. the model has one dataset: that one;
2. an explicit choice (``dataset=`` of the calculator / batched API, ``--dataset`` on the command line), for
   every structure (a structure whose ``info["dataset"]`` names another dataset is warned about once);
3. ``info["dataset"]`` of the structure (as training files carry it); it must name a dataset of the model;
4. the model's own default for the structure's kind, ``metadata["default_datasets"]`` (``{"molecule": ...,
   "crystal": ...}``), when that dataset covers the structure: fine-tuning writes the dataset of its auxiliary
   force-field task there (``xtb_qm9`` for a QM9 property), so ``MFTCalculator("models/mft_gap.pt")`` relaxes
   ethanol with the force field it kept;
5. inferred: the unique dataset whose periodicity matches the structure (molecule: no periodic direction;
   crystal: periodic in all three) and whose elements cover the structure's elements. A molecule or cluster in a
   periodic box with vacuum wider than the model's cutoff (:mod:`mftcalc.geometry.isolation`; the model sees no
   periodic image, so it computes the bare molecule) is matched as a molecule, and as the crystal its cell says
   only when no dataset covers it as a molecule (an isolated atom beside a crystal set). No such dataset, several
   of them, or a dataset of the model whose domain is unknown, raise :class:`DatasetChoiceError` naming the
   candidates and the fix. Example with the shipped models: bulk Si -> ``mlearn_si``; a molecule containing N
   or F -> ``xtb_qm9`` (the only molecular dataset with N and F); a C/H/O molecule such as ethanol is covered
   by ``xtb_qm9``, ``md17_ethanol`` and ``deepmd_nopbc`` and raises; Cu (``mlearn_cu``, ``cu_ace21``) raises.

Domains come from the checkpoint metadata where it carries them (``metadata["dataset_domains"][name] =
{"elements": [Z...], "periodic": bool}``; a head's ``metadata["heads"][name]["domain"]`` likewise). The shipped
checkpoints do not, so the domains of the known pretraining datasets are listed in
:data:`KNOWN_DATASET_DOMAINS`, measured on the pretraining data (every structure of the files the pretraining
config names; for xtb_qm9, QM9's elements). :func:`domains_from_structures` of the replay sets shipped beside the
model (``models/pretrained_replay_molecules.extxyz.gz`` and ``..._materials.extxyz.gz``) gives the same table,
which a test checks; ``pretrain`` could store that dict as ``metadata["dataset_domains"]``.

A property head without a recorded domain gets one derived from the fine-tuning task stored in the checkpoint
(``metadata["finetuning"]["task"]``): ``qm9-<property>`` -> molecules of H, C, N, O, F (the QM9 elements);
``matbench-<dataset>-...`` -> crystals (periodicity only: the elements of the fine-tuning data are not recorded).
Heads with neither (e.g. fine-tuned on a user's file, ``file-<property>``, or the ``ood_score`` head, whose job is
to score the domain) are not checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from mftcalc.data.structure import Structure
from mftcalc.geometry.isolation import isolated_in_box


class DatasetChoiceError(ValueError):
    """The force-field dataset of a structure is ambiguous, unknown or matches no dataset of the model."""


@dataclass(frozen=True)
class Domain:
    """Where a dataset or head was trained: ``elements`` (atomic numbers; None: not recorded), ``periodic``
    (True: crystals periodic in all three directions; False: molecules, no periodic direction) and, for a head
    with frame parameters, their training ranges (:mod:`mftcalc.data.frame_params`)."""

    elements: Optional[FrozenSet[int]]
    periodic: bool
    source: str = ""
    frame_ranges: Tuple[Tuple[str, float, float], ...] = ()        # (name, min, max) of each frame parameter
    group_key: str = ""                # a group head's: the info key that named its training frames' groups

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "Domain":
        elements = data.get("elements")
        ranges = tuple((str(k), float(v[0]), float(v[1])) for k, v in (data.get("frame_params") or {}).items())
        return cls(None if elements is None else frozenset(int(z) for z in elements), bool(data["periodic"]), source,
                   ranges, str(data.get("group_key") or ""))

    def describe(self) -> str:
        kind = "crystals (periodic in 3 directions)" if self.periodic else "molecules (no periodic direction)"
        if self.elements is not None:
            kind = f"{kind} of {_symbols(self.elements)}"
        ranges = ", ".join(f"{k} {lo:g} to {hi:g}" for k, lo, hi in self.frame_ranges)
        return f"{kind} at {ranges}" if ranges else kind

    def outside(self, structure: Structure, kind: Optional[str] = None) -> Dict[str, str]:
        """Why ``structure`` lies outside this domain: ``{"periodicity" | "elements" | "frame parameter <name>" |
        "group": phrase}`` (empty: inside). ``kind``: the structure's :func:`periodicity` as the caller judges it
        (with the model's cutoff); default: from its ``pbc`` alone. ``group``: a group head given one component
        of a group (the structure carries the training data's group key), which it predicts as a group of one."""
        reasons = {}
        kind = kind or periodicity(structure)
        if kind != ("crystal" if self.periodic else "molecule"):
            reasons["periodicity"] = f"it is {_kind_phrase(kind, structure)}"
        if self.elements is not None:
            foreign = sorted(set(int(z) for z in np.unique(structure.numbers)) - self.elements)
            if foreign:
                reasons["elements"] = (f"it contains {_symbols(foreign)}, outside the training elements "
                                       f"{_symbols(self.elements)}")
        for name, lo, hi in self.frame_ranges:
            value = structure.info.get(name)
            if isinstance(value, (int, float, np.number)) and not lo <= float(value) <= hi:
                reasons[f"frame parameter {name}"] = (f"its {name} {float(value):g} lies outside the training "
                                                      f"range {lo:g} to {hi:g}")
        if self.group_key and self.group_key in structure.info:
            reasons["group"] = (f"it carries info[{self.group_key!r}], a component of a group, and is predicted as "
                                f"a group of one; for one value per group use mftcalc predict --group-key "
                                f"{self.group_key} (Python: mftcalc.predict of mftcalc.Assembly groups)")
        return reasons


def _symbols(numbers: Iterable[int]) -> str:
    return " ".join(chemical_symbols[int(z)] for z in sorted(numbers))


def periodicity(structure: Structure, cutoff: Optional[float] = None) -> str:
    """``molecule`` (no periodic direction), ``crystal`` (all three) or ``partial`` (a slab or a wire).

    ``cutoff`` (Å, a model's): a structure periodic in some direction whose vacuum is at least the cutoff across
    every periodic direction (a molecule or cluster in a box, :func:`mftcalc.geometry.isolation.isolated_in_box`)
    is a ``molecule``: the model sees no periodic image and computes it as the bare molecule."""
    if cutoff is not None and boxed(structure, cutoff):
        return "molecule"
    if structure.pbc.all():
        return "crystal"
    return "partial" if structure.pbc.any() else "molecule"


def boxed(structure: Structure, cutoff: float) -> bool:
    """True for a molecule or cluster in a periodic box: periodic in some direction, vacuum ≥ ``cutoff`` (Å)
    across every periodic one."""
    return bool(structure.pbc.any()) and isolated_in_box(structure.positions, structure.cell, structure.pbc, cutoff)


def _kind_phrase(kind: str, structure: Optional[Structure] = None) -> str:
    if kind == "molecule" and structure is not None and structure.pbc.any():
        return "a molecule or cluster in a periodic box (vacuum wider than the model's cutoff)"
    return {"crystal": "a crystal", "molecule": "a molecule", "partial": "periodic in only some directions"}[kind]


def _domain(symbols: str, periodic: bool) -> Domain:
    return Domain(frozenset(atomic_numbers[s] for s in symbols.split()), periodic, "mftcalc's table of the "
                  "pretraining datasets (domains.KNOWN_DATASET_DOMAINS)")


#: Elements and periodicity of the pretraining datasets (measured over all their structures, see module docs).
KNOWN_DATASET_DOMAINS: Dict[str, Domain] = {
    "xtb_qm9": _domain("H C N O F", False),
    "md17_ethanol": _domain("H C O", False),
    "deepmd_nopbc": _domain("H C O", False),
    "deepmd_water": _domain("H O", True),
    "dpgen_mapbi3": _domain("H C N I Pb", True),
    "mlearn_si": _domain("Si", True),
    "mlearn_ge": _domain("Ge", True),
    "mlearn_li": _domain("Li", True),
    "mlearn_mo": _domain("Mo", True),
    "mlearn_cu": _domain("Cu", True),
    "mlearn_ni": _domain("Ni", True),
    "cu_ace21": _domain("Cu", True),
    "fitsnap_ta": _domain("Ta", True),
    "fitsnap_inp": _domain("In P", True),
    "fitsnap_fe": _domain("Fe", True),
    "fitsnap_wbe": _domain("Be W", True),
}

#: QM9's elements (the domain of a head fine-tuned on a ``qm9-<property>`` task).
QM9_ELEMENTS = frozenset(atomic_numbers[s] for s in "H C N O F".split())


def domain_of(structures: Iterable[Structure], cutoff: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """``{"elements": [Z...], "periodic": bool}`` of one dataset's structures (the form of an entry of
    ``metadata["dataset_domains"]``), or None when they mix molecules, crystals or partly periodic structures.

    ``cutoff`` (Å, the model's): molecules in periodic boxes wider than it count as molecules (:func:`periodicity`);
    a crystal set may hold some such boxed atoms or clusters (reference energies, cu_ace21's clusters) and stays
    a crystal set."""
    elements: set = set()
    kinds: set = set()
    for s in structures:
        elements.update(int(z) for z in np.unique(s.numbers))
        kinds.add("boxed" if cutoff is not None and boxed(s, cutoff) else periodicity(s))
    if not kinds or "partial" in kinds:
        return None
    if kinds <= {"molecule", "boxed"}:
        return {"elements": sorted(elements), "periodic": False}
    if kinds <= {"crystal", "boxed"}:
        return {"elements": sorted(elements), "periodic": True}
    return None


def domains_from_structures(structures: Iterable[Structure], cutoff: Optional[float] = None
                            ) -> Dict[str, Dict[str, Any]]:
    """``{info["dataset"]: domain_of(its structures, cutoff)}`` of labelled training structures (the form of
    ``metadata["dataset_domains"]``); raises when a dataset mixes molecules and crystals."""
    groups: Dict[str, list] = {}
    for s in structures:
        name = s.info.get("dataset")
        if name is None:
            raise ValueError("a structure has no info['dataset']; domains are measured on tagged training data")
        groups.setdefault(name, []).append(s)
    out = {}
    for name, members in groups.items():
        domain = domain_of(members, cutoff)
        if domain is None:
            raise ValueError(f"dataset {name!r} mixes {sorted({periodicity(s) for s in members})}: it has no "
                             "single periodicity")
        out[name] = domain
    return out


def dataset_domains(metadata: Mapping[str, Any]) -> Dict[str, Domain]:
    """Domain of every force-field dataset of a model whose domain is known: from the metadata, else from
    :data:`KNOWN_DATASET_DOMAINS`; datasets in neither are left out."""
    recorded = metadata.get("dataset_domains") or {}
    out: Dict[str, Domain] = {}
    for name in metadata.get("datasets", []):
        if name in recorded:
            out[name] = Domain.from_dict(recorded[name], "checkpoint metadata")
        elif name in KNOWN_DATASET_DOMAINS:
            out[name] = KNOWN_DATASET_DOMAINS[name]
    return out


def head_domains(metadata: Mapping[str, Any]) -> Dict[str, Domain]:
    """Training domain of every property head for which the checkpoint records or implies one (module docs)."""
    out: Dict[str, Domain] = {}
    task = str((metadata.get("finetuning") or {}).get("task") or "")
    for name, head in (metadata.get("heads") or {}).items():
        if head.get("kind") == "forcefield":
            continue
        if head.get("domain"):
            out[name] = Domain.from_dict(head["domain"], "head metadata")
        elif task == f"qm9-{name}":
            out[name] = Domain(QM9_ELEMENTS, False, f"derived from the fine-tuning task {task}")
        elif task.startswith("matbench-") and _matbench_property(task) == name:
            out[name] = Domain(None, True, f"derived from the fine-tuning task {task}")
    return out


def _matbench_property(task: str) -> Optional[str]:
    from mftcalc.data.matbench import MATBENCH_DATASETS
    parts = task.split("-")
    meta = MATBENCH_DATASETS.get(parts[1]) if len(parts) > 1 else None
    return meta.property if meta is not None else None


def _where(structure: Structure, position: Optional[int]) -> str:
    label = structure.info.get("name")
    where = "structure" if position is None else f"structure {position}"
    hill = formula(structure)
    return f"{where} ({label}, {hill})" if label else f"{where} ({hill})"


def formula(structure: Structure) -> str:
    """Hill formula of a structure (``C2H6O``)."""
    from ase.formula import Formula
    return str(Formula("".join(chemical_symbols[int(z)] for z in structure.numbers)).format("hill"))


def named(structure: Structure, position: Optional[int] = None, by_formula: bool = False) -> str:
    """How messages name a structure: ``structure``, ``structure 3`` (its ``position``) or, ``by_formula``, its
    formula, then its ``info["name"]``: ``structure 3 (ethanol)``, ``C2H6O (ethanol)``."""
    label = structure.info.get("name")
    head = formula(structure) if by_formula else "structure" if position is None else f"structure {position}"
    return f"{head}{f' ({label})' if label else ''}"


def choose_dataset(structure: Structure, names: Sequence[str], domains: Mapping[str, Domain],
                   explicit: Optional[str] = None, position: Optional[int] = None,
                   defaults: Optional[Mapping[str, str]] = None, cutoff: Optional[float] = None,
                   kind: Optional[str] = None) -> tuple:
    """``(index into names, reason)`` of the force-field dataset of ``structure`` by the rule of the module docs.

    ``explicit``: the dataset chosen by the caller (already checked to be one of ``names``), or None.
    ``position``: index of the structure in its input, for messages. ``defaults``: the model's own default
    dataset per kind (``{"molecule": name, "crystal": name}``, ``metadata["default_datasets"]``, written by
    fine-tuning: the dataset of its auxiliary force-field task), used before inference when it covers the
    structure. ``cutoff``: the model's (Å), which makes a molecule in a wide periodic box a molecule
    (:func:`periodicity`); ``kind``: that periodicity when the caller has judged it already. Raises
    :class:`DatasetChoiceError`.
    """
    if len(names) == 1:
        return 0, "the model's only dataset"
    if explicit is not None:
        return names.index(explicit), "chosen with dataset= / --dataset"
    tag = structure.info.get("dataset")
    if tag is not None:
        if tag not in names:
            raise DatasetChoiceError(f"{_where(structure, position)} has info['dataset'] = {tag!r}, which is not a "
                                     f"dataset of this model ({', '.join(names)}); fix the tag or choose one with "
                                     "dataset= (Python) / --dataset (command line)")
        return names.index(str(tag)), "info['dataset'] of the structure"
    fix = ("choose one with dataset= (MFTCalculator, predict, relax, screen) or --dataset (command line), or set "
           "info['dataset'] of the structure")
    unknown = [n for n in names if n not in domains]
    if unknown:
        raise DatasetChoiceError(f"cannot infer the force-field dataset of {_where(structure, position)}: the "
                                 f"model's dataset(s) {', '.join(unknown)} record no elements or periodicity; "
                                 f"{fix} (datasets: {', '.join(names)})")
    present = frozenset(int(z) for z in np.unique(structure.numbers))
    first = kind or periodicity(structure, cutoff)
    # a boxed molecule is matched as a molecule, then (no molecular dataset covers it) as what its cell says
    for kind in dict.fromkeys([first, periodicity(structure)]):
        boxed_note = " in a periodic box wider than the cutoff" if kind == "molecule" and structure.pbc.any() else ""
        default = (defaults or {}).get(kind)
        if default in names and default in domains and not domains[default].outside(structure, kind):
            return names.index(default), (f"the model's default dataset for a {kind}{boxed_note} "
                                          "(metadata default_datasets)")
        candidates = [n for n in names if not domains[n].outside(structure, kind)]
        if len(candidates) == 1:
            return names.index(candidates[0]), (f"the only {'periodic' if kind == 'crystal' else 'molecular'} "
                                                f"dataset of the model whose elements cover {_symbols(present)}"
                                                f"{boxed_note}")
        if candidates:
            break
    what = f"{_kind_phrase(first, structure)} of {_symbols(present)}"
    if not candidates:
        raise DatasetChoiceError(f"no force-field dataset of the model covers {_where(structure, position)}, "
                                 f"{what}; {fix} (datasets: {', '.join(names)})")
    raise DatasetChoiceError(f"ambiguous force-field dataset for {_where(structure, position)}, {what}: "
                             f"{', '.join(candidates)} all cover it (and give different energies); {fix}")
