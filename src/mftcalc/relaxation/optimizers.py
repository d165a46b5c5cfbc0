"""The optimiser registry of batched relaxation: one small class per ``optimizer=`` name, each moving the
structures in flight (:class:`mftcalc.relaxation.flight.InFlight`) one step from model results computed elsewhere.

Whose step it is, measured in CPU time per step of 64 rattled QM9 molecules (18 atoms on average) against the
model's own forward and backward pass, ~250 ms on one thread (``benchmarks/relax_step_cost.py``):

- ``fire``, ``lbfgs``: ASE's ``FIRE`` / ``LBFGS`` objects, one per structure, stepped with the batched forces. FIRE
  costs 3.2 ms a step (1.3 % of the model call) against 2.7 ms (1.1 %) for the numpy FIRE it replaces; LBFGS 6 ms.
- ``bfgs``, ``bfgs-lindh``: ASE's ``BFGS`` object with its step solve replaced (:mod:`mftcalc.relaxation.bfgs`). As is,
  ASE diagonalises the [3n, 3n] Hessian every step: 14 ms (5.6 %), 21 ms (8.4 %) from Lindh's Hessian; with a
  Cholesky solve 7 ms (2.9 %), as the numpy BFGS it replaces (6 ms).
- ``bfgs-internal``: ours (:mod:`mftcalc.relaxation.internal_bfgs`, 31 ms); ASE has no internal-coordinate optimiser.

Cell filters are ASE's too (:mod:`mftcalc.relaxation.cell_filters`). An optimiser implements ``start`` (its state for a
structure joining the batch) and ``step`` (all structures that move, at once); ``receive`` hands the batch's
results to the structures and may be overridden by an optimiser that keeps them as tensors on the model's device
(it must still set ``flight.results`` of the structures that leave, and return fmax of all). ``check`` refuses
inputs the optimiser cannot relax. Lengths Å, forces eV/Å, energies eV.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Dict, Optional, Sequence, Type

import numpy as np
import torch

from mftcalc.relaxation.bfgs import BFGSParams, start_bfgs
from mftcalc.relaxation.flight import InFlight
from mftcalc.relaxation.internal_bfgs import InternalBFGSParams, InternalBFGSState


@dataclass
class FireParams:
    """ASE FIRE defaults (lengths in Å): time step ``dt`` (up to ``dtmax``), largest step norm ``maxstep`` Å, and
    the mixing schedule ``nmin``, ``finc``, ``fdec``, ``astart``, ``fa``."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


@dataclass
class LBFGSParams:
    """ASE LBFGS defaults: ``maxstep`` Å (largest atomic step), ``memory`` (steps kept), ``damping`` (step
    factor), ``alpha`` eV/Å² (initial Hessian α·I); no line search."""

    maxstep: float = 0.2
    memory: int = 100
    damping: float = 1.0
    alpha: float = 70.0


