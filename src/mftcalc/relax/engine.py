"""Batched prediction and batched FIRE relaxation of many structures in one graph (relax-then-predict).

Both take a list of ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``
(:func:`mftcalc.calculators.inputs.as_structures`). Prediction groups structures by atom count into batches.
Relaxation keeps one in-flight batch of at most ``max_atoms`` atoms: each step is one forward pass over the
structures in flight, FIRE (ASE's parameters and update rule) moves each of them, converged ones leave, and waiting
structures take their places at once, so the batch stays full until the queue runs dry (no tail of nearly empty
batches).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from mftcalc.calculators.inputs import as_structures
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.batch import collate
from mftcalc.data.structure import Structure
from mftcalc.model.inference import DEFAULT_MAX_ANGLES, angle_costs, chunk_groups

if TYPE_CHECKING:
    from mftcalc.relax.internal_bfgs import InternalBFGSParams


OPTIMIZERS = ("fire", "bfgs", "bfgs-lindh", "bfgs-internal")


@dataclass
class FireParams:
    """ASE FIRE defaults (lengths in Å)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99


@dataclass
class BFGSParams:
    """ASE BFGS defaults: ``maxstep`` Å (largest atomic step), ``alpha`` eV/Å² (initial Hessian α·I).

    ``initial_hessian="lindh"`` starts instead from Lindh's model Hessian of each molecule plus ``lindh_shift`` · I
    (eV/Å²; the shift stiffens the rigid-body modes and the terms the model leaves out), see
    :mod:`mftcalc.geometry.lindh`: about half the steps on QM9 molecules. Molecules only (no pbc).
    """

    maxstep: float = 0.2
    alpha: float = 70.0
    initial_hessian: str = "alpha"
    lindh_shift: float = 10.0

    def __post_init__(self) -> None:
        if self.initial_hessian not in ("alpha", "lindh"):
            raise ValueError(f"unknown initial_hessian {self.initial_hessian!r}; use 'alpha' or 'lindh'")

    def hessian0(self, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Initial [3n, 3n] Hessian (eV/Å²) for one structure at ``positions`` [n, 3] Å."""
        if self.initial_hessian == "lindh":
            from mftcalc.geometry.lindh import lindh_hessian
            return lindh_hessian(positions, numbers) + self.lindh_shift * np.eye(positions.size)
        return np.eye(positions.size) * self.alpha


def _abs_newton_step(hessian: np.ndarray, forces: np.ndarray) -> np.ndarray:
    """ASE BFGS's step |H|⁻¹ f (|H|: H with its eigenvalues made positive) for a [d, d] Hessian and [d] forces.

    A positive-definite H (the usual case: a Lindh or α·I start keeps it so under updates with positive
    curvature) is its own |H|, and a Cholesky solve gives the step at a fraction of the cost of the eigenvalue
    decomposition ASE uses (0.2 ms per 54×54 eigh, about a tenth of a batched molecule-step); otherwise
    the eigenvalue decomposition, exactly as in ASE.
    """
    from scipy.linalg import LinAlgError, cho_factor, cho_solve
    try:
        return cho_solve(cho_factor(hessian, check_finite=False), forces, check_finite=False)
    except LinAlgError:
        omega, vectors = np.linalg.eigh(hessian)
        return vectors @ (forces @ vectors / np.fabs(omega))


class _BFGSState:
    """ASE's BFGS for one structure on its [m, 3] coordinates: Hessian update from the last step, step along the
    eigenvectors with |eigenvalues|, the largest atomic step capped at ``maxstep``."""

    def __init__(self, params: BFGSParams, numbers: np.ndarray) -> None:
        self.params = params
        self.numbers = numbers
        self.hessian: Optional[np.ndarray] = None
        self.pos0: Optional[np.ndarray] = None
        self.forces0: Optional[np.ndarray] = None

    def step(self, positions: np.ndarray, forces: np.ndarray, energy: Optional[float] = None) -> np.ndarray:
        """New [m, 3] coordinates from the current ones and their forces (eV/Å) (``energy`` is not used)."""
        r, f = positions.ravel(), forces.ravel()
        if self.hessian is None:
            self.hessian = self.params.hessian0(positions, self.numbers)
        else:
            dpos = r - self.pos0
            if np.abs(dpos).max() >= 1e-7:
                dgrad = self.forces0 - f                 # gradient = −forces
                a = dpos @ dgrad
                dg = self.hessian @ dpos
                b = dpos @ dg
                self.hessian += np.outer(dgrad, dgrad) / a - np.outer(dg, dg) / b
        self.pos0, self.forces0 = r.copy(), f.copy()
        dr = _abs_newton_step(self.hessian, f).reshape(-1, 3)
        longest = float(np.sqrt((dr * dr).sum(1)).max())
        if longest >= self.params.maxstep:
            dr *= self.params.maxstep / longest
        return positions + dr


@dataclass
class RelaxResult:
    """One relaxed structure with the model's results there.

    ``structure``: the relaxed geometry (no labels); ``energy`` eV; ``fmax`` eV/Å (largest force, with a cell
    filter also over the filter's cell forces); ``steps``; ``converged``; ``properties``: property heads by name, in
    their units; ``forces`` [n, 3] eV/Å; ``stress`` [3, 3] eV/Å³ (ASE sign) for structures periodic in all three
    directions, else None.
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


def _as_handle(model: Any, **kwargs: Any) -> ModelHandle:
    return model if isinstance(model, ModelHandle) else ModelHandle.load(model, **kwargs)


def predict(structures: Sequence[Any], model: Any, properties: Optional[Sequence[str]] = None,
            max_atoms: int = 4096, forces: bool = False, progress: bool = False,
            max_angles: Optional[int] = DEFAULT_MAX_ANGLES, workers: int = 1, check: bool = True,
            stress: bool = False, **load_kwargs: Any) -> List[Dict[str, Any]]:
    """Energies and properties (and forces or stress if asked) of many structures, batched by atom and angle count
    (``max_atoms``, ``max_angles``; see :func:`mftcalc.model.inference.chunk_groups`); ``workers`` > 1 spreads
    them over that many CPU processes (:mod:`mftcalc.relax.pool`).

    ``structures``: a list of ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``
    (:func:`mftcalc.calculators.inputs.as_structures`; anything else raises ``TypeError`` naming its index).
    Returns one dict per structure: ``energy`` (eV, if the model has a force field), each requested property
    (all property heads by default, in the head's unit), ``forces`` [n, 3] eV/Å when ``forces=True`` and
    ``stress`` [3, 3] eV/Å³ (ASE sign) when ``stress=True``, for structures periodic in all three directions.

    Every structure is checked first (``ModelHandle.check_structure``: elements, overlapping atoms, force-field
    dataset; the first bad one raises ``ValueError`` naming it), and property heads applied outside their training
    domain warn once. ``check=False`` skips both (for :func:`relax`, whose inputs were checked: its relaxed
    structures only get their datasets). ``load_kwargs`` (model given as a path): ``dtype``, ``device``, ``head``,
    ``dataset`` (one force-field dataset for every structure; default: per structure by the rule of
    :mod:`mftcalc.calculators.domains`), ``allow_untrained_elements``.
    """
    structures = as_structures(structures, "predict")
    handle = _as_handle(model, **load_kwargs)
    names = list(handle.property_names if properties is None else properties)
    unknown = [p for p in names if p not in handle.property_names]
    if unknown:
        raise KeyError(f"model has no property head(s) {unknown}; it has {handle.property_names}")
    if check:
        datasets = handle.check_structures(structures)
        handle.warn_outside_domain(structures, names)
    else:
        datasets = [handle.dataset_index(s) if handle.forcefield_heads else 0 for s in structures]
    if workers > 1:
        from mftcalc.relax.pool import ModelWorkers
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(structures), desc="predict", unit="structure")
        with ModelWorkers(handle, workers) as pool:
            rows = pool.predict(structures, on_done=None if bar is None else bar.update, properties=properties,
                                max_atoms=max_atoms, forces=forces, stress=stress, max_angles=max_angles,
                                check=False)
        if bar is not None:
            bar.close()
        return rows
    has_ff = bool(handle.forcefield_heads)
    out: List[Dict[str, Any]] = []
    groups = chunk_groups(handle.module, structures, max_atoms, max_angles)
    if progress:
        from tqdm.auto import tqdm
        groups = tqdm(groups, desc="predict", unit="batch")
    for group in groups:
        chunk = [structures[i] for i in group]
        batch = collate(chunk, handle.dtype, dataset=[datasets[i] for i in group], properties=[],
                        device=handle.device)
        want_forces = forces and has_ff
        want_stress = stress and has_ff and any(s.pbc.all() for s in chunk)
        context = torch.enable_grad() if (want_forces or want_stress) else torch.no_grad()
        with context:
            res = handle.module(batch, compute_forces=want_forces, compute_stress=want_stress,
                                compute_properties=True, features=False)
        offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in chunk])])
        for k in range(len(chunk)):
            row: Dict[str, Any] = {p: float(res[p][k].detach()) for p in names}
            if has_ff:
                row["energy"] = float(res["energy"][k].detach())
            if want_forces:
                row["forces"] = res["forces"][offsets[k]:offsets[k + 1]].detach().cpu().double().numpy()
            if want_stress and chunk[k].pbc.all():
                row["stress"] = res["stress"][k].detach().cpu().double().numpy()
            out.append(row)
    return out


