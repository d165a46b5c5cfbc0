"""Phonons with phonopy from any ASE calculator (e.g. ``MFTCalculator``): force constants, bands, DOS, ZPE."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def phonons(atoms: Any, calc: Any, supercell: Sequence[int] = (2, 2, 2), displacement: float = 0.01,
            mesh: Sequence[int] = (12, 12, 12), primitive_matrix: Any = "auto") -> Any:
    """A ``phonopy.Phonopy`` with force constants computed by ``calc`` on displaced supercells.

    Args:
        atoms: periodic ``ase.Atoms`` (relax it first). calc: ASE calculator giving forces (eV/Å).
        supercell: diagonal supercell. displacement: Å. mesh: q-mesh for the DOS and thermal properties.
    Returns:
        The Phonopy object with ``produce_force_constants`` done and the mesh/thermal properties run, so
        ``zero_point_energy(ph)`` and ``plot_phonons(ph, path)`` work.
    """
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    if not np.all(atoms.pbc):
        raise ValueError("phonons need a structure periodic in all three directions")
    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions())
    ph = Phonopy(unit, supercell_matrix=np.diag(supercell), primitive_matrix=primitive_matrix)
    ph.generate_displacements(distance=displacement)
    forces = []
    for sc in ph.supercells_with_displacements:
        from ase import Atoms
        sc_atoms = Atoms(symbols=sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
        sc_atoms.calc = calc
        f = sc_atoms.get_forces()
        forces.append(f - f.mean(axis=0))          # remove the residual drift
    ph.forces = np.array(forces)
    ph.produce_force_constants()
    ph.run_mesh(list(mesh))
    ph.run_thermal_properties(t_min=0, t_max=0, t_step=1)
    return ph


def zero_point_energy(ph: Any) -> float:
    """Zero-point energy in eV per unit cell (phonopy reports kJ/mol at T = 0)."""
    free_energy_kj_mol = ph.thermal_properties.free_energy[0]
    return float(free_energy_kj_mol) * 1000.0 / 96485.33212


def plot_phonons(ph: Any, path: str, npoints: int = 51) -> None:
    """Band structure (automatic path) and DOS in one PNG."""
    import matplotlib
    matplotlib.use("Agg")
    ph.auto_band_structure(npoints=npoints)
    ph.run_total_dos()
    plt = ph.plot_band_structure_and_dos()
    plt.savefig(path, dpi=110)
    plt.close("all")
