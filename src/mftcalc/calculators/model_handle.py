"""A loaded model plus what callers need to address it: head, dataset choice, properties, elements, dtype, and
the one structure check every path applies (trained elements, overlapping atoms, force-field dataset)."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc.devices import describe_device, resolve_device
from mftcalc.calculators.checks import check_overlaps, unread_charge_or_spin
from mftcalc.calculators.domains import (Domain, choose_dataset, dataset_domains, formula, head_domains, named,
                                         periodicity)
from mftcalc.data.frame_params import frame_param_matrix, model_frame_params
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import load_any

_log = logging.getLogger(__name__)


class DomainWarning(UserWarning):
    """A property head is applied outside the domain (periodicity, elements) it was trained on, or to a structure
    farther from its training structures than any of them is from the rest (applicability score), or a structure
    states a charge or spin the model does not read."""


@dataclass
class ModelHandle:
    """Model (eager ``MFTModel`` or TorchScript) with metadata-derived lookups.

    Attributes:
        module: the model, eval mode, on ``device`` in ``dtype``.
        metadata: the checkpoint metadata (heads, datasets, elements, units).
        dataset: index of the force-field dataset chosen by the caller for every structure, or None: chosen per
            structure by the rule of :mod:`mftcalc.calculators.domains` (:meth:`dataset_index`).
        source: the file the model was loaded from (None for a model object); worker processes reload it.
    """

    module: torch.nn.Module
    metadata: Dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    dataset: Optional[int] = None
    allow_untrained_elements: bool = False
    source: Optional[str] = None
    _checked: set = field(default_factory=set, repr=False)
    _said: set = field(default_factory=set, repr=False)          # dataset choices logged, domain warnings given
    _limits: Dict[str, float] = field(default_factory=dict, repr=False)   # applicability limits, computed once

    @classmethod
    def load(cls, model: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             head: Optional[str] = None, dataset: Optional[str] = None,
             allow_untrained_elements: bool = False) -> "ModelHandle":
        """From a path (checkpoint or TorchScript export) or a model object (``metadata`` attribute optional).

        ``device``: ``"cpu"``, ``"cuda[:k]"`` or ``"auto"`` (CUDA when torch sees a device, else CPU); the choice is
        logged (logger ``mftcalc.calculators.model_handle``, INFO) with, on CUDA, the float32 matrix-product
        precision in force (:func:`describe_device`). Every batch of the batched paths is built on this device
        (``collate(..., device=handle.device)``), so nothing else moves."""
        requested, device = device, resolve_device(device)
        if isinstance(model, (str, Path)):
            module, metadata = load_any(model, dtype)
        else:
            module = model
            metadata = getattr(model, "metadata", None)
            if metadata is None:
                from mftcalc.model.checkpoint import model_metadata
                metadata = model_metadata(model)
        module = module.to(device=device, dtype=dtype).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        _log.info("model on %s", describe_device(device, requested))
        handle = cls(module, metadata, device, dtype, allow_untrained_elements=allow_untrained_elements,
                     source=str(model) if isinstance(model, (str, Path)) else None)
        if head is not None:
            ff = handle.forcefield_heads
            if head not in ff:
                raise KeyError(f"model has no force-field head {head!r}; force-field heads: {ff}, "
                               f"property heads: {handle.property_names}")
            module.active_ff_head = head
        if dataset is not None:
            names = handle.dataset_names
            if dataset not in names:
                raise KeyError(f"model has no dataset {dataset!r}; datasets: {names}")
            handle.dataset = names.index(dataset)
        return handle

    def load_kwargs(self) -> Dict[str, Any]:
        """Arguments of :meth:`load` that rebuild this handle from its model file (head, dataset, dtype, ...)."""
        return {"device": str(self.device), "dtype": self.dtype, "head": getattr(self.module, "active_ff_head", None) or None,
                "dataset": self.dataset_names[self.dataset] if self.dataset is not None else None,
                "allow_untrained_elements": self.allow_untrained_elements}

    @property
    def heads(self) -> Dict[str, Dict[str, Any]]:
        return dict(self.metadata.get("heads", {}))

    @property
    def forcefield_heads(self) -> List[str]:
        return [k for k, v in self.heads.items() if v.get("kind") == "forcefield"]

    @property
    def group_heads(self) -> List[str]:
        """Property heads that give one value per group of structures (:mod:`mftcalc.data.assembly`)."""
        return [k for k, v in self.heads.items() if v.get("kind") == "group"]

    @property
    def property_names(self) -> List[str]:
        return [k for k, v in self.heads.items() if v.get("kind") != "forcefield"]

    @property
    def dataset_names(self) -> List[str]:
        return list(self.metadata.get("datasets", ["default"]))

    @property
    def elements(self) -> List[int]:
        return list(self.metadata.get("elements", []))

    @property
    def frame_params(self) -> List[str]:
        """Names of the frame parameters the property heads read from each structure's ``info``, in the model's
        column order (:mod:`mftcalc.data.frame_params`); empty for most models."""
        return list(getattr(self.module, "frame_param_names", []))

    @property
    def frame_param_units(self) -> Dict[str, str]:
        """``{name: unit}`` of :attr:`frame_params` as the checkpoint metadata declares them."""
        return model_frame_params(self.heads)

    def unit(self, name: str) -> str:
        return str(self.heads.get(name, {}).get("unit", ""))

    def check_elements(self, numbers: Sequence[int]) -> None:
        """Raise (or warn, if allowed) for atomic numbers outside the elements the model was trained on."""
        known = self.elements
        if not known:
            return
        unseen = sorted(set(int(z) for z in np.unique(numbers)) - set(known) - self._checked)
        if not unseen:
            return
        from ase.data import chemical_symbols
        names = ", ".join(chemical_symbols[z] for z in unseen)
        trained = ", ".join(chemical_symbols[z] for z in known)
        msg = (f"element(s) {names} were never seen in training (the model was trained on {trained}); their "
               "type embedding exists but is untrained, so predictions for them are not meaningful")
        if not self.allow_untrained_elements:
            raise ValueError(msg + "; pass allow_untrained_elements=True to predict anyway")
        warnings.warn(msg, stacklevel=3)
        self._checked.update(unseen)

    @property
    def cutoff(self) -> Optional[float]:
        """The model's neighbour cutoff (Å), which decides whether a molecule in a periodic box is one
        (:func:`~mftcalc.calculators.domains.periodicity`); None when the module does not expose ``e_rcut``."""
        value = getattr(self.module, "e_rcut", None)
        return None if value is None else float(value)

    @property
    def dataset_domains(self) -> Dict[str, Domain]:
        """Elements and periodicity of each force-field dataset whose domain is known (see ``domains``)."""
        return dataset_domains(self.metadata)

    @property
    def head_domains(self) -> Dict[str, Domain]:
        """Training domain of each property head that records or implies one (see ``domains``)."""
        return head_domains(self.metadata)

    def dataset_index(self, structure: Structure, position: Optional[int] = None) -> int:
        """Force-field dataset index of ``structure`` (rule of :mod:`mftcalc.calculators.domains`); each distinct
        choice is logged once (logger ``mftcalc.calculators.model_handle``, INFO). ``position``: for messages.
        Raises :class:`~mftcalc.calculators.domains.DatasetChoiceError` when the choice is ambiguous."""
        names = self.dataset_names
        explicit = names[self.dataset] if self.dataset is not None else None
        kind = periodicity(structure, self.cutoff)                  # judged once: the vacuum test scans atoms
        index, reason = choose_dataset(structure, names, self.dataset_domains, explicit, position,
                                       self.metadata.get("default_datasets"), self.cutoff, kind)
        tag = structure.info.get("dataset")
        if explicit is not None and len(names) > 1 and tag is not None and tag != explicit \
                and ("override", tag) not in self._said:
            self._said.add(("override", tag))
            warnings.warn(f"structures tagged info['dataset'] = {tag!r} are evaluated with the dataset {explicit!r} "
                          "chosen with dataset= / --dataset", stacklevel=3)
        if ("dataset", index, reason) not in self._said:
            self._said.add(("dataset", index, reason))
            _log.info("force-field dataset %r (%s)", names[index], reason)
        domain = self.dataset_domains.get(names[index])
        if domain is not None and ("dataset-domain", index) not in self._said:
            outside = domain.outside(structure, kind)
            if outside:                   # chosen (or the only one) though it never saw such structures
                self._said.add(("dataset-domain", index))
                warnings.warn(f"force-field dataset {names[index]!r} ({reason}) was trained on {domain.describe()}: "
                              f"{named(structure, by_formula=True)} is outside it: {'; '.join(outside.values())}. Its energy and forces are "
                              "extrapolations; further structures outside it are not reported", DomainWarning,
                              stacklevel=3)
        return index

    def check_structure(self, structure: Structure, position: Optional[int] = None, forcefield: bool = True,
                        frame_params: bool = True) -> int:
        """The check of every path into the model: elements seen in training (:meth:`check_elements`), no
        overlapping atoms (:func:`~mftcalc.calculators.checks.check_overlaps`), every frame parameter the
        property heads read (:meth:`check_frame_params`) and an unambiguous force-field dataset. Returns the
        dataset index; raises ``ValueError`` whose message starts with the structure.
        ``forcefield=False`` (a caller that reads property heads only) skips the dataset rule and returns 0: the
        dataset embedding enters only the force-field head, so property values do not depend on it.
        ``frame_params=False`` (a caller that reads no property head: descriptors, vibrations) skips their check."""
        try:
            self.check_elements(structure.numbers)
            check_overlaps(structure)
        except ValueError as exc:
            raise type(exc)(f"{named(structure, position)}: {exc}") from None
        if frame_params:
            self.check_frame_params(structure, position)
            self.check_pool_mask(structure, position)
        stated = unread_charge_or_spin(structure, self.frame_params)
        if stated is not None and "charge" not in self._said:
            self._said.add("charge")
            warnings.warn(f"{named(structure, position)} ({formula(structure)}) states {stated}, which this model does not read: it "
                          "takes no charge or spin input, so its energy, forces and properties are the same for every "
                          "charge and spin of these atoms (the shipped models were trained on neutral, closed-shell "
                          "molecules and on crystals). Further such structures are not reported", DomainWarning,
                          stacklevel=3)
        return self.dataset_index(structure, position) if self.forcefield_heads and forcefield else 0

    def check_frame_params(self, structure: Structure, position: Optional[int] = None) -> None:
        """Raise ``ValueError`` naming the structure, the parameter, its unit and the fix when ``structure`` lacks
        a frame parameter the property heads read (:attr:`frame_params`), or has one that is not a finite
        number."""
        if self.frame_params:
            try:
                frame_param_matrix([structure], self.frame_params, self.frame_param_units)
            except ValueError as exc:
                raise ValueError(str(exc).replace("structure 0", "structure" if position is None
                                                  else f"structure {position}", 1)) from None

    def check_pool_mask(self, structure: Structure, position: Optional[int] = None) -> None:
        """Raise ``ValueError`` naming the structure and the fix when it carries a pool mask
        (``atoms.arrays["pool_mask"]``) and the model has no group head: per-structure heads pool every atom, so
        the mask would be ignored and the value would not be the one asked for."""
        if structure.pool_mask is not None and not self.group_heads:
            raise ValueError(f"{named(structure, position)} has a pool_mask, which only a group head "
                             f"reads (a model fine-tuned with --group-key); this model's property heads "
                             f"{self.property_names} pool every atom and would ignore it. Remove the mask "
                             "(del atoms.arrays['pool_mask']) or use a group-property model")

    def check_structures(self, structures: Sequence[Structure], forcefield: bool = True,
                         frame_params: bool = True) -> List[int]:
        """:meth:`check_structure` of each structure (raising at the first bad one); their dataset indices."""
        return [self.check_structure(s, k, forcefield, frame_params) for k, s in enumerate(structures)]

    def warn_outside_domain(self, structures: Sequence[Structure], names: Optional[Sequence[str]] = None) -> None:
        """Warn (:class:`DomainWarning`, once per head per handle, i.e. once per run) when a property head in
        ``names`` (default: all) is applied to a structure outside its training domain; the warning names the
        head, the first such structure and every reason (periodicity, elements)."""
        domains = self.head_domains
        for name in (self.property_names if names is None else names):
            domain = domains.get(name)
            if domain is None or ("domain", name) in self._said:
                continue
            for s in structures:
                reasons = self._outside(s, domain)
                if reasons:
                    self._said.add(("domain", name))
                    where = named(s, by_formula=True)
                    warnings.warn(f"property head {name!r} ({self.unit(name)}) is applied outside its training "
                                  f"domain, {domain.describe()} ({domain.source}): {where} is outside it: "
                                  f"{'; '.join(reasons.values())}. Its values there are extrapolations; further "
                                  "structures outside the domain are not reported", DomainWarning, stacklevel=3)
                    break

    @property
    def applicability_heads(self) -> List[str]:
        """The applicability-score heads (kind ``knn_ood``, e.g. ``ood_score``) of a fine-tuned model."""
        return [k for k, v in self.heads.items() if v.get("kind") == "knn_ood"]

    def applicability_limit(self, name: str) -> float:
        """The largest score of head ``name`` over its own training structures, each scored against the others
        (:func:`mftcalc.model.applicability.training_score_limit`; dimensionless, computed once per handle). NaN
        when the module does not expose the head (a model object without ``property_heads``)."""
        if name not in self._limits:
            from mftcalc.model.applicability import training_score_limit
            heads = getattr(self.module, "property_heads", None)
            head = getattr(heads, name, None) if heads is not None else None
            self._limits[name] = training_score_limit(head) if head is not None else float("nan")
        return self._limits[name]

    def warn_unfamiliar(self, structures: Sequence[Optional[Structure]], rows: Sequence[Dict[str, Any]],
                        names: Optional[Sequence[str]] = None, labels: Optional[Sequence[str]] = None) -> None:
        """Warn (:class:`DomainWarning`, once per handle, i.e. once per run) when property values are handed out
        for a structure whose applicability score exceeds :meth:`applicability_limit`: it lies farther from the
        fine-tuning's training structures than any of them from the rest, so the values are extrapolations.

        ``rows``: one dict per structure (same order), holding each applicability head's score; ``names``: the
        heads whose values are handed out (default all; the score heads themselves do not count). A structure
        outside a handed-out head's training domain (elements, periodicity) is left to
        :meth:`warn_outside_domain`, which names the reason. ``labels``: how to name each row (default: the
        structure's formula and name); a row of a group of structures has no single structure (None)."""
        handed = [n for n in (self.property_names if names is None else names)
                  if self.heads.get(n, {}).get("kind") != "knn_ood"]
        if not handed or "unfamiliar" in self._said:
            return
        for score_name in self.applicability_heads:
            limit = self.applicability_limit(score_name)
            if not np.isfinite(limit):
                continue
            for k, (structure, row) in enumerate(zip(structures, rows)):
                value = row.get(score_name)
                if value is None or not float(value) > limit or (structure is not None
                                                                 and self._outside_domain(structure, handed)):
                    continue
                self._said.add("unfamiliar")
                why = ("it holds an element no property-training structure had" if not np.isfinite(float(value))
                       else f"beyond {limit:.3g}, the largest score of a training structure against the others")
                warnings.warn(f"{labels[k] if labels is not None else named(structure, by_formula=True)} has "
                              f"{score_name} {float(value):.3g} ({why}): it is unlike every structure the property "
                              f"heads {handed} were fine-tuned on, so their values for it are extrapolations, and a "
                              f"prediction interval is not calibrated there. Further such structures are not "
                              f"reported; read {score_name!r} for each (a column of predict/relax/screen, or "
                              f"calc.get_property({score_name!r}))", DomainWarning, stacklevel=3)
                return

    def _outside(self, structure: Structure, domain: Domain) -> Dict[str, str]:
        """Why ``structure`` lies outside ``domain`` (periodicity judged at the model's cutoff); empty if it does
        not. The one test behind :meth:`warn_outside_domain` and :meth:`warn_unfamiliar`."""
        return domain.outside(structure, periodicity(structure, self.cutoff))

    def _outside_domain(self, structure: Structure, names: Sequence[str]) -> bool:
        """Whether ``structure`` lies outside the training domain of any head in ``names``."""
        domains = self.head_domains
        return any(self._outside(structure, domains[n]) for n in names if n in domains)