def relax(structures: Sequence[Any], model: Any, fmax: float = 0.05, steps: int = 500,
          optimizer: str = "fire", cell_filter: Optional[str] = None, max_atoms: int = 4096,
          max_angles: Optional[int] = DEFAULT_MAX_ANGLES, properties: Optional[Sequence[str]] = None,
          fire: FireParams = FireParams(), bfgs: BFGSParams = BFGSParams(),
          internal: Optional["InternalBFGSParams"] = None, progress: bool = False,
          workers: int = 1, pool: Optional[Any] = None, **load_kwargs: Any) -> List[RelaxResult]:
    """Relax many structures together (positions, or positions and cell), then predict their properties.

    Args:
        structures: a list of ``mftcalc.data.Structure``, ``ase.Atoms`` (without ASE constraints, which the batched
            optimisers do not apply) or pymatgen ``Structure``/``Molecule`` (not modified; see
            :func:`mftcalc.calculators.inputs.as_structures`).
        fmax: convergence threshold on the largest atomic force, eV/Å.
        steps: maximum optimiser steps per structure. optimizer: ``"fire"`` or ``"bfgs"`` (ASE's algorithms and
            defaults, ``fire``/``bfgs`` parameters, applied per structure), ``"bfgs-lindh"``: BFGS started from
            Lindh's model Hessian (molecules; about 2/3 of BFGS's steps on QM9, see :class:`BFGSParams`), or
            ``"bfgs-internal"``: BFGS in redundant internal coordinates (molecules; about 40 % of BFGS's steps on
            QM9, ``internal`` parameters, see :mod:`mftcalc.relax.internal_bfgs`; within the same fmax its
            end points are often lower than ASE BFGS's on flat surfaces). cell_filter: ``None`` (fixed cell)
            or ``"unitcell"`` / ``"frechet"`` (cell and positions together, exactly ASE's ``UnitCellFilter`` /
            ``FrechetCellFilter`` with cell_factor = number of atoms; periodic structures only; ``fmax`` then
            also bounds the filter's cell forces). max_atoms, max_angles: limits of the in-flight batch (angles
            counted on the input geometries at the model's a_rcut; ``max_angles=None``: atoms only).
            progress: a tqdm bar over the structures.
        workers: CPU processes to spread the structures over (each with its own model copy and
            ``torch.get_num_threads() // workers`` threads; see :mod:`mftcalc.relax.pool`); 1: this
            process only. pool: a running :class:`mftcalc.relax.pool.ModelWorkers` to use instead of
            starting one (its model is used; ``model`` must be the same).
        load_kwargs: as for :func:`predict` (``dataset``: one force-field dataset for every structure).

    The structures are checked first, as in :func:`predict` (the first bad one raises ``ValueError`` naming it).
    Returns one :class:`RelaxResult` per structure, in input order, with the energy, forces, stress (periodic) and
    properties at the relaxed geometry (``result.to_ase()``: ``ase.Atoms`` with them attached).
    """
    structures = as_structures(structures, "relax", constraints="error")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; batched relaxation implements {', '.join(OPTIMIZERS)}")
    if optimizer == "bfgs-internal" and internal is None:
        from mftcalc.relax.internal_bfgs import InternalBFGSParams
        internal = InternalBFGSParams()
    if optimizer == "bfgs-lindh":
        from dataclasses import replace
        bfgs = replace(bfgs, initial_hessian="lindh")
    if (optimizer == "bfgs-internal" or (optimizer != "fire" and bfgs.initial_hessian == "lindh")) and (
            cell_filter is not None or any(s.pbc.any() for s in structures)):
        what = ("optimizer='bfgs-internal' (internal coordinates) is" if optimizer == "bfgs-internal"
                else "the Lindh model Hessian is")
        raise ValueError(f"{what} for molecules: use optimizer='bfgs' (α·I start) for periodic structures or with "
                         "a cell filter")
    if cell_filter is not None and cell_filter not in CELL_FILTERS:
        raise ValueError(f"unknown cell_filter {cell_filter!r}; use None, 'unitcell' or 'frechet'")
    if cell_filter is not None and not all(s.pbc.all() for s in structures):
        raise ValueError(f"cell_filter={cell_filter!r} needs structures periodic in all three directions")
    handle = _as_handle(model, **load_kwargs)
    if not handle.forcefield_heads:
        raise ValueError("the model has no force-field head, so it cannot relax structures")
    handle.check_structures(structures)
    handle.warn_outside_domain(structures, properties)
    costs = angle_costs(handle.module, structures, max_angles)
    stream_kwargs = dict(fmax=fmax, max_steps=steps, fire=fire, cell_filter=cell_filter, max_atoms=max_atoms,
                         max_cost=max_angles if costs is not None else None,
                         bfgs=None if optimizer in ("fire", "bfgs-internal") else bfgs,
                         internal=internal if optimizer == "bfgs-internal" else None)
    items = [(k, s, None if costs is None else float(costs[k])) for k, s in enumerate(structures)]
    final: List[Optional[RelaxResult]] = [None] * len(items)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(structures), desc="relax", unit="structure")

    def emit(key: int, result: RelaxResult) -> None:
        final[key] = result
        if bar is not None:
            bar.update(1)

    relaxed: List[RelaxResult]
    periodic = any(s.pbc.all() for s in structures)         # the final pass gives their stress at the minimum
    if workers > 1 or pool is not None:
        from contextlib import nullcontext
        from mftcalc.relax.pool import ModelWorkers
        with (nullcontext(pool) if pool is not None else ModelWorkers(handle, workers)) as workers_pool:
            workers_pool.relax_stream(items, emit, stream_kwargs)
            relaxed = [r for r in final if r is not None]
            preds = workers_pool.predict([r.structure for r in relaxed], properties=properties, max_atoms=max_atoms,
                                         max_angles=max_angles, check=False, stress=periodic)
    else:
        # The per-structure optimiser steps are small dense problems (BFGS: a [3n, 3n] solve); a multi-threaded
        # BLAS next to torch's OpenMP pool makes each one 10-40x slower on a busy 2-core machine: keep BLAS on one
        # thread.
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=1, user_api="blas"):
            relax_stream(items, emit, handle, **stream_kwargs)
        relaxed = [r for r in final if r is not None]
        preds = predict([r.structure for r in relaxed], handle, properties, max_atoms, max_angles=max_angles,
                        check=False, stress=periodic)
    if bar is not None:
        bar.close()
    for r, p in zip(relaxed, preds):
        r.properties = {k: v for k, v in p.items() if k not in ("energy", "forces", "stress")}
        r.stress = p.get("stress")
    return relaxed


