"""``check_model``: every physics check of a model (eager, checkpoint or TorchScript export) in one report."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Optional, Sequence

from mftcalc.testing.composition import check_additivity, check_batch, check_supercell
from mftcalc.testing.derivatives import (check_acoustic_sum, check_cutoff_smoothness, check_forces_fd,
                                         check_stress_fd)
from mftcalc.testing.export import check_export
from mftcalc.testing.results import Report, Tolerances
from mftcalc.testing.structures import is_molecule, label, probe_structures
from mftcalc.testing.subject import Subject
from mftcalc.testing.symmetry import check_permutation, check_rotation, check_translation

#: the checks, in the order they run, with what each compares
CHECKS: Dict[str, str] = {
    "forces_fd": "forces = −dE/dx (central finite differences)",
    "stress_fd": "stress = (1/V) dE/dε (finite symmetric strain), crystals",
    "rotation": "energy and heads invariant, forces rotate, stress as R σ Rᵀ; molecules and periodic cells",
    "translation": "every output invariant, crystals also wrapped across the periodic boundary",
    "permutation": "forces and per-atom energies permute, the rest invariant",
    "supercell": "2x1x1 and 2x2x1: energy and extensive heads scale, forces tile, stress, intensive and pooled "
                 "heads equal",
    "additivity": "two molecules beyond the cutoff: energy and extensive heads add, intensive ones average, forces "
                  "are each one's",
    "acoustic_sum": "Σ F = 0 (all structures), Σ r × F = 0 (molecules)",
    "cutoff": "energy, forces and property heads continuous as a neighbour crosses e_rcut and a_rcut",
    "batch": "a batch gives each structure what it gets alone",
    "export": "TorchScript export equals the eager model",
}


def check_model(model: Any, structures: Optional[Sequence[Any]] = None, checks: Optional[Sequence[str]] = None,
                tolerances: Optional[Tolerances] = None, dataset: Optional[str] = None, head: Optional[str] = None,
                n_fd: int = 12, seed: int = 0, fused_export: bool = False, device: str = "cpu") -> Report:
    """Run the physics checks (:data:`CHECKS`) of a model on a few small structures; a report of named results.

    The model is loaded or copied in float64 and called as the calculator calls it (``ModelHandle``: structure
    check, force-field dataset rule, ``module(batch, ...)``); the caller's model is not changed.

    Args:
        model: an ``MFTModel`` (or any module with its call signature), a checkpoint path or a TorchScript export
            path (``mftcalc export``).
        structures: mftcalc ``Structure``, ``ase.Atoms`` or pymatgen objects (a few atoms each); default
            :func:`~mftcalc.testing.structures.probe_structures` (a molecule and a crystal). Checks that need a
            molecule (additivity) or a crystal (stress, supercell) are skipped, with the reason, without one.
        checks: names from :data:`CHECKS` (default: all).
        tolerances: :class:`~mftcalc.testing.results.Tolerances` (default: float64 ones).
        dataset, head: force-field dataset name and head, as for ``MFTCalculator`` (default: its rule).
        n_fd: coordinates per structure in the finite-difference force check. seed: of rotations, permutations
            and the coordinates. fused_export: export with the C++ angle operator instead of the portable file.

    Returns:
        :class:`~mftcalc.testing.results.Report`; ``report.raise_for_failures()`` raises on any failed result.
    """
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        hints = {c: difflib.get_close_matches(c, list(CHECKS), n=1) for c in unknown}
        raise ValueError(f"unknown check(s) {unknown}" + "".join(f"; did you mean {h[0]!r} for {c!r}?"
                                                              for c, h in hints.items() if h)
                         + f"; checks are {list(CHECKS)}")
    tol = tolerances or Tolerances()
    if structures is None:
        structures = probe_structures(seed)
    else:
        from mftcalc.calculators.inputs import as_structures
        structures = as_structures(structures, caller="check_model")
    if not structures:
        raise ValueError("check_model needs at least one structure")
    names = [label(s, k) for k, s in enumerate(structures)]
    if len(set(names)) != len(names):
        names = [f"{n}#{k}" for k, n in enumerate(names)]
    subject = Subject.load(model, dataset=dataset, head=head, device=device)
    subject.datasets(structures)                 # fail early, naming the structure, on a dataset or element error
    probe = next((s for s in structures if is_molecule(s)), structures[0])
    runs: Dict[str, Callable[[], list]] = {
        "forces_fd": lambda: check_forces_fd(subject, structures, names, tol, n_fd, seed),
        "stress_fd": lambda: check_stress_fd(subject, structures, names, tol),
        "rotation": lambda: check_rotation(subject, structures, names, tol, seed),
        "translation": lambda: check_translation(subject, structures, names, tol),
        "permutation": lambda: check_permutation(subject, structures, names, tol, seed),
        "supercell": lambda: check_supercell(subject, structures, names, tol),
        "additivity": lambda: check_additivity(subject, structures, names, tol, seed),
        "acoustic_sum": lambda: check_acoustic_sum(subject, structures, names, tol),
        "cutoff": lambda: check_cutoff_smoothness(subject, probe, tol),
        "batch": lambda: check_batch(subject, structures, names, tol),
        "export": lambda: check_export(model, subject, structures, names, tol, fused_export, dataset, head),
    }
    report = Report(subject.label)
    for name in selected:
        report.extend(runs[name]())
    return report