class Optimizer:
    """A registry entry (module docstring). Subclasses set ``name`` and implement :meth:`start`; :meth:`step`
    steps each structure's ASE optimiser unless overridden."""

    name: ClassVar[str]

    def check(self, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
        """Raise ``ValueError`` (naming the fix) for inputs this optimiser cannot relax."""

    def start(self, flight: InFlight) -> Any:
        """The optimiser state of a structure joining the batch (it has no results yet)."""
        raise NotImplementedError

    def receive(self, flights: Sequence[InFlight], energy: torch.Tensor, forces: torch.Tensor,
                stress: Optional[torch.Tensor], offsets: np.ndarray) -> np.ndarray:
        """The model's results of the batch (``energy`` [B] eV, ``forces`` [N, 3] eV/Å, ``stress`` [B, 3, 3]
        eV/Å³ or None; structure k owns force rows ``offsets[k]:offsets[k + 1]``) to each structure; returns
        fmax [B] eV/Å (:meth:`InFlight.take`)."""
        energy = energy.detach().cpu().double().numpy()
        forces = forces.detach().cpu().double().numpy()
        stress = stress.detach().cpu().double().numpy() if stress is not None else None
        return np.array([f.take(energy[k], forces[offsets[k]:offsets[k + 1]], None if stress is None else stress[k])
                         for k, f in enumerate(flights)])

    def step(self, flights: Sequence[InFlight]) -> None:
        """One step of each structure in ``flights`` (all that move this step), from the results they hold."""
        for f in flights:
            f.state.step()

    @classmethod
    def from_params(cls, fire: FireParams, bfgs: BFGSParams, lbfgs: LBFGSParams,
                    internal: Optional[InternalBFGSParams]) -> "Optimizer":
        """This optimiser with its parameters picked from those :func:`mftcalc.relaxation.api.relax` takes."""
        raise NotImplementedError


def _molecules_only(what: str, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
    if cell_filter is not None or any(s.pbc.any() for s in structures):
        raise ValueError(f"{what} for molecules: use optimizer='bfgs' (α·I start) for periodic structures or with "
                         "a cell filter")


@dataclass
class Fire(Optimizer):
    """``optimizer="fire"``: ASE's FIRE per structure."""

    params: FireParams = field(default_factory=FireParams)
    name: ClassVar[str] = "fire"

    def start(self, flight: InFlight) -> Any:
        from ase.optimize import FIRE
        p = self.params
        return FIRE(flight.target, logfile=None, dt=p.dt, maxstep=p.maxstep, dtmax=p.dtmax, Nmin=p.nmin,
                    finc=p.finc, fdec=p.fdec, astart=p.astart, fa=p.fa, a=p.astart)

    @classmethod
    def from_params(cls, fire, bfgs, lbfgs, internal) -> "Fire":
        return cls(fire)


@dataclass
class BFGS(Optimizer):
    """``optimizer="bfgs"``: ASE's BFGS per structure, Cholesky step solve (:mod:`mftcalc.relaxation.bfgs`)."""

    params: BFGSParams = field(default_factory=BFGSParams)
    name: ClassVar[str] = "bfgs"

    def check(self, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
        if self.params.initial_hessian == "lindh":
            _molecules_only("the Lindh model Hessian is", structures, cell_filter)

    def start(self, flight: InFlight) -> Any:
        return start_bfgs(flight.target, self.params, flight.structure.numbers)

    @classmethod
    def from_params(cls, fire, bfgs, lbfgs, internal) -> "BFGS":
        return cls(bfgs)


@dataclass
class BFGSLindh(BFGS):
    """``optimizer="bfgs-lindh"``: :class:`BFGS` started from Lindh's model Hessian (molecules)."""

    name: ClassVar[str] = "bfgs-lindh"

    @classmethod
    def from_params(cls, fire, bfgs, lbfgs, internal) -> "BFGSLindh":
        return cls(replace(bfgs, initial_hessian="lindh"))


@dataclass
class LBFGS(Optimizer):
    """``optimizer="lbfgs"``: ASE's LBFGS per structure (no line search)."""

    params: LBFGSParams = field(default_factory=LBFGSParams)
    name: ClassVar[str] = "lbfgs"

    def start(self, flight: InFlight) -> Any:
        from ase.optimize import LBFGS as AseLBFGS
        p = self.params
        return AseLBFGS(flight.target, logfile=None, maxstep=p.maxstep, memory=p.memory, damping=p.damping,
                        alpha=p.alpha)

    @classmethod
    def from_params(cls, fire, bfgs, lbfgs, internal) -> "LBFGS":
        return cls(lbfgs)


@dataclass
class InternalBFGS(Optimizer):
    """``optimizer="bfgs-internal"``: BFGS in redundant internal coordinates (molecules), all molecules' coordinates
    evaluated in one pass per step (:mod:`mftcalc.relaxation.internal_bfgs`)."""

    params: InternalBFGSParams = field(default_factory=InternalBFGSParams)
    name: ClassVar[str] = "bfgs-internal"

    def check(self, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
        _molecules_only("optimizer='bfgs-internal' (internal coordinates) is", structures, cell_filter)

    def start(self, flight: InFlight) -> Any:
        return InternalBFGSState(self.params, flight.structure.numbers)

    def step(self, flights: Sequence[InFlight]) -> None:
        if not flights:
            return
        new = InternalBFGSState.step_many([f.state for f in flights], [f.atoms.get_positions() for f in flights],
                                          [f.results.forces for f in flights], [f.results.energy for f in flights])
        for f, positions in zip(flights, new):            # (copies in: the states keep their start points)
            f.atoms.positions = positions

    @classmethod
    def from_params(cls, fire, bfgs, lbfgs, internal) -> "InternalBFGS":
        return cls(internal if internal is not None else InternalBFGSParams())


#: ``optimizer=`` name -> registry class (in the order the CLI lists them)
OPTIMIZERS: Dict[str, Type[Optimizer]] = {c.name: c for c in (Fire, BFGS, BFGSLindh, InternalBFGS, LBFGS)}


def make_optimizer(name: str, fire: FireParams = FireParams(), bfgs: BFGSParams = BFGSParams(),
                   lbfgs: LBFGSParams = LBFGSParams(),
                   internal: Optional[InternalBFGSParams] = None) -> Optimizer:
    """The registry's optimiser ``name`` with its parameters; an unknown name raises ``ValueError`` listing them."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; batched relaxation implements {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name].from_params(fire, bfgs, lbfgs, internal)
