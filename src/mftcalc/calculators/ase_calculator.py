"""``MFTCalculator``: the ASE calculator giving energy, forces, stress and every property head in one pass."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.batch import collate
from mftcalc.data.structure import Structure


class MFTCalculator(Calculator):
    """ASE calculator for an mftcalc model (checkpoint or TorchScript export).

    ``implemented_properties`` = energy, free_energy, energies, forces, stress, plus every property head of the
    model under its own name, so ``atoms.calc.get_property("gap", atoms)`` works; all come from one forward pass
    and are cached by ASE's ``check_state``. Stress is given for structures periodic in at least one direction
    whose cell has a volume (a crystal; a slab or wire over its cell's volume, vacuum included, as plane-wave DFT
    codes give it: ASE's ``FrechetCellFilter(atoms, mask=[1, 1, 0, 0, 0, 1])`` relaxes a slab's in-plane cell).

    Args:
        model: path to a checkpoint/export, or a model object.
        device: torch device. dtype: torch.float32 (default) or torch.float64.
        head: force-field head to use (default: the first).
        dataset: force-field dataset name for every structure; default: ``atoms.info["dataset"]``, else inferred
            from the elements and periodicity where unambiguous, else an error naming the candidates (the rule of
            :mod:`mftcalc.calculators.domains`).
        allow_untrained_elements: warn instead of raising for elements absent from the training data.

    Every calculation checks the structure first (elements, overlapping atoms, dataset: ``ModelHandle.
    check_structure``, the same check as ``predict``/``relax``/``screen``); ``get_property`` of a property head warns
    once when the head is applied outside its training domain, or to a structure beyond its applicability limit
    (:class:`~mftcalc.calculators.model_handle.DomainWarning`).

    A model whose property heads read frame parameters (:mod:`mftcalc.data.frame_params`, e.g. a temperature)
    takes them from ``atoms.info`` (``atoms.info["temperature"] = 300.0``); a change of one counts as a change of
    the system, so the cached results are not reused. Without them energy, forces and stress are still given (the
    force field does not read them), and asking for a property raises, naming the missing parameter.
    """

    implemented_properties: List[str] = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model: Any, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 head: Optional[str] = None, dataset: Optional[str] = None,
                 allow_untrained_elements: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.handle = ModelHandle.load(model, device, dtype, head, dataset, allow_untrained_elements)
        base = ["energy", "free_energy", "energies", "forces", "stress"] if self.handle.forcefield_heads else []
        self.implemented_properties = base + self.handle.property_names

    @property
    def property_units(self) -> dict:
        """Unit of every property head, from the model metadata."""
        return {name: self.handle.unit(name) for name in self.handle.property_names}

    def get_vibrations(self, atoms: Any = None, delta: float = 0.005) -> Any:
        """``ase.vibrations.VibrationsData`` of ``atoms`` (default: the attached ones): the Hessian by central
        differences of step ``delta`` Å, all 6N displaced copies in batched calls of this calculator's model
        (:mod:`mftcalc.workflows.vibrations`). Relax first; a float64 calculator gives the cleanest low modes.
        ``mftcalc.workflows.vibrations.normal_modes`` projects out the rigid-body modes."""
        from mftcalc.workflows.vibrations import hessians, vibrations_data
        atoms = self.atoms if atoms is None else atoms
        if atoms is None:
            raise ValueError("MFTCalculator has no atoms to analyse: pass them, calc.get_vibrations(atoms)")
        structure = Structure.from_ase(atoms)
        return vibrations_data(structure, hessians([structure], self.handle, delta)[0])

    def check_state(self, atoms: Any, tol: float = 1e-15) -> List[str]:
        """ASE's changes since the last calculation, plus ``frame_params`` when a frame parameter the model reads
        from ``atoms.info`` differs from the last calculation's, ``dataset`` when ``atoms.info["dataset"]`` (the
        force-field dataset it names) does, and ``pool_mask`` when ``atoms.arrays["pool_mask"]`` (the atoms a group
        head pools) does."""
        changes = super().check_state(atoms, tol)
        names = self.handle.frame_params
        if names and self.atoms is not None and not changes:
            if any(not _same(self.atoms.info.get(n), atoms.info.get(n)) for n in names):
                changes = list(changes) + ["frame_params"]
        if self.atoms is not None and not changes and not _same(self.atoms.info.get("dataset"),
                                                                atoms.info.get("dataset")):
            changes = list(changes) + ["dataset"]
        if self.atoms is not None and not changes and "pool_mask" in (set(self.atoms.arrays) | set(atoms.arrays)):
            old, new = self.atoms.arrays.get("pool_mask"), atoms.arrays.get("pool_mask")
            if old is None or new is None or not np.array_equal(old, new):
                changes = list(changes) + ["pool_mask"]
        return changes

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(
                f"{name!r} is not provided by this model; it provides {self.implemented_properties}")
        if atoms is None and self.atoms is None and allow_calculation:
            raise ValueError(f"MFTCalculator has no atoms to compute {name!r} for: pass them, "
                             f"calc.get_property({name!r}, atoms), or attach the calculator (atoms.calc = calc) "
                             "and ask the atoms (atoms.get_potential_energy(), atoms.get_forces(), ...)")
        value = super().get_property(name, atoms, allow_calculation)
        if name in self.handle.property_names and self.atoms is not None:   # a head's value is handed out
            structure = Structure.from_ase(self.atoms)
            self.handle.warn_outside_domain([structure], [name])
            self.handle.warn_unfamiliar([structure], [self.results], [name])
        return value

    def calculate(self, atoms: Any = None, properties: Optional[List[str]] = None,
                  system_changes: List[str] = all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        structure = Structure.from_ase(self.atoms)
        dataset = self.handle.check_structure(structure, frame_params=False)
        # without its frame parameters a structure still gets energy, forces and stress (they do not read them);
        # asking for a property head then raises, naming the missing parameter
        frame_names = self.handle.frame_params
        # nor a pool mask that no head of this model reads (refused when a property is asked for)
        with_properties = (all(name in structure.info for name in frame_names)
                           and (structure.pool_mask is None or bool(self.handle.group_heads)))
        if set(properties or []) & set(self.handle.property_names):
            self.handle.check_pool_mask(structure)
            if not with_properties:
                self.handle.check_frame_params(structure)
        batch = collate([structure], dtype=self.handle.dtype, dataset=dataset, properties=[],
                        device=self.handle.device, frame_params=frame_names if with_properties else [])
        has_ff = bool(self.handle.forcefield_heads)
        periodic = structure.stress_defined
        out = self.handle.module(batch, compute_forces=has_ff, compute_stress=has_ff and periodic,
                                 compute_properties=with_properties, features=False)
        results = {}
        if has_ff:
            energy = float(out["energy"][0].detach())
            results.update(energy=energy, free_energy=energy,
                           energies=out["energies"].detach().cpu().double().numpy(),
                           forces=out["forces"].detach().cpu().double().numpy())
            if periodic:
                s = out["stress"][0].detach().cpu().double().numpy()
                results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        for name in self.handle.property_names if with_properties else []:
            results[name] = float(out[name][0].detach())
        self.results = results
        if "stress" in (properties or []) and "stress" not in results:
            raise PropertyNotImplementedError("stress needs a structure periodic in at least one direction whose "
                                              "cell has a volume; give the non-periodic directions cell vectors "
                                              "across the vacuum (e.g. atoms.center(vacuum=10.0, axis=2))")


def _same(a: Any, b: Any) -> bool:
    """Whether two ``atoms.info`` values are equal (numbers and arrays by value)."""
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:  # values numpy cannot compare
        return a is b
