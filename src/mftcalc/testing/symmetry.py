"""Symmetry checks: rotation (energy and properties invariant, forces rotate, stress transforms as R σ Rᵀ),
translation (including wrapping across the periodic boundary) and permutation of atoms, for molecules and
periodic cells alike."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from mftcalc import keys as K
from mftcalc.data.structure import Structure
from mftcalc.testing.results import CheckResult, Tolerances
from mftcalc.testing.structures import (is_crystal, permuted, random_rotation, rotated, translated,
                                        wrapping_shift)
from mftcalc.testing.subject import DIPOLE, R2, Subject, compare_rows

FORCEFIELD_KEYS = (K.ENERGY, K.ENERGIES, K.FORCES, K.STRESS)


def check_rotation(subject: Subject, structures: Sequence[Structure], names: Sequence[str], tol: Tolerances,
                   seed: int = 0) -> List[CheckResult]:
    """Each structure rotated (positions and cell, :func:`~mftcalc.testing.structures.random_rotation`): energy,
    per-atom energies and every property head unchanged, forces F' = R F, stress σ' = R σ Rᵀ."""
    rotation = random_rotation(seed)
    keys = list(FORCEFIELD_KEYS) + list(subject.properties)
    out = []
    for s, name in zip(structures, names):
        ref = subject.one(s)
        expected = dict(ref)
        if K.FORCES in ref:
            expected[K.FORCES] = ref[K.FORCES] @ rotation.T
        if K.STRESS in ref:
            expected[K.STRESS] = rotation @ ref[K.STRESS] @ rotation.T
        out += compare_rows("rotation", name, subject.one(rotated(s, rotation)), expected, keys, tol.exact_rtol,
                            tol.exact_atol)
    return out


def check_translation(subject: Subject, structures: Sequence[Structure], names: Sequence[str], tol: Tolerances,
                      shift: Sequence[float] = (3.1, -2.7, 105.3)) -> List[CheckResult]:
    """Each structure shifted by ``shift`` Å: every output unchanged. Each crystal also shifted so that atoms
    cross the periodic boundary and wrapped back into the cell: energy, forces, stress and the scalar heads
    unchanged (the dipole and ⟨R²⟩ heads read unwrapped positions, so wrapping moves their atoms: not compared)."""
    props = subject.properties
    keys = list(FORCEFIELD_KEYS) + list(props)
    out = []
    for s, name in zip(structures, names):
        ref = subject.one(s)
        moved, _ = translated(s, np.asarray(shift), wrap=False)
        out += compare_rows("translation", name, subject.one(moved), ref, keys, tol.exact_rtol, tol.exact_atol)
        if is_crystal(s):
            wrapped, crossed = translated(s, wrapping_shift(s), wrap=True)
            periodic_keys = [k for k in keys if props.get(k) not in (DIPOLE, R2)]
            out += compare_rows("translation", f"{name}, wrapped", subject.one(wrapped), ref, periodic_keys,
                                tol.exact_rtol, tol.exact_atol, f"{crossed} of {s.n_atoms} atoms wrapped")
    return out


def check_permutation(subject: Subject, structures: Sequence[Structure], names: Sequence[str], tol: Tolerances,
                      seed: int = 0) -> List[CheckResult]:
    """Atoms of each structure reordered (seeded): forces and per-atom energies reordered alike, everything else
    unchanged."""
    rng = np.random.default_rng(seed)
    keys = list(FORCEFIELD_KEYS) + list(subject.properties)
    out = []
    for s, name in zip(structures, names):
        order = rng.permutation(s.n_atoms)
        if s.n_atoms > 1:
            while np.array_equal(order, np.arange(s.n_atoms)):
                order = rng.permutation(s.n_atoms)
        ref = subject.one(s)
        expected = {k: (v[order] if k in (K.FORCES, K.ENERGIES) else v) for k, v in ref.items()}
        out += compare_rows("permutation", name, subject.one(permuted(s, order)), expected, keys, tol.exact_rtol,
                            tol.exact_atol)
    return out
