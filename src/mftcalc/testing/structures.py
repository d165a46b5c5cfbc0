"""Structures of the physics checks: the default probes (a molecule and a crystal) and the exact transforms the
checks compare against (rotation, translation with wrapping, permutation, supercell, two molecules far apart,
a pair scan across a cutoff). Positions and cells in Å, cell rows are lattice vectors."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from mftcalc.data.structure import Structure


def probe_structures(seed: int = 0) -> List[Structure]:
    """The default structures: ethanol (9 atoms, rattled by 0.05 Å, a molecule) and diamond Si in a sheared
    primitive cell (2 atoms, rattled by 0.05 Å, periodic in 3 directions); ``info["name"]`` names them."""
    from ase.build import bulk, molecule
    rng = np.random.default_rng(seed)
    mol = molecule("CH3CH2OH")
    mol.positions += rng.normal(scale=0.05, size=mol.positions.shape)
    mol.info = {"name": "molecule"}
    si = bulk("Si", "diamond", a=5.43)
    si.set_cell(si.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.03], [0.01, 0.0, 1.0]]), scale_atoms=True)
    si.positions += rng.normal(scale=0.05, size=si.positions.shape)
    si.info = {"name": "crystal"}
    return [Structure.from_ase(mol), Structure.from_ase(si)]


def label(structure: Structure, index: int) -> str:
    """How a report names a structure: ``info["name"]``, else ``<formula>#<index>``."""
    name = structure.info.get("name")
    if name:
        return str(name)
    from ase.formula import Formula
    from ase.data import chemical_symbols
    return f"{Formula(''.join(chemical_symbols[z] for z in structure.numbers)).format('hill')}#{index}"


def is_crystal(structure: Structure) -> bool:
    """Periodic in all three directions (stress is defined)."""
    return bool(structure.pbc.all())


def is_molecule(structure: Structure) -> bool:
    """No periodic direction."""
    return not bool(structure.pbc.any())


def random_rotation(seed: int) -> np.ndarray:
    """A proper rotation matrix [3, 3] (seeded): 1.9 rad about a random axis, far from any symmetry of a cell."""
    from scipy.spatial.transform import Rotation
    axis = np.random.default_rng(seed).normal(size=3)
    return Rotation.from_rotvec(1.9 * axis / np.linalg.norm(axis)).as_matrix()


def rotated(structure: Structure, rotation: np.ndarray) -> Structure:
    """Positions and cell rotated, r' = R r (rows: ``positions @ R.T``)."""
    return structure.with_labels(positions=structure.positions @ rotation.T, cell=structure.cell @ rotation.T,
                                 energy=None, forces=None, stress=None)


def translated(structure: Structure, shift: np.ndarray, wrap: bool) -> Tuple[Structure, int]:
    """Positions shifted by ``shift`` [3] Å; with ``wrap`` (crystals) mapped back into the cell. Returns the new
    structure and how many atoms crossed a periodic boundary."""
    positions = structure.positions + np.asarray(shift, dtype=np.float64)
    crossed = 0
    if wrap:
        frac = positions @ np.linalg.inv(structure.cell)
        jump = np.floor(frac)
        crossed = int(np.any(jump != np.floor(structure.positions @ np.linalg.inv(structure.cell)), axis=1).sum())
        positions = (frac - jump) @ structure.cell
    return structure.with_labels(positions=positions, energy=None, forces=None, stress=None), crossed


def wrapping_shift(structure: Structure) -> np.ndarray:
    """A shift [3] Å that carries the first atom across the periodic boundary along every lattice vector."""
    frac = structure.positions[0] @ np.linalg.inv(structure.cell)
    return (1.0 - (frac - np.floor(frac)) + np.array([0.13, 0.29, 0.41])) @ structure.cell


def permuted(structure: Structure, order: np.ndarray) -> Structure:
    """Atoms reordered: atom k of the result is atom ``order[k]`` of ``structure`` (labels dropped; ASE
    constraints renumbered with their ``index_shuffle``)."""
    constraints = []
    for c in structure.constraints:
        c = c.copy()
        c.index_shuffle(structure.to_ase(), list(order))
        constraints.append(c)
    return structure.with_labels(positions=structure.positions[order], numbers=structure.numbers[order],
                                 energy=None, forces=None, stress=None, constraints=tuple(constraints))


def supercell(structure: Structure, repeats: Sequence[int]) -> Structure:
    """The crystal repeated ``repeats`` (e.g. (2, 1, 1)) times along its lattice vectors (ASE's order: the atoms
    of the original cell, then their copies shifted by one lattice vector, ...; forces tile as ``np.tile``)."""
    atoms = structure.with_labels(energy=None, forces=None, stress=None).to_ase() * tuple(int(r) for r in repeats)
    return Structure.from_ase(atoms)


def side_by_side(first: Structure, second: Structure, gap: float) -> Structure:
    """Two molecules as one: ``second`` shifted along x so that every atom of it is at least ``gap`` Å from every
    atom of ``first`` (first's atoms first)."""
    shift = first.positions[:, 0].max() - second.positions[:, 0].min() + gap
    positions = np.concatenate([first.positions, second.positions + np.array([shift, 0.0, 0.0])])
    numbers = np.concatenate([first.numbers, second.numbers])
    info = dict(first.info)
    info["name"] = f"{label(first, 0)}+{label(second, 1)}"
    return Structure(positions=positions, numbers=numbers, info=info)


def pair_scan(numbers: Sequence[int], distances: np.ndarray,
              dataset: Optional[str] = None) -> Tuple[List[Structure], np.ndarray]:
    """A molecule of two or three atoms whose last atom moves at the given distances (Å) from the first, along
    ``u = (0.6, 0.8, 0)``; a second atom, when there are three, sits at (−1.2, 0, 0) (farther from the mover
    than the first). ``dataset``: its ``info["dataset"]``. Returns the structures and ``u`` [3]."""
    numbers = list(numbers)
    u = np.array([0.6, 0.8, 0.0])
    out = []
    for d in distances:
        fixed = [[0.0, 0.0, 0.0]] + ([[-1.2, 0.0, 0.0]] if len(numbers) == 3 else [])
        info = {"name": "pair scan", **({"dataset": dataset} if dataset is not None else {})}
        out.append(Structure(positions=np.array(fixed + [list(d * u)]), numbers=numbers, info=info))
    return out, u
