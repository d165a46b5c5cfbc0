"""Vibrational analysis from the model's forces: Hessians by central differences with every displaced copy of every
structure predicted in batched model calls (one call per few thousand atoms, where ASE's ``Vibrations`` makes 6N + 1
single-structure calls per structure), harmonic frequencies with the rigid-body modes projected out, zero-point
energies, and an ``ase.vibrations.VibrationsData`` for what ASE does with a Hessian (modes, DOS, files, thermochemistry).

Units: Hessian eV/Å², frequencies cm⁻¹ (an imaginary frequency is given as a negative number), energies eV, masses
amu (ASE's standard masses).

Atoms held by an ASE ``FixAtoms`` constraint (``Structure.constraints``, extxyz ``move_mask``: a slab's frozen
layers) do not vibrate, as in ASE's ``Vibrations``: the Hessian is the free atoms' [3F, 3F] block (:func:`free_atoms`)
and no rigid-body motion is projected out (the fixed atoms pin the structure).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import numpy as np
import torch

from mftcalc.data.structure import Structure
from mftcalc.geometry.units import HBAR_OMEGA, INVCM

#: displaced atoms predicted in one block (6N² per structure): bounds the memory of a long file, not the batch size
BLOCK_ATOMS = 50_000


@dataclass
class NormalModes:
    """Harmonic vibrations of one structure.

    Attributes:
        frequencies: [3N − k] cm⁻¹, ascending; an imaginary frequency as a negative number.
        modes: [3F − k, N, 3] Cartesian displacement of each mode (unit norm in mass-weighted coordinates; zero on
            fixed atoms), F the free atoms (:func:`free_atoms`; N without ``FixAtoms``).
        n_rigid: k, the rigid-body modes projected out (6 for a molecule, 5 for a linear one, 3 for a periodic
            structure: the translations only; 0 when some atoms are fixed).
        zero_point_energy: ½ Σ ħω over the real frequencies, eV.
    """

    frequencies: np.ndarray
    modes: np.ndarray
    n_rigid: int
    zero_point_energy: float

    def n_imaginary(self, threshold: float = 20.0) -> int:
        """Imaginary modes beyond ``threshold`` cm⁻¹ (smaller ones are numerical noise of a flat direction)."""
        return int((self.frequencies < -threshold).sum())


def free_atoms(structure: Structure) -> np.ndarray:
    """[F] indices of the atoms that vibrate: every atom but those an ASE ``FixAtoms`` constraint holds (the rule of
    ASE's ``Vibrations``; other constraints do not remove atoms)."""
    from ase.constraints import FixAtoms
    fixed = {int(i) for c in structure.constraints if isinstance(c, FixAtoms) for i in c.get_indices()}
    free = np.array([i for i in range(structure.n_atoms) if i not in fixed], dtype=np.int64)
    if free.size == 0:
        raise ValueError("every atom is held by FixAtoms: nothing vibrates; free some atoms (atoms.set_constraint())")
    return free


def displaced(structure: Structure, delta: float) -> List[Structure]:
    """The 6F copies of ``structure`` with one Cartesian coordinate of a free atom (:func:`free_atoms`) moved by
    +delta, then −delta (Å), atom by atom."""
    copies = []
    for atom in free_atoms(structure):
        for axis, sign in ((a, s) for a in range(3) for s in (1.0, -1.0)):
            positions = structure.positions.copy()
            positions[atom, axis] += sign * delta
            copies.append(Structure(positions=positions, numbers=structure.numbers, cell=structure.cell,
                                    pbc=structure.pbc, info=dict(structure.info)))
    return copies


def hessians(structures: Sequence[Any], model: Any, delta: float = 0.005, dataset: Optional[str] = None,
             dtype: torch.dtype = torch.float64, device: str = "cpu", progress: bool = False) -> List[np.ndarray]:
    """The Hessian [3F, 3F] (eV/Å², symmetrised) of each structure's free atoms (:func:`free_atoms`; all N atoms
    without ``FixAtoms``): −∂F/∂x by central differences of step ``delta`` Å, the displaced copies of all structures
    predicted in batched calls.

    ``model``: a checkpoint or TorchScript path, a loaded model or a ``ModelHandle``; ``dataset`` the force-field
    dataset for every structure (default: each structure's, as everywhere, :mod:`mftcalc.calculators.domains`).
    float64 by default; float32 forces changed the Hessian of relaxed ethanol (``models/mft_gap.pt``) by at most
    8e-4 eV/Å² and its frequencies by at most 0.02 cm⁻¹ (session 20).
    """
    return [row["hessian"] for block in _analyse(structures, model, delta, dataset, dtype, device, progress)
            for row in block]


def vibrational_analysis(structures: Sequence[Any], model: Any, delta: float = 0.005, dataset: Optional[str] = None,
                         dtype: torch.dtype = torch.float64, device: str = "cpu",
                         progress: bool = False) -> List[dict]:
    """Per structure: ``energy`` (eV) and ``fmax`` (eV/Å, over the free atoms) of the structure as given, its
    ``hessian`` [3F, 3F] eV/Å²
    (:func:`hessians`) and ``modes`` (:class:`NormalModes`). Frequencies mean something only at a stationary
    point: relax first (``fmax`` says how far from one a structure is)."""
    return [row for block in iter_vibrational_analysis(structures, model, delta, dataset, dtype, device, progress)
            for row in block]


def iter_vibrational_analysis(structures: Sequence[Any], model: Any, delta: float = 0.005,
                              dataset: Optional[str] = None, dtype: torch.dtype = torch.float64, device: str = "cpu",
                              progress: bool = False) -> Iterator[List[dict]]:
    """:func:`vibrational_analysis` block by block (at most :data:`BLOCK_ATOMS` displaced atoms each, in input
    order; each row also carries ``index``, its position in ``structures``), for callers that write as they go."""
    for block in _analyse(structures, model, delta, dataset, dtype, device, progress):
        for row in block:
            row["modes"] = normal_modes(row["structure"], row["hessian"])
        yield block


def _analyse(structures: Sequence[Any], model: Any, delta: float, dataset: Optional[str], dtype: torch.dtype,
             device: str, progress: bool) -> Iterator[List[dict]]:
    from mftcalc.calculators.inputs import as_structures
    from mftcalc.calculators.model_handle import ModelHandle
    if not delta > 0:
        raise ValueError(f"delta must be a positive displacement in Å (e.g. 0.005), got {delta}")
    structures = as_structures(structures, "vibrations")
    handle = model if isinstance(model, ModelHandle) else ModelHandle.load(model, device, dtype, dataset=dataset)
    if not handle.forcefield_heads:
        raise ValueError("the model has no force-field head, so no forces to differentiate; use a model trained "
                         "as a force field (mftcalc info MODEL lists its heads)")
    datasets = handle.check_structures(structures, frame_params=False)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(structures), desc="vibrations", unit="structure")
    block: List[int] = []
    atoms = 0
    for k, structure in enumerate(structures):
        block.append(k)
        atoms += 6 * structure.n_atoms * len(free_atoms(structure))
        if atoms >= BLOCK_ATOMS or k == len(structures) - 1:
            rows = _block([structures[j] for j in block], [datasets[j] for j in block], handle, delta)
            for j, row in zip(block, rows):
                row["index"] = j
            if bar is not None:
                bar.update(len(block))
            yield rows
            block, atoms = [], 0
    if bar is not None:
        bar.close()


