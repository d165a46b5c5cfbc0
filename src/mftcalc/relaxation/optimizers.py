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
structure joining the batch) and ``step`` (all structures that move, at once); ``inputs`` builds the model's batch
of the structures in flight, ``receive`` hands the batch's results to the structures, and ``settle`` writes the
geometry and results of those that leave into them; the on-device optimisers (:class:`OnDevice`) override these
three and keep everything as tensors on the model's device. ``check`` refuses inputs the optimiser cannot relax.
Lengths Å, forces eV/Å, energies eV.

- ``fire-torch``, ``bfgs-torch``, ``bfgs-lindh-torch`` (:data:`ON_DEVICE`): the same rules as ``fire``, ``bfgs``,
  ``bfgs-lindh`` (and the cell filters) with their state in padded tensors on the model's device, every structure
  in flight stepped by one set of batched operations (:mod:`mftcalc.relaxation.device_flight`,
  :mod:`mftcalc.relaxation.torch_fire`, :mod:`mftcalc.relaxation.torch_bfgs`, :mod:`mftcalc.relaxation.torch_cell`).
  :func:`step_path` chooses between the two by the rule measured in ``benchmarks/device_optimizers.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Dict, Optional, Sequence, Type

import numpy as np
import torch

from mftcalc.data.batch import collate
from mftcalc.relaxation.bfgs import BFGSParams, start_bfgs
from mftcalc.relaxation.device_flight import DeviceBatch, filter_kind
from mftcalc.relaxation.flight import InFlight
from mftcalc.relaxation.internal_bfgs import InternalBFGSParams, InternalBFGSState
from mftcalc.relaxation.torch_bfgs import TorchBFGS
from mftcalc.relaxation.torch_fire import TorchFire


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
    #: which of :meth:`from_params`'s parameter sets configures it ("fire", "bfgs", "lbfgs" or "internal")
    params_from: ClassVar[str] = "bfgs"
    #: BFGS from Lindh's model Hessian instead of α·I
    lindh: ClassVar[bool] = False

    def check(self, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
        """Raise ``ValueError`` (naming the fix) for inputs this optimiser cannot relax."""

    def start(self, flight: InFlight) -> Any:
        """The optimiser state of a structure joining the batch (it has no results yet)."""
        raise NotImplementedError

    def inputs(self, flights: Sequence[InFlight], handle: Any) -> Dict[str, torch.Tensor]:
        """The model's batch of ``flights`` at their current geometries, on ``handle``'s device (a
        :class:`mftcalc.calculators.model_handle.ModelHandle`)."""
        return collate([f.geometry() for f in flights], handle.dtype, dataset=[f.dataset for f in flights],
                       properties=[], device=handle.device)

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

    def settle(self, leaving: Sequence[InFlight]) -> None:
        """Make ``leaving`` (structures that leave after :meth:`receive`) hold their geometry and results (the
        ASE-object optimisers have them already)."""

    def step(self, flights: Sequence[InFlight]) -> None:
        """One step of each structure in ``flights`` (all that move this step), from the results they hold."""
        for f in flights:
            f.state.step()

    @classmethod
    def from_params(cls, fire: FireParams, bfgs: BFGSParams, lbfgs: LBFGSParams,
                    internal: Optional[InternalBFGSParams]) -> "Optimizer":
        """This optimiser with its parameters picked from those :func:`mftcalc.relaxation.api.relax` takes: the
        set named by ``params_from``, with Lindh's start Hessian where ``lindh`` is set."""
        chosen = {"fire": fire, "bfgs": bfgs, "lbfgs": lbfgs,
                  "internal": internal if internal is not None else InternalBFGSParams()}[cls.params_from]
        return cls(replace(chosen, initial_hessian="lindh") if cls.lindh else chosen)


def _molecules_only(what: str, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
    if cell_filter is not None or any(s.pbc.any() for s in structures):
        raise ValueError(f"{what} for molecules: use optimizer='bfgs' (α·I start) for periodic structures or with "
                         "a cell filter")


@dataclass
class Fire(Optimizer):
    """``optimizer="fire"``: ASE's FIRE per structure."""

    params: FireParams = field(default_factory=FireParams)
    name: ClassVar[str] = "fire"
    params_from: ClassVar[str] = "fire"

    def start(self, flight: InFlight) -> Any:
        from ase.optimize import FIRE
        p = self.params
        return FIRE(flight.target, logfile=None, dt=p.dt, maxstep=p.maxstep, dtmax=p.dtmax, Nmin=p.nmin,
                    finc=p.finc, fdec=p.fdec, astart=p.astart, fa=p.fa, a=p.astart)


def _check_bfgs(params: BFGSParams, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
    """Host and on-device BFGS alike: a Lindh start Hessian is for molecules at fixed cell."""
    if params.initial_hessian == "lindh":
        _molecules_only("the Lindh model Hessian is", structures, cell_filter)


@dataclass
class BFGS(Optimizer):
    """``optimizer="bfgs"``: ASE's BFGS per structure, Cholesky step solve (:mod:`mftcalc.relaxation.bfgs`)."""

    params: BFGSParams = field(default_factory=BFGSParams)
    name: ClassVar[str] = "bfgs"

    def check(self, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
        _check_bfgs(self.params, structures, cell_filter)

    def start(self, flight: InFlight) -> Any:
        return start_bfgs(flight.target, self.params, flight.structure.numbers)


@dataclass
class BFGSLindh(BFGS):
    """``optimizer="bfgs-lindh"``: :class:`BFGS` started from Lindh's model Hessian (molecules)."""

    name: ClassVar[str] = "bfgs-lindh"
    lindh: ClassVar[bool] = True


@dataclass
class LBFGS(Optimizer):
    """``optimizer="lbfgs"``: ASE's LBFGS per structure (no line search)."""

    params: LBFGSParams = field(default_factory=LBFGSParams)
    name: ClassVar[str] = "lbfgs"
    params_from: ClassVar[str] = "lbfgs"

    def start(self, flight: InFlight) -> Any:
        from ase.optimize import LBFGS as AseLBFGS
        p = self.params
        return AseLBFGS(flight.target, logfile=None, maxstep=p.maxstep, memory=p.memory, damping=p.damping,
                        alpha=p.alpha)


@dataclass
class InternalBFGS(Optimizer):
    """``optimizer="bfgs-internal"``: BFGS in redundant internal coordinates (molecules), all molecules' coordinates
    evaluated in one pass per step (:mod:`mftcalc.relaxation.internal_bfgs`)."""

    params: InternalBFGSParams = field(default_factory=InternalBFGSParams)
    name: ClassVar[str] = "bfgs-internal"
    params_from: ClassVar[str] = "internal"

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


@dataclass
class OnDevice(Optimizer):
    """Base of the on-device optimisers: :meth:`start` queues a joining structure, :meth:`inputs` adds the queued
    ones to the stream's :class:`mftcalc.relaxation.device_flight.DeviceBatch` and hands the model its tensors,
    :meth:`receive` returns fmax of all (one transfer of B values), :meth:`settle` copies the leaving structures to
    the host, and :meth:`step` drops them and steps the rest with one batched call of the subclass's :meth:`rule`
    (``layouts``, ``fresh``, ``step``: :mod:`mftcalc.relaxation.torch_fire`, :mod:`mftcalc.relaxation.torch_bfgs`).
    The batch lives from the first structure of a stream to the last (one object per stream: worker processes
    get copies)."""

    _batch: Optional[DeviceBatch] = field(default=None, init=False, repr=False, compare=False)
    _waiting: list = field(default_factory=list, init=False, repr=False, compare=False)

    def rule(self) -> Any:
        raise NotImplementedError

    def start(self, flight: InFlight) -> Any:
        self._waiting.append(flight)
        return None

    def inputs(self, flights: Sequence[InFlight], handle: Any) -> Dict[str, torch.Tensor]:
        if self._waiting:
            if self._batch is None:
                self._batch = DeviceBatch(handle.device, filter_kind(self._waiting[0]), self.rule())
            self._batch.join(self._waiting)
            self._waiting = []
        return self._batch.inputs(flights, handle.dtype)

    def receive(self, flights: Sequence[InFlight], energy: torch.Tensor, forces: torch.Tensor,
                stress: Optional[torch.Tensor], offsets: np.ndarray) -> np.ndarray:
        return self._batch.receive(energy, forces, stress).cpu().numpy()

    def settle(self, leaving: Sequence[InFlight]) -> None:
        self._batch.settle(leaving)

    def step(self, flights: Sequence[InFlight]) -> None:
        if not flights:
            self._batch = None                    # all have left: the next structure starts a new batch
            return
        self._batch.leave(flights)
        self._batch.rule.step(self._batch)


@dataclass
class FireTorch(OnDevice):
    """``optimizer="fire-torch"``: FIRE on the model's device (:mod:`mftcalc.relaxation.torch_fire`)."""

    params: FireParams = field(default_factory=FireParams)
    name: ClassVar[str] = "fire-torch"
    params_from: ClassVar[str] = "fire"

    def rule(self) -> TorchFire:
        return TorchFire(self.params)


@dataclass
class BFGSTorch(OnDevice):
    """``optimizer="bfgs-torch"``: BFGS on the model's device (:mod:`mftcalc.relaxation.torch_bfgs`)."""

    params: BFGSParams = field(default_factory=BFGSParams)
    name: ClassVar[str] = "bfgs-torch"

    def check(self, structures: Sequence[Any], cell_filter: Optional[str]) -> None:
        _check_bfgs(self.params, structures, cell_filter)

    def rule(self) -> TorchBFGS:
        return TorchBFGS(self.params)


@dataclass
class BFGSLindhTorch(BFGSTorch):
    """``optimizer="bfgs-lindh-torch"``: :class:`BFGSTorch` started from Lindh's model Hessian (molecules)."""

    name: ClassVar[str] = "bfgs-lindh-torch"
    lindh: ClassVar[bool] = True


#: ``optimizer=`` name -> registry class (in the order the CLI lists them)
OPTIMIZERS: Dict[str, Type[Optimizer]] = {c.name: c for c in (Fire, BFGS, BFGSLindh, InternalBFGS, LBFGS)}
#: host optimiser name -> its on-device variant (same steps, :class:`OnDevice`)
ON_DEVICE: Dict[str, Type[OnDevice]] = {"fire": FireTorch, "bfgs": BFGSTorch, "bfgs-lindh": BFGSLindhTorch}
#: on-device ``optimizer=`` name -> registry class
DEVICE_OPTIMIZERS: Dict[str, Type[Optimizer]] = {c.name: c for c in ON_DEVICE.values()}


def make_optimizer(name: str, fire: FireParams = FireParams(), bfgs: BFGSParams = BFGSParams(),
                   lbfgs: LBFGSParams = LBFGSParams(),
                   internal: Optional[InternalBFGSParams] = None) -> Optimizer:
    """The registry's optimiser ``name`` (:data:`OPTIMIZERS` or :data:`DEVICE_OPTIMIZERS`) with its parameters; an
    unknown name raises ``ValueError`` listing them."""
    known = {**OPTIMIZERS, **DEVICE_OPTIMIZERS}
    if name not in known:
        raise ValueError(f"unknown optimizer {name!r}; batched relaxation implements {', '.join(known)}")
    return known[name].from_params(fire, bfgs, lbfgs, internal)


def padding_factor(structures: Sequence[Any], cell_filter: Optional[str]) -> float:
    """W = B · d_max³ / Σ d³ over ``structures`` (d = 3 × the optimiser's rows: atoms, + 3 with a cell filter): how
    many times the on-device BFGS's padded [B, d_max, d_max] Hessian algebra costs the per-structure one."""
    d = np.array([3.0 * (s.n_atoms + (3 if cell_filter else 0)) for s in structures])
    return float(len(d) * d.max() ** 3 / (d ** 3).sum())


#: on CPU, BFGS steps on the device while :func:`padding_factor` is at most this (measured: :func:`step_path`)
CPU_BFGS_MAX_PADDING = 4.0


def step_path(name: str, device_step: Any, device: Any, structures: Sequence[Any], cell_filter: Optional[str]) -> str:
    """The registry name that relaxes ``structures`` with optimizer ``name``: its on-device variant
    (:data:`ON_DEVICE`) or itself.

    ``device_step``: True (the on-device variant; ``ValueError`` when there is none), False (``name`` as given),
    or ``"auto"``: on CUDA the on-device variant (not measured: there the host path pays a device-to-host round
    trip and per-structure work every step); on CPU the rule measured by ``benchmarks/device_optimizers.py``
    (``benchmarks/results/device_optimizers.md``, step cost of the device path against the host path's): FIRE on the
    device (0.10-0.74x in every case measured: 8-256 QM9 molecules, 8-64 Si cells with either filter, mixed sizes),
    BFGS on the device unless the structures' sizes differ so much that the padded Hessians cost more than
    :data:`CPU_BFGS_MAX_PADDING` times the unpadded ones (:func:`padding_factor` W; 0.32-0.74x for W ≤ 3.6, 1.6x at
    W = 11 and 2.5x at W = 21: one structure of 41 or 55 atoms among 63 QM9 molecules). A name of
    :data:`DEVICE_OPTIMIZERS` always runs on the device (``device_step=False`` contradicts it: ``ValueError``).
    """
    if device_step not in (True, False, "auto"):
        raise ValueError(f"device_step={device_step!r}; use True, False or 'auto'")
    if name in DEVICE_OPTIMIZERS:
        if device_step is False:
            host = next(h for h, c in ON_DEVICE.items() if c.name == name)
            raise ValueError(f"optimizer={name!r} steps on the device but device_step=False: use optimizer={host!r}")
        return name
    variant = ON_DEVICE.get(name)
    if device_step is True and variant is None:
        raise ValueError(f"optimizer={name!r} has no on-device variant (those of {', '.join(ON_DEVICE)} have): use "
                         "device_step=False or 'auto'")
    if variant is None or device_step is False:
        return name
    if device_step is True or torch.device(device).type != "cpu" or name == "fire":
        return variant.name
    return variant.name if padding_factor(structures, cell_filter) <= CPU_BFGS_MAX_PADDING else name
