"""Phonons with phonopy from any ASE calculator (e.g. ``MFTCalculator``): force constants, bands, DOS, ZPE.

The band-structure path comes from ASE (``Cell.bandpath``: the standard path of the primitive cell's Bravais
lattice, Setyawan–Curtarolo), not from phonopy's ``auto_band_structure``, which needs seekpath; the DOS and the
thermal properties use a Γ-centred q-mesh.
"""
from __future__ import annotations

import inspect
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from mftcalc.geometry.units import KJ_PER_MOL


def phonons(atoms: Any, calc: Any, supercell: Sequence[int] = (2, 2, 2), displacement: float = 0.01,
            mesh: Sequence[int] = (12, 12, 12), primitive_matrix: Any = "auto") -> Any:
    """A ``phonopy.Phonopy`` with force constants computed by ``calc`` on displaced supercells.

    Args:
        atoms: periodic ``ase.Atoms`` (relax it first). calc: ASE calculator giving forces (eV/Å); an
            ``MFTCalculator`` evaluates all displaced supercells in batched calls of its model.
        supercell: diagonal supercell. displacement: Å. mesh: Γ-centred q-mesh (three integers) for the DOS and
            the thermal properties.
        primitive_matrix: phonopy's primitive cell (``"auto"``: found by symmetry).
    Returns:
        The Phonopy object with ``produce_force_constants`` done and the mesh/thermal properties run, so
        ``zero_point_energy(ph)`` and :func:`mftcalc.analysis.plots.plot_phonons` work.
    """
    from ase import Atoms
    from phonopy import Phonopy
    from phonopy.structure.atoms import PhonopyAtoms

    if not np.all(atoms.pbc):
        raise ValueError("phonons need a structure periodic in all three directions")
    unit = PhonopyAtoms(symbols=atoms.get_chemical_symbols(), cell=atoms.cell.array,
                        scaled_positions=atoms.get_scaled_positions())
    ph = Phonopy(unit, supercell_matrix=np.diag(supercell), primitive_matrix=primitive_matrix)
    ph.generate_displacements(distance=displacement)
    supercells = [Atoms(symbols=sc.symbols, cell=sc.cell, scaled_positions=sc.scaled_positions, pbc=True)
                  for sc in ph.supercells_with_displacements]
    handle = getattr(calc, "handle", None)                  # an MFTCalculator: every supercell in batched calls
    if handle is not None and hasattr(handle, "forcefield_heads"):
        from mftcalc.calculators.predict import predict
        raw = [row["forces"] for row in predict(supercells, handle, properties=[], forces=True)]
    else:
        raw = []
        for sc_atoms in supercells:
            sc_atoms.calc = calc
            raw.append(sc_atoms.get_forces())
    ph.forces = np.array([f - f.mean(axis=0) for f in raw])        # remove the residual drift
    ph.produce_force_constants()
    ph.run_mesh(list(mesh), is_gamma_center=True)
    # the Γ-centred mesh holds Γ, whose three acoustic modes (zero frequency) add nothing: phonopy 4 warns about
    # them unless they are excluded by name; versions without the option drop them by their cutoff frequency
    exclude = "exclude_gamma_acoustic" in inspect.signature(ph.run_thermal_properties).parameters
    ph.run_thermal_properties(t_min=0, t_max=0, t_step=1, **({"exclude_gamma_acoustic": True} if exclude else {}))
    return ph


def zero_point_energy(ph: Any) -> float:
    """Zero-point energy in eV per unit cell (phonopy reports kJ/mol at T = 0)."""
    free_energy_kj_mol = ph.thermal_properties.free_energy[0]
    return float(free_energy_kj_mol) * KJ_PER_MOL


def band_path(ph: Any, path: Optional[str] = None, npoints: int = 51
              ) -> Tuple[List[np.ndarray], List[bool], List[str]]:
    """The band-structure path of the primitive cell of ``ph`` from ASE (no seekpath), in phonopy's form.

    Args:
        ph: a ``phonopy.Phonopy``. path: ASE path string over the lattice's special points (e.g.
            ``"GXWKGLUWLK,UX"``; a comma starts a new, disconnected segment); default: ASE's standard path for
            the Bravais lattice of the primitive cell (``ase.cell.Cell.bandpath``).
        npoints: q-points on the longest segment; the others get points at about the same spacing.
    Returns:
        ``(qpoints, connections, labels)`` for ``ph.run_band_structure(qpoints, path_connections=connections,
        labels=labels)``: one [m, 3] array of q-points per segment (fractional coordinates of the primitive
        cell's reciprocal lattice), whether each segment joins the next, and the end-point labels (Γ as
        ``$\\Gamma$``).
    """
    from ase.cell import Cell
    from ase.dft.kpoints import parse_path_string
    from phonopy.phonon.band_structure import get_band_qpoints_and_path_connections

    cell = np.asarray(ph.primitive.cell, dtype=float)
    bandpath = Cell(cell).bandpath(path=path, npoints=0)
    special = bandpath.special_points            # fractional coordinates in the basis of ``cell``'s reciprocal
    segments = parse_path_string(bandpath.path)
    unknown = sorted({name for segment in segments for name in segment if name not in special})
    if unknown:
        raise ValueError(f"band path {bandpath.path!r} names unknown special point(s) {unknown}; this lattice has "
                         f"{sorted(special)}")
    ends = [[np.asarray(special[name], dtype=float) for name in segment] for segment in segments]
    qpoints, connections = get_band_qpoints_and_path_connections(ends, npoints=npoints,
                                                                 rec_lattice=np.linalg.inv(cell))
    labels = [_label(name) for segment in segments for name in segment]
    return qpoints, connections, labels


def _label(name: str) -> str:
    """An ASE special-point name as a plot label: ``G`` -> ``$\\Gamma$``, ``S1`` -> ``$S_1$``."""
    if name == "G":
        return r"$\Gamma$"
    return f"${name[0]}_{name[1:]}$" if len(name) > 1 else name
