"""One structure in flight in the batched relaxation: its ``ase.Atoms`` carrying the model's latest results, what
the optimiser moves (the atoms, or a cell filter around them) and the optimiser's state.

The engine (:mod:`mftcalc.relaxation.engine`) evaluates the model once for every structure in flight and hands each its
share with :meth:`InFlight.take`; the optimisers (:mod:`mftcalc.relaxation.optimizers`) then step ``target``, ASE's
``Optimizable`` interface: ``get_positions``/``set_positions``/``get_forces`` of the atoms, or of an ASE cell filter
whose generalised coordinates are positions [n, 3] Å stacked on the cell's 3 rows. :class:`ModelResults` is the
light ASE calculator that lets ASE's optimisers and filters read forces computed elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from ase import Atoms

from mftcalc.data.structure import Structure


class ModelResults:
    """An ASE calculator that only hands out results computed elsewhere (the engine's batched model call):
    ``energy`` eV, ``forces`` [n, 3] eV/Å, ``stress`` [3, 3] eV/Å³ (ASE sign) or None. ASE's optimisers and cell
    filters read them through ``atoms.get_forces()`` etc.; ``filtered`` caches a cell filter's generalised forces
    [n + 3, 3] for these results (:mod:`mftcalc.relaxation.cell_filters`)."""

    def __init__(self) -> None:
        self.energy: Optional[float] = None
        self.forces: Optional[np.ndarray] = None
        self.stress: Optional[np.ndarray] = None
        self.filtered: Optional[np.ndarray] = None

    def set(self, energy: float, forces: np.ndarray, stress: Optional[np.ndarray] = None) -> None:
        """The model's results at the atoms' current geometry (forgets the filter forces of the last ones)."""
        self.energy, self.forces, self.stress, self.filtered = float(energy), forces, stress, None

    def _get(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None:
            raise RuntimeError(f"no model {name} for this geometry yet: the batched relaxation sets them with "
                               "InFlight.take before any optimiser step")
        return value

    def get_potential_energy(self, atoms: Any = None, force_consistent: bool = False) -> float:
        return self._get("energy")

    def get_forces(self, atoms: Any = None) -> np.ndarray:
        return self._get("forces")

    def get_stress(self, atoms: Any = None) -> np.ndarray:
        return self._get("stress")

    def get_property(self, name: str, atoms: Any = None, allow_calculation: bool = True) -> Any:
        return self._get({"free_energy": "energy"}.get(name, name))


@dataclass(eq=False)
class InFlight:
    """One structure being relaxed: ``key`` and ``structure`` as they came in (``structure``: the template of its
    rows in the batch, its numbers, pbc and info), ``dataset`` (force-field dataset index), ``cost`` (angle count,
    0 when unknown), ``atoms`` (current positions [n, 3] Å and cell [3, 3] Å, calculator :class:`ModelResults`),
    ``target`` (``atoms`` or a cell filter around them: what the optimiser moves), ``state`` (the optimiser's own,
    from its ``start``) and ``steps`` taken."""

    key: Any
    structure: Structure
    dataset: int
    cost: float
    atoms: Atoms
    target: Any
    state: Any = None
    steps: int = 0

    @classmethod
    def start(cls, key: Any, structure: Structure, dataset: int, cost: Optional[float],
              cell_filter: Optional[type] = None) -> "InFlight":
        """A structure joining the batch; ``cell_filter``: a class of :data:`mftcalc.relaxation.cell_filters.CELL_FILTERS`
        (the cell moves too) or None."""
        atoms = Atoms(numbers=structure.numbers, positions=structure.positions, cell=structure.cell,
                      pbc=structure.pbc)
        if structure.constraints:       # ASE's optimisers and filters apply them through the atoms
            atoms.set_constraint([c.copy() for c in structure.constraints])
        atoms.calc = ModelResults()
        target = cell_filter(atoms) if cell_filter is not None else atoms
        return cls(key, structure, dataset, 0.0 if cost is None else float(cost), atoms, target)

    @property
    def results(self) -> ModelResults:
        return self.atoms.calc

    def geometry(self) -> Structure:
        """The structure at its current positions and cell, without labels (a row of the next batch)."""
        return self.structure.with_labels(positions=self.atoms.positions.copy(), cell=self.atoms.cell.array.copy(),
                                          energy=None, forces=None, stress=None, properties={})

    def take(self, energy: float, forces: np.ndarray, stress: Optional[np.ndarray] = None) -> float:
        """Hand over the model's results at the current geometry; returns fmax (eV/Å), the largest row norm of the
        target's forces (with a cell filter also over its cell forces, as ASE's optimisers measure it)."""
        self.results.set(energy, forces, stress)
        f = self.target.get_forces()
        return float(np.sqrt((f * f).sum(1)).max())
