"""Molecules in periodic boxes: the vacuum test against a brute-force image search, wrapped molecules, slabs,
skewed cells, and the training-side domain rules that use it."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from mftcalc.calculators.domains import domain_of, periodicity
from mftcalc.data import Structure
from mftcalc.geometry.isolation import isolated_in_box, vacuum_widths
from mftcalc.training.forcefield_data import task_domain

CUTOFF = 6.0


def _nearest_image(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, reach: int = 3) -> float:
    """Smallest distance between an atom and a periodic image (shift ≠ 0) of any atom, by brute force."""
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    best = np.inf
    for shift in itertools.product(*ranges):
        if not any(shift):
            continue
        moved = positions + np.asarray(shift, dtype=float) @ cell
        best = min(best, float(np.linalg.norm(positions[:, None] - moved[None], axis=2).min()))
    return best


def test_a_molecule_in_a_wide_box_is_isolated_also_when_wrapped_across_the_boundary():
    atoms = molecule("CH3CH2OH", vacuum=CUTOFF / 2 + 0.1)
    atoms.pbc = True
    assert isolated_in_box(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF)
    atoms.positions += 0.5 * atoms.cell.array.sum(0)       # half the box: the molecule straddles every face
    atoms.wrap()
    spread = np.ptp(atoms.positions, axis=0)
    assert (spread > 0.5 * atoms.cell.lengths()).all()   # its atoms lie on both sides of the cell
    assert isolated_in_box(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF)
    tight = molecule("CH3CH2OH", vacuum=CUTOFF / 2 - 0.3)
    tight.pbc = True
    assert not isolated_in_box(tight.positions, tight.cell.array, tight.pbc, CUTOFF)


def test_crystals_slabs_and_unit_cells_are_not_isolated():
    si = bulk("Si", "diamond", a=5.43)
    assert not isolated_in_box(si.positions, si.cell.array, si.pbc, CUTOFF)
    slab = fcc111("Cu", (2, 2, 3), vacuum=10.0, periodic=True)          # vacuum along z only
    widths = vacuum_widths(slab.positions, slab.cell.array, slab.pbc)
    assert widths[2] > 15.0 and widths[0] < 3.0 and widths[1] < 3.0
    assert not isolated_in_box(slab.positions, slab.cell.array, slab.pbc, CUTOFF)
    bare = molecule("H2O")
    assert not isolated_in_box(bare.positions, np.zeros((3, 3)), bare.pbc, CUTOFF)   # not periodic at all
    flat = np.array([[10.0, 0, 0], [20.0, 0, 0], [0, 0, 10.0]])                       # zero volume
    assert (vacuum_widths(np.zeros((1, 3)), flat, [True] * 3) == 0).all()


@pytest.mark.parametrize("seed", range(12))
def test_isolated_means_no_image_within_the_cutoff_in_skewed_cells(seed):
    rng = np.random.default_rng(seed)
    cell = np.diag(rng.uniform(7.0, 16.0, 3)) + np.triu(rng.uniform(-4.0, 4.0, (3, 3)), 1)
    pbc = rng.random(3) < 0.8
    pbc[rng.integers(3)] = True
    positions = rng.uniform(0.0, 4.0, (int(rng.integers(2, 9)), 3)) + rng.uniform(-20, 20, 3)
    cutoff = float(rng.uniform(2.0, 6.0))
    nearest = _nearest_image(positions, cell, pbc)
    if isolated_in_box(positions, cell, pbc, cutoff):       # sufficient: no image within the cutoff
        assert nearest >= cutoff - 1e-9
    widths = vacuum_widths(positions, cell, pbc)
    assert np.all(widths[pbc] <= np.linalg.norm(cell, axis=1)[pbc] + 1e-9)


def test_domains_count_boxed_molecules_as_molecules_and_let_crystal_sets_hold_boxed_atoms():
    boxed = molecule("CH4", vacuum=4.0)
    boxed.pbc = True
    box, bare, si = (Structure.from_ase(a) for a in (boxed, molecule("CH4"), bulk("Si", "diamond", a=5.43)))
    atom = Structure.from_ase(Atoms("Si", cell=[15.0] * 3, pbc=True))
    assert periodicity(box) == "crystal" and periodicity(box, CUTOFF) == "molecule"
    assert periodicity(si, CUTOFF) == "crystal" and periodicity(bare, CUTOFF) == "molecule"
    assert task_domain([box]) == "materials" and task_domain([box, bare], CUTOFF) == "molecules"
    assert task_domain([box, si], CUTOFF) == "materials"
    assert domain_of([box, bare], CUTOFF)["periodic"] is False
    assert domain_of([si, atom], CUTOFF)["periodic"] is True           # a crystal set with an isolated atom
    assert domain_of([si, bare], CUTOFF) is None                        # bare molecules and crystals still mix
    assert domain_of([box], None)["periodic"] is True                   # without a cutoff: as pbc says