class _UnitCellState:
    """Generalised coordinates of ASE's ``UnitCellFilter``: undeformed positions [n, 3] stacked on
    cell_factor × deformation gradient [3, 3]; forces likewise (forces·F, virial·F⁻ᵀ / cell_factor)."""

    def __init__(self, structure: Structure) -> None:
        self.orig_cell = structure.cell.copy()
        self.factor = float(structure.n_atoms)

    def to_general(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        grad = np.linalg.solve(self.orig_cell, cell).T
        return np.concatenate([np.linalg.solve(grad, positions.T).T, self.factor * grad])

    def from_general(self, general: np.ndarray) -> tuple:
        grad = general[-3:] / self.factor
        return general[:-3] @ grad.T, self.orig_cell @ grad.T

    def general_forces(self, forces: np.ndarray, stress: np.ndarray, cell: np.ndarray) -> np.ndarray:
        grad = np.linalg.solve(self.orig_cell, cell).T
        virial = -abs(np.linalg.det(cell)) * stress
        return np.concatenate([forces @ grad, np.linalg.solve(grad, virial.T).T / self.factor])


class _FrechetCellState(_UnitCellState):
    """Generalised coordinates of ASE's ``FrechetCellFilter``: undeformed positions [n, 3] stacked on
    exp_cell_factor × log(deformation gradient) [3, 3]; the cell forces are the virial·F⁻ᵀ contracted with the
    Fréchet derivative of the matrix exponential, / exp_cell_factor (exp_cell_factor = number of atoms)."""

    def to_general(self, positions: np.ndarray, cell: np.ndarray) -> np.ndarray:
        from scipy.linalg import logm
        general = super().to_general(positions, cell)
        general[-3:] = np.real(logm(general[-3:] / self.factor)) * self.factor
        return general

    def from_general(self, general: np.ndarray) -> tuple:
        from scipy.linalg import expm
        grad = expm(general[-3:] / self.factor)
        return general[:-3] @ grad.T, self.orig_cell @ grad.T

    def general_forces(self, forces: np.ndarray, stress: np.ndarray, cell: np.ndarray) -> np.ndarray:
        from scipy.linalg import expm_frechet, logm
        grad = np.linalg.solve(self.orig_cell, cell).T
        log_grad = np.real(logm(grad))
        virial = -abs(np.linalg.det(cell)) * stress
        cell_grad = np.linalg.solve(grad, virial.T).T                      # virial · F⁻ᵀ
        log_force = np.zeros((3, 3))
        for mu in range(3):
            for nu in range(3):
                direction = np.zeros((3, 3))
                direction[mu, nu] = 1.0
                log_force[mu, nu] = np.sum(expm_frechet(log_grad, direction, compute_expm=False) * cell_grad)
        return np.concatenate([forces @ grad, log_force / self.factor])


CELL_FILTERS = {"unitcell": _UnitCellState, "frechet": _FrechetCellState}


def relax_stream(items: Iterable[tuple], emit: Callable[[Any, RelaxResult], None], handle: ModelHandle,
                 fmax: float, max_steps: int, fire: FireParams, cell_filter: Optional[str] = None,
                 max_atoms: int = 4096, max_cost: Optional[float] = None, bfgs: Optional[BFGSParams] = None,
                 internal: Optional["InternalBFGSParams"] = None) -> None:
    """Relax a stream of structures on one in-flight batch: ``items`` yields ``(key, structure, cost)``
    (cost: the structure's angle count, or ``None``), pulled only when the batch has room; ``emit(key, result)``
    as each structure finishes. Structures leave when converged or out of steps, and the next ones join as soon
    as they fit under ``max_atoms`` and, with costs, under ``max_cost`` summed costs (a structure over a limit
    runs alone). Each structure moves by FIRE, by BFGS when ``bfgs`` is given, or by BFGS in internal
    coordinates when ``internal`` is given.

    The optimiser state of each structure is an [m, 3] array: positions (m = n) or, with ``cell_filter``, the
    ``UnitCellFilter`` / ``FrechetCellFilter`` coordinates (m = n + 3). A stream fed by a queue lets worker
    processes share one input (:mod:`mftcalc.relax.pool`): no worker drains its batch early. The
    force-field dataset of each structure is ``handle.dataset_index`` (the callers have checked the structures).
    """
    with_cell = cell_filter is not None
    keys: List[Any] = []
    structures: List[Structure] = []
    datasets: List[int] = []
    item_costs: List[float] = []
    filters: List[Any] = []
    cells: List[np.ndarray] = []
    general: List[np.ndarray] = []
    velocity: List[np.ndarray] = []
    dt: List[float] = []
    alpha: List[float] = []
    n_pos: List[int] = []
    steps_done: List[int] = []
    first: List[bool] = []
    bfgs_states: Optional[List[Any]] = [] if (internal is not None or bfgs is not None) else None
    if internal is not None:
        from mftcalc.relax.internal_bfgs import InternalBFGSState

    def admit(key: Any, s: Structure, cost: Optional[float]) -> int:
        keys.append(key)
        structures.append(s)
        datasets.append(handle.dataset_index(s) if handle.forcefield_heads else 0)
        item_costs.append(0.0 if cost is None else float(cost))
        f = CELL_FILTERS[cell_filter](s) if with_cell else None
        filters.append(f)
        cells.append(s.cell.copy())
        general.append(f.to_general(s.positions, s.cell) if f is not None else s.positions.copy())
        velocity.append(np.zeros_like(general[-1]))
        dt.append(fire.dt)
        alpha.append(fire.astart)
        n_pos.append(0)
        steps_done.append(0)
        first.append(True)
        if internal is not None:
            bfgs_states.append(InternalBFGSState(internal, s.numbers))
        elif bfgs is not None:
            bfgs_states.append(_BFGSState(bfgs, s.numbers))
        return len(structures) - 1

    source = iter(items)
    ahead = next(source, None)                     # the next structure of the queue (looked at before it joins)
    active: List[int] = []
    while active or ahead is not None:
        atoms_in_flight = sum(structures[i].n_atoms for i in active)
        cost_in_flight = float(sum(item_costs[i] for i in active))
        while ahead is not None:
            key, s, cost = ahead
            fits = atoms_in_flight + s.n_atoms <= max_atoms and (
                cost is None or max_cost is None or cost_in_flight + float(cost) <= max_cost)
            if active and not fits:
                break
            active.append(admit(key, s, cost))
            atoms_in_flight += s.n_atoms
            cost_in_flight += 0.0 if cost is None else float(cost)
            ahead = next(source, None)
        chunk = []
        for i in active:
            if with_cell:
                pos, cells[i] = filters[i].from_general(general[i])
            else:
                pos = general[i]
            chunk.append(structures[i].with_labels(positions=pos, cell=cells[i], energy=None, forces=None,
                                                   stress=None, properties={}))
        batch = collate(chunk, handle.dtype, dataset=[datasets[i] for i in active], properties=[],
                        device=handle.device)
        res = handle.module(batch, compute_forces=True, compute_stress=with_cell, compute_properties=False,
                            features=False)
        forces_all = res["forces"].detach().cpu().double().numpy()
        energies = res["energy"].detach().cpu().double().numpy()
        stress_all = res["stress"].detach().cpu().double().numpy() if with_cell else None
        offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in chunk])])
        still: List[int] = []
        pending: List[tuple] = []                  # (structure, forces, energy) for the quasi-Newton optimisers
        for k, i in enumerate(active):
            f = forces_all[offsets[k]:offsets[k + 1]]
            if with_cell:
                f = filters[i].general_forces(f, stress_all[k], cells[i])
            fm = float(np.sqrt((f * f).sum(1)).max())
            if fm < fmax or steps_done[i] >= max_steps:
                emit(keys[i], RelaxResult(chunk[k], float(energies[k]), fm, int(steps_done[i]), fm < fmax,
                                          forces=forces_all[offsets[k]:offsets[k + 1]].copy()))
                general[i] = velocity[i] = None                 # a long stream keeps only what is in flight
                if bfgs_states is not None:
                    bfgs_states[i] = None
                continue
            if bfgs_states is not None:
                pending.append((i, f, float(energies[k])))
                steps_done[i] += 1
                still.append(i)
                continue
            v = velocity[i]
            if not first[i]:
                vf = float((f * v).sum())
                if vf > 0.0:
                    v = (1.0 - alpha[i]) * v + alpha[i] * f / np.sqrt((f * f).sum()) * np.sqrt((v * v).sum())
                    if n_pos[i] > fire.nmin:
                        dt[i] = min(dt[i] * fire.finc, fire.dtmax)
                        alpha[i] *= fire.fa
                    n_pos[i] += 1
                else:
                    v = np.zeros_like(v)
                    alpha[i] = fire.astart
                    dt[i] *= fire.fdec
                    n_pos[i] = 0
            first[i] = False
            v = v + dt[i] * f
            dr = dt[i] * v
            norm = np.sqrt((dr * dr).sum())
            if norm > fire.maxstep:
                dr = fire.maxstep * dr / norm
            velocity[i] = v
            general[i] = general[i] + dr
            steps_done[i] += 1
            still.append(i)
        if pending:
            states = [bfgs_states[i] for i, _, _ in pending]
            if hasattr(states[0], "step_many"):            # internal coordinates: all molecules in one pass
                new = states[0].step_many(states, [general[i] for i, _, _ in pending], [f for _, f, _ in pending],
                                          [e for _, _, e in pending])
            else:
                new = [s.step(general[i], f, e) for s, (i, f, e) in zip(states, pending)]
            for (i, _, _), g in zip(pending, new):
                general[i] = g
        active = still
