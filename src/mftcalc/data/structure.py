"""The structure record: one molecule or crystal with optional labels, validated where it is built.

Every reader produces :class:`Structure`; every consumer (training, calculator, benchmarks, analysis) goes
``Structure -> collate -> batch dict``. Units: positions and cell in Å, energy in eV, forces in eV/Å, stress in
eV/Å^3 (ASE sign: positive = tensile, stress = -virial / volume). Properties keep the units of their source data,
declared in ``property_units``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

MAX_Z = 118


class StructureError(ValueError):
    """Raised when a structure or its labels are malformed (the message names the problem and the fix)."""


def _as_float_array(name: str, value: Any, shape: tuple, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise StructureError(f"{where}: {name} has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise StructureError(f"{where}: {name} contains NaN or inf values")
    return arr


def stress_to_3x3(stress: Any) -> np.ndarray:
    """Stress as a [3, 3] array from a Voigt-6 (xx, yy, zz, yz, xz, xy), flat-9 or 3x3 input, eV/Å^3."""
    s = np.asarray(stress, dtype=np.float64)
    if s.shape == (6,):
        xx, yy, zz, yz, xz, xy = s
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if s.shape == (9,):
        return s.reshape(3, 3)
    if s.shape == (3, 3):
        return s
    raise StructureError(f"stress has shape {s.shape}, expected (6,) Voigt, (9,) or (3, 3)")


def _refuse_partial_occupancy(info: Mapping[str, Any]) -> None:
    """Raise naming the site and the fix when ``info["occupancy"]`` (ASE's CIF reader: ``{site: {symbol:
    fraction}}``) holds a partially occupied or mixed site: the reader kept one species there, so the atoms are
    not the structure the file describes."""
    occupancy = info.get("occupancy")
    if not isinstance(occupancy, Mapping):
        return
    for site, species in occupancy.items():
        if not isinstance(species, Mapping):
            continue
        fractions = {str(k): float(v) for k, v in species.items()}
        if len(fractions) > 1 or any(v < 1.0 - 1e-6 for v in fractions.values()):
            shares = ", ".join(f"{k} {v:g}" for k, v in fractions.items())
            raise StructureError(f"site {site} is partially occupied ({shares}): the file describes a disordered "
                                 "structure, and ASE's reader kept one species per site; order it first (e.g. "
                                 "pymatgen's OrderDisorderedStructureTransformation or a special quasirandom "
                                 "supercell) and give the ordered structure")


def _constraint_indices(constraint: Any) -> Optional[np.ndarray]:
    """The atom indices an ASE constraint names (None where it does not say)."""
    try:
        return np.asarray(constraint.get_indices(), dtype=np.int64).reshape(-1)
    except Exception:  # constraints without get_indices (or of all atoms) name none
        return None


@dataclass
class Structure:
    """One structure.

    Attributes:
        positions: [n, 3] float64, Å.
        numbers: [n] int64, atomic numbers 1..118.
        cell: [3, 3] float64, Å, rows are lattice vectors; zeros for a molecule.
        pbc: [3] bool.
        energy: total energy, eV, or None.
        forces: [n, 3] float64, eV/Å, or None.
        stress: [3, 3] float64, eV/Å^3 (ASE sign), or None.
        properties: named scalar labels (e.g. ``{"gap": 0.25}``), units in ``property_units``.
        property_units: unit of each property, e.g. ``{"gap": "Hartree"}``.
        info: free-form metadata (source index, dataset name, ...); never used as model input (frame
            parameters and group keys excepted, where a model asks for them).
        pool_mask: [n] bool or None: the atoms a group head pools over (:mod:`mftcalc.data.assembly`; e.g. an
            adsorbate's atoms on a slab, DPA-ADAPT's ``pool_mask``); None: all. From ``atoms.arrays["pool_mask"]``.
        constraints: ASE constraints (``FixAtoms``, ``FixCartesian``, ...; from ``atoms.constraints``, extxyz's
            ``move_mask``), applied by the relaxations that move atoms through ASE (:func:`mftcalc.relax` with a
            host optimiser); prediction does not move atoms and ignores them.
    """

    positions: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: Optional[float] = None
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None
    properties: Dict[str, float] = field(default_factory=dict)
    property_units: Dict[str, str] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)
    pool_mask: Optional[np.ndarray] = None
    constraints: Tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        where = f"structure {self.info.get('name', self.info.get('index', ''))}".rstrip()
        numbers = np.asarray(self.numbers)
        if numbers.ndim != 1:
            raise StructureError(f"{where}: numbers must be 1-D, got shape {numbers.shape}")
        n = numbers.shape[0]
        if n == 0:
            raise StructureError(f"{where}: empty structure (no atoms)")
        if not np.issubdtype(numbers.dtype, np.integer):
            if not np.all(np.equal(np.mod(numbers, 1), 0)):
                raise StructureError(f"{where}: atomic numbers must be integers")
        numbers = numbers.astype(np.int64)
        bad = numbers[(numbers < 1) | (numbers > MAX_Z)]
        if bad.size:
            raise StructureError(f"{where}: unknown element(s) with atomic number {sorted(set(bad.tolist()))}; "
                                 f"valid atomic numbers are 1..{MAX_Z}")
        self.numbers = numbers
        self.positions = _as_float_array("positions", self.positions, (n, 3), where)
        self.cell = _as_float_array("cell", self.cell, (3, 3), where)
        pbc = np.asarray(self.pbc, dtype=bool)
        if pbc.shape == ():
            pbc = np.repeat(pbc, 3)
        if pbc.shape != (3,):
            raise StructureError(f"{where}: pbc has shape {pbc.shape}, expected (3,)")
        self.pbc = pbc
        for axis in np.flatnonzero(pbc):
            if np.linalg.norm(self.cell[axis]) < 1e-8:
                raise StructureError(f"{where}: periodic along axis {axis} but cell vector {axis} is zero")
        if pbc.all() and abs(np.linalg.det(self.cell)) < 1e-6:
            raise StructureError(f"{where}: periodic cell has zero volume")
        if self.energy is not None:
            e = float(self.energy)
            if not np.isfinite(e):
                raise StructureError(f"{where}: energy is NaN or inf")
            self.energy = e
        if self.forces is not None:
            self.forces = _as_float_array("forces", self.forces, (n, 3), where)
        if self.stress is not None:
            try:
                s = stress_to_3x3(self.stress)
            except StructureError as exc:
                raise StructureError(f"{where}: {exc}") from None
            self.stress = _as_float_array("stress", s, (3, 3), where)
        props = {}
        for name, value in self.properties.items():
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != ():
                raise StructureError(f"{where}: property {name!r} must be a scalar, got shape {arr.shape}")
            if not np.isfinite(arr):
                raise StructureError(f"{where}: property {name!r} is NaN or inf")
            props[name] = float(arr)
        self.properties = props
        if self.pool_mask is not None:
            mask = np.asarray(self.pool_mask)
            if mask.shape != (n,) or not np.all((mask == 0) | (mask == 1)):
                raise StructureError(f"{where}: pool_mask must be one 0/1 (or bool) value per atom, shape ({n},); "
                                     f"got shape {mask.shape}")
            if not mask.any():
                raise StructureError(f"{where}: pool_mask leaves out every atom; a group head needs at least one "
                                     "atom to pool")
            self.pool_mask = None if mask.all() else mask.astype(bool)    # all atoms: as without a mask
        self.constraints = tuple(self.constraints or ())
        for c in self.constraints:
            indices = _constraint_indices(c)
            if indices is not None and indices.size and (indices.min() < 0 or indices.max() >= n):
                raise StructureError(f"{where}: constraint {type(c).__name__} names atom {int(indices.max())} of "
                                     f"a structure of {n} atoms; fix the constraint's indices")

    @property
    def n_atoms(self) -> int:
        """Number of atoms."""
        return int(self.numbers.shape[0])

    @property
    def is_periodic(self) -> bool:
        """True when any direction is periodic."""
        return bool(self.pbc.any())

    @property
    def stress_defined(self) -> bool:
        """Whether the model gives a stress for it: periodic in at least one direction, with a cell of non-zero
        volume (a crystal, or a slab or a wire whose cell spans its vacuum: σ = (1/V) ∂E/∂ε over that cell's
        volume, as plane-wave DFT codes report it)."""
        return bool(self.pbc.any()) and abs(float(np.linalg.det(self.cell))) > 1e-6

    def with_labels(self, **changes: Any) -> "Structure":
        """Copy of this structure with some fields replaced (validated again)."""
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values["properties"] = dict(self.properties)
        values["property_units"] = dict(self.property_units)
        values["info"] = dict(self.info)
        values.update(changes)
        return Structure(**values)

    # ------------------------------------------------------------------ ASE
    @classmethod
    def from_ase(cls, atoms: "Any", properties: Optional[Mapping[str, float]] = None,
                 property_units: Optional[Mapping[str, str]] = None) -> "Structure":
        """Build from an ``ase.Atoms``; labels are read from its single-point calculator results if present.

        Energy, forces and stress are taken from ``atoms.calc.results`` (as written by extxyz/db readers);
        named properties from ``properties`` (or not at all). ``atoms.info`` is copied into ``info``,
        ``atoms.arrays["pool_mask"]`` into ``pool_mask``. Partially occupied sites (``atoms.info["occupancy"]``,
        as ASE's CIF reader records them after keeping one species per site) raise :class:`StructureError`.
        """
        _refuse_partial_occupancy(atoms.info)
        energy = forces = stress = None
        calc = getattr(atoms, "calc", None)
        results = getattr(calc, "results", {}) if calc is not None else {}
        if "energy" in results:
            energy = results["energy"]
        if "forces" in results:
            forces = results["forces"]
        if "stress" in results:
            stress = results["stress"]
        return cls(positions=atoms.get_positions(), numbers=atoms.get_atomic_numbers(),
                   cell=np.asarray(atoms.get_cell()), pbc=atoms.get_pbc(), energy=energy, forces=forces,
                   stress=stress, properties=dict(properties or {}), property_units=dict(property_units or {}),
                   info=dict(atoms.info), pool_mask=atoms.arrays.get("pool_mask"),
                   constraints=tuple(c.copy() for c in atoms.constraints))

    def to_ase(self) -> "Any":
        """An ``ase.Atoms`` with labels attached as a ``SinglePointCalculator`` and properties in ``info``."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        atoms.info.update(self.properties)
        if self.pool_mask is not None:
            atoms.arrays["pool_mask"] = self.pool_mask.copy()
        if self.constraints:
            atoms.set_constraint([c.copy() for c in self.constraints])
        results: Dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces.copy()
        if self.stress is not None:
            s = self.stress
            results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def structures_digest(structures) -> str:
    """Short content digest (16 hex characters of a SHA-1) of a list of structures, in order: atomic numbers,
    positions, cell, pbc, energy, forces, stress and properties (names and values). Training states store it per
    source, so a resume on changed data is stated even when the count is the same."""
    import hashlib
    h = hashlib.sha1()
    for s in structures:
        if hasattr(s, "components"):        # an assembly (mftcalc.data.assembly): components, weights, labels
            h.update(structures_digest(s.components).encode())
            h.update(np.ascontiguousarray(s.weights, dtype=np.float64).tobytes())
            h.update(repr(sorted((k, float(v)) for k, v in s.properties.items())).encode())
            continue
        for array in (s.numbers, s.positions, s.cell, s.pbc):
            h.update(np.ascontiguousarray(array).tobytes())
        h.update(repr(None if s.energy is None else float(s.energy)).encode())
        for array in (s.forces, s.stress):
            h.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
        h.update(repr(sorted((k, float(v)) for k, v in s.properties.items())).encode())
        if s.pool_mask is not None:
            h.update(b"mask" + np.ascontiguousarray(s.pool_mask).tobytes())
    return h.hexdigest()[:16]
