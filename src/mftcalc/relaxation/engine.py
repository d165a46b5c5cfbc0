"""The in-flight batch engine of batched relaxation: structures join one batch from a stream, the model
evaluates all of them in one pass per step, each moves by its optimiser, and each leaves as soon as it converges.

:func:`relax_stream` keeps one in-flight batch of at most ``max_atoms`` atoms (and ``max_cost`` angles): admit the
next structures while they fit, evaluate the batch (the optimiser builds it: ``inputs``), hand the structures their
results (``receive``), emit those that converged or ran out of steps (``settle`` first gives them their geometry
and results), step the rest with the optimiser of :mod:`mftcalc.relaxation.optimizers`, the host-side ASE objects
one structure at a time or the on-device ones all at once (cell filters:
:mod:`mftcalc.relaxation.cell_filters`). Waiting structures take the places of leaving ones at once, so the batch stays
full until the stream runs dry (no tail of nearly empty batches). The public entry point is
:func:`mftcalc.relaxation.api.relax`; :mod:`mftcalc.relaxation.pool` runs this engine in worker processes on one shared queue.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.structure import Structure
from mftcalc.relaxation.bfgs import BFGSParams
from mftcalc.relaxation.cell_filters import filter_factory
from mftcalc.relaxation.flight import InFlight
from mftcalc.relaxation.internal_bfgs import InternalBFGSParams
from mftcalc.relaxation.optimizers import BFGS, FireParams, Fire, InternalBFGS, Optimizer


@dataclass
class RelaxResult:
    """One relaxed structure with the model's results there.

    ``structure``: the relaxed geometry (no labels); ``energy`` eV; ``fmax`` eV/Å (largest force, with a cell
    filter also over the filter's cell forces); ``steps``; ``converged``; ``properties``: property heads by name, in
    their units; ``forces`` [n, 3] eV/Å; ``stress`` [3, 3] eV/Å³ (ASE sign) for structures that have one
    (:attr:`mftcalc.data.Structure.stress_defined`), else None.
    """

    structure: Structure
    energy: float
    fmax: float
    steps: int
    converged: bool
    properties: Dict[str, float] = field(default_factory=dict)
    forces: Optional[np.ndarray] = None
    stress: Optional[np.ndarray] = None

    def labelled(self) -> Structure:
        """The relaxed structure with the model's energy, forces and stress as its labels (for writers: ASE
        calculator fields in extxyz and ASE db)."""
        return self.structure.with_labels(energy=self.energy, forces=self.forces, stress=self.stress)

    def to_ase(self) -> Any:
        """The relaxed ``ase.Atoms`` with energy, forces (and stress) as a ``SinglePointCalculator``'s results, so
        ``atoms.get_potential_energy()`` works, and the predicted properties in ``info`` by head name."""
        atoms = self.labelled().to_ase()
        atoms.info.update(self.properties)
        return atoms


class _Intake:
    """The input stream, looked at one item ahead: :meth:`admit` hands out the next items while they fit."""

    def __init__(self, items: Iterable[tuple], max_atoms: int, max_cost: Optional[float]) -> None:
        self._source = iter(items)
        self._ahead = next(self._source, None)
        self.max_atoms, self.max_cost = max_atoms, max_cost

    @property
    def exhausted(self) -> bool:
        return self._ahead is None

    def admit(self, in_flight: List[InFlight]) -> Iterator[tuple]:
        """``(key, structure, cost)`` items that fit beside ``in_flight`` (a structure over a limit runs alone)."""
        atoms = sum(f.structure.n_atoms for f in in_flight)
        cost = sum(f.cost for f in in_flight)
        empty = not in_flight
        while self._ahead is not None:
            item = self._ahead
            n, c = item[1].n_atoms, item[2]
            fits = atoms + n <= self.max_atoms and (c is None or self.max_cost is None or cost + float(c) <= self.max_cost)
            if not (fits or empty):
                return
            atoms, cost, empty = atoms + n, cost + (0.0 if c is None else float(c)), False
            self._ahead = next(self._source, None)          # pulled only once the one before has joined
            yield item


def _evaluate(handle: ModelHandle, optimizer: Optimizer, flights: List[InFlight],
              with_stress: bool) -> Tuple[dict, np.ndarray]:
    """One model pass over the structures in flight at their current geometries (the batch from the optimiser's
    ``inputs``): the result dict (``energy`` [B] eV, ``forces`` [N, 3] eV/Å, ``stress`` [B, 3, 3] eV/Å³ with a cell
    filter) and the row offsets [B + 1]."""
    res = handle.module(optimizer.inputs(flights, handle), compute_forces=True, compute_stress=with_stress,
                        compute_properties=False, features=False)
    return res, np.concatenate([[0], np.cumsum([f.structure.n_atoms for f in flights])])


def relax_stream(items: Iterable[tuple], emit: Callable[[Any, RelaxResult], None], handle: ModelHandle,
                 fmax: float, max_steps: int, fire: FireParams, cell_filter: Optional[str] = None,
                 max_atoms: int = 4096, max_cost: Optional[float] = None, bfgs: Optional[BFGSParams] = None,
                 internal: Optional[InternalBFGSParams] = None, optimizer: Optional[Optimizer] = None,
                 pressure: float = 0.0) -> None:
    """Relax a stream of structures on one in-flight batch: ``items`` yields ``(key, structure, cost)``
    (cost: the structure's angle count, or ``None``), pulled only when the batch has room; ``emit(key, result)``
    as each structure finishes. Structures leave when converged (fmax eV/Å) or after ``max_steps`` steps, and the
    next ones join as soon as they fit under ``max_atoms`` and, with costs, under ``max_cost`` summed costs (a
    structure over a limit runs alone).

    Each structure moves by ``optimizer`` (an object of :data:`mftcalc.relaxation.optimizers.OPTIMIZERS` or
    ``DEVICE_OPTIMIZERS``, one per stream); without one,
    by BFGS in internal coordinates when ``internal`` is given, by BFGS when ``bfgs`` is given, else by FIRE with
    ``fire``. ``cell_filter`` (``"unitcell"``/``"frechet"``) moves the cell too, under hydrostatic ``pressure``
    (eV/Å³). A stream fed by a queue lets worker
    processes share one input (:mod:`mftcalc.relaxation.pool`): no worker drains its batch early. The force-field
    dataset of each structure is ``handle.dataset_index`` (the callers have checked the structures).
    """
    if optimizer is None:
        optimizer = InternalBFGS(internal) if internal is not None else BFGS(bfgs) if bfgs is not None else Fire(fire)
    wrap = filter_factory(cell_filter, pressure)
    intake = _Intake(items, max_atoms, max_cost)
    active: List[InFlight] = []
    while active or not intake.exhausted:
        for key, s, cost in intake.admit(active):
            flight = InFlight.start(key, s, handle.dataset_index(s) if handle.forcefield_heads else 0, cost, wrap)
            flight.state = optimizer.start(flight)
            active.append(flight)
        res, offsets = _evaluate(handle, optimizer, active, with_stress=wrap is not None)
        fmaxes = optimizer.receive(active, res["energy"], res["forces"], res["stress"] if wrap else None, offsets)
        done = [fm < fmax or flight.steps >= max_steps for flight, fm in zip(active, fmaxes)]
        optimizer.settle([flight for flight, out in zip(active, done) if out])
        moving: List[InFlight] = []
        for flight, fm, out in zip(active, fmaxes, done):
            if out:
                emit(flight.key, RelaxResult(flight.geometry(), flight.results.energy, float(fm), flight.steps,
                                             bool(fm < fmax), forces=np.array(flight.results.forces)))
            else:
                moving.append(flight)
        optimizer.step(moving)
        for flight in moving:
            flight.steps += 1
        active = moving          # a long stream keeps only what is in flight