def _block(structures: List[Structure], datasets: List[int], handle: Any, delta: float) -> List[dict]:
    """Energy, fmax and Hessian of each structure of one block, from one batched prediction of the structures and
    their displaced copies."""
    from mftcalc.model.inference import predict_structures
    copies, copy_datasets = list(structures), list(datasets)        # the structures themselves first: E, fmax
    for structure, index in zip(structures, datasets):
        copies += displaced(structure, delta)
        copy_datasets += [index] * (6 * len(free_atoms(structure)))
    predicted = predict_structures(handle.module, copies, copy_datasets, compute_forces=True, compute_stress=False,
                                   properties=False)
    out, start = [], len(structures)
    for k, structure in enumerate(structures):
        free = free_atoms(structure)
        n3 = 3 * len(free)
        forces = np.stack([r["forces"][free].reshape(-1) for r in predicted[start:start + 2 * n3]]).astype(np.float64)
        start += 2 * n3
        h = -(forces[0::2] - forces[1::2]) / (2.0 * delta)      # row i: −∂F/∂x_i
        own = predicted[k]
        out.append({"structure": structure, "hessian": 0.5 * (h + h.T), "energy": float(own["energy"]),
                    "fmax": float(np.linalg.norm(own["forces"][free], axis=1).max())})     # the free atoms
    return out


