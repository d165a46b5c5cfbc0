"""Composition checks: a supercell is the same crystal (energy and extensive heads scale, forces tile, stress and
intensive heads equal), two molecules far apart are the sum of the two, and a batch gives each structure what it
gets alone."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from mftcalc import keys as K
from mftcalc.data.structure import Structure
from mftcalc.testing.results import CheckResult, Tolerances, skipped
from mftcalc.testing.structures import is_crystal, is_molecule, random_rotation, rotated, side_by_side, supercell
from mftcalc.testing.subject import EXTENSIVE, INTENSIVE, POOLED, Row, Subject, compare_rows
from mftcalc.testing.symmetry import FORCEFIELD_KEYS

NOT_ADDITIVE = "{kind} head: no rule relates its value here to the parts' values, not compared"


def _not_compared(check: str, props: dict, compared: tuple) -> List[CheckResult]:
    """One skipped result per property head whose class is not in ``compared`` (dipole, ⟨R²⟩, ...)."""
    return [skipped(check, "*", name, NOT_ADDITIVE.format(kind=kind)) for name, kind in props.items()
            if kind not in compared]


def check_supercell(subject: Subject, structures: Sequence[Structure], names: Sequence[str], tol: Tolerances,
                    repeats: Sequence[Sequence[int]] = ((2, 1, 1), (2, 2, 1))) -> List[CheckResult]:
    """Each crystal repeated ``repeats``: energy and extensive (summed) heads × n, per-atom energies and forces
    tiled, stress, intensive (averaged) and pooled heads equal (n = number of copies)."""
    crystals = [(s, n) for s, n in zip(structures, names) if is_crystal(s)]
    if not crystals:
        return [skipped("supercell", "*", K.ENERGY, "no structure periodic in three directions was given")]
    props = subject.properties
    compared = (INTENSIVE, EXTENSIVE, POOLED)
    keys = list(FORCEFIELD_KEYS) + [k for k, c in props.items() if c in compared]
    out = []
    for s, name in crystals:
        ref = subject.one(s)
        for rep in repeats:
            n = int(np.prod(rep))
            expected: Row = {}
            for key, value in ref.items():
                if key in (K.FORCES, K.ENERGIES):
                    expected[key] = np.tile(value, (n,) + (1,) * (value.ndim - 1))
                elif key == K.ENERGY or props.get(key) == EXTENSIVE:
                    expected[key] = n * value
                else:
                    expected[key] = value
            out += compare_rows("supercell", f"{name} {'x'.join(map(str, rep))}", subject.one(supercell(s, rep)),
                                expected, keys, tol.exact_rtol, tol.exact_atol)
    return out + _not_compared("supercell", props, compared)


def check_additivity(subject: Subject, structures: Sequence[Structure], names: Sequence[str], tol: Tolerances,
                     seed: int = 0, margin: float = 1.0) -> List[CheckResult]:
    """Two molecules (the first two given, or the first and a rotated copy of it) side by side, every atom of one
    farther than the cutoff + ``margin`` Å from every atom of the other: energy, extensive heads and the atoms'
    forces and energies are those of each alone; an intensive head is the atom-weighted mean of the two."""
    molecules = [s for s in structures if is_molecule(s)]
    if not molecules:
        return [skipped("additivity", "*", K.ENERGY, "no molecule (no periodic direction) was given")]
    cutoffs = [c for c in (subject.cutoff("e_rcut"), subject.cutoff("a_rcut")) if c is not None]
    if not cutoffs:
        return [skipped("additivity", "*", K.ENERGY, "the module exposes no cutoff (e_rcut, a_rcut)")]
    first = molecules[0]
    second = molecules[1] if len(molecules) > 1 else rotated(first, random_rotation(seed + 1))
    joined = side_by_side(first, second, max(cutoffs) + margin)
    a, b = subject.one(first), subject.one(second)
    props = subject.properties
    na, nb = first.n_atoms, second.n_atoms
    expected: Row = {}
    for key in a:
        if key in (K.FORCES, K.ENERGIES):
            expected[key] = np.concatenate([a[key], b[key]])
        elif key == K.ENERGY or props.get(key) == EXTENSIVE:
            expected[key] = a[key] + b[key]
        elif props.get(key) == INTENSIVE:
            expected[key] = (na * a[key] + nb * b[key]) / (na + nb)
    keys = [K.ENERGY, K.ENERGIES, K.FORCES] + [k for k, c in props.items() if c in (INTENSIVE, EXTENSIVE)]
    return compare_rows("additivity", str(joined.info["name"]), subject.one(joined), expected, keys,
                        tol.exact_rtol, tol.exact_atol, f"{max(cutoffs) + margin:g} Å apart") \
        + _not_compared("additivity", props, (INTENSIVE, EXTENSIVE))


def check_batch(subject: Subject, structures: Sequence[Structure], names: Sequence[str],
                tol: Tolerances) -> List[CheckResult]:
    """All structures in one forward call against each alone: every output equal."""
    if len(structures) < 2:
        return [skipped("batch", "*", K.ENERGY, "needs at least two structures")]
    keys = list(FORCEFIELD_KEYS) + list(subject.properties)
    out = []
    for s, name, row in zip(structures, names, subject.evaluate(structures)):
        out += compare_rows("batch", name, row, subject.one(s), keys, tol.exact_rtol, tol.exact_atol,
                            f"batch of {len(structures)}")
    return out