def rigid_body_basis(structure: Structure, masses: np.ndarray) -> np.ndarray:
    """Orthonormal [3N, k] mass-weighted translations (and, for a non-periodic structure, rotations about the
    centre of mass; 2 for a linear molecule, none for an atom beyond its translations)."""
    n = structure.n_atoms
    root = np.sqrt(masses)
    vectors = []
    for axis in range(3):
        t = np.zeros((n, 3))
        t[:, axis] = root
        vectors.append(t.reshape(-1))
    if not structure.pbc.any():
        centred = structure.positions - (masses[:, None] * structure.positions).sum(0) / masses.sum()
        for axis in np.eye(3):
            vectors.append((np.cross(axis, centred) * root[:, None]).reshape(-1))
    basis, singular, _ = np.linalg.svd(np.stack(vectors, axis=1), full_matrices=False)
    return basis[:, singular > 1e-6 * singular.max()]


def normal_modes(structure: Structure, hessian: np.ndarray, masses: Optional[np.ndarray] = None) -> NormalModes:
    """Frequencies and modes of ``hessian`` [3F, 3F] eV/Å² (the free atoms', :func:`free_atoms`) with the rigid-body
    motions projected out when no atom is fixed (the mass-weighted Hessian diagonalised in the complement of
    :func:`rigid_body_basis`). ``masses``: [N] amu, default ASE's."""
    from ase.data import atomic_masses
    masses = atomic_masses[structure.numbers] if masses is None else np.asarray(masses, dtype=np.float64)
    free = free_atoms(structure)
    n3 = 3 * len(free)
    if hessian.shape != (n3, n3):
        held = f" free atoms (of {structure.n_atoms}; FixAtoms holds the rest)" if n3 < 3 * structure.n_atoms else " atoms"
        raise ValueError(f"hessian has shape {hessian.shape}; a structure of {len(free)}{held} needs ({n3}, {n3})")
    inv_root = np.repeat(1.0 / np.sqrt(masses[free]), 3)
    weighted = hessian * inv_root[:, None] * inv_root[None, :]
    if len(free) == structure.n_atoms:
        rigid = rigid_body_basis(structure, masses)
        complement = np.linalg.svd(np.eye(n3) - rigid @ rigid.T)[0][:, :n3 - rigid.shape[1]]
    else:                                              # fixed atoms pin it: no rigid-body motion
        rigid, complement = np.zeros((n3, 0)), np.eye(n3)
    values, vectors = np.linalg.eigh(complement.T @ weighted @ complement)
    energies = HBAR_OMEGA * np.sign(values) * np.sqrt(np.abs(values))          # eV, negative = imaginary
    modes = np.zeros((len(values), structure.n_atoms, 3))
    modes[:, free] = (complement @ vectors * inv_root[:, None]).T.reshape(-1, len(free), 3)
    return NormalModes(frequencies=energies / INVCM, modes=modes, n_rigid=rigid.shape[1],
                       zero_point_energy=float(0.5 * energies[energies > 0].sum()))


def vibrations_data(structure: Structure, hessian: np.ndarray) -> Any:
    """``ase.vibrations.VibrationsData`` of the (unprojected) Hessian of the free atoms (its ``indices``), for ASE's
    tools: ``get_frequencies``, ``tabulate``, ``write_jmol``, ``get_dos``, and the energies that
    ``ase.thermochemistry`` takes."""
    from ase.vibrations import VibrationsData
    return VibrationsData.from_2d(structure.to_ase(), hessian, indices=free_atoms(structure))
