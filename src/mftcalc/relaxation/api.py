"""The public batched relaxation: :func:`relax` (check the inputs, run the in-flight engine here or on worker
processes, predict the properties at the minima) and :class:`ModelWorkers` (a worker pool with ``relax`` and
``predict`` methods).

This module sits above the engine (:mod:`mftcalc.relaxation.engine`), the worker pool (:mod:`mftcalc.relaxation.pool`) and
batched prediction (:mod:`mftcalc.calculators.predict`); none of them imports it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence

from mftcalc.calculators.inputs import as_structures
from mftcalc.calculators.predict import _as_handle, predict, predict_on
from mftcalc.data.structure import Structure
from mftcalc.geometry.units import GPA
from mftcalc.model.inference import DEFAULT_MAX_ANGLES, angle_costs
from mftcalc.relaxation.bfgs import BFGSParams
from mftcalc.relaxation.cell_filters import CELL_FILTERS
from mftcalc.relaxation.engine import RelaxResult, relax_stream
from mftcalc.relaxation.internal_bfgs import InternalBFGSParams
from mftcalc.relaxation.optimizers import OPTIMIZERS, FireParams, LBFGSParams, make_optimizer, step_path
from mftcalc.relaxation.pool import WorkerPool


#: optimisers that step ``ase.Atoms`` (or a cell filter) through ASE, and so apply the atoms' ASE constraints
APPLIES_CONSTRAINTS = ("fire", "bfgs", "bfgs-lindh", "lbfgs")


def check_constraints(structures: Sequence[Structure], optimizer: str, device_step: bool | str) -> bool | str:
    """``device_step`` for ``structures``: False ("auto": the host path, which applies ASE constraints) when any
    carries constraints, else as given. Raises ``ValueError`` naming the structure, its constraints and the fix
    when the optimiser (or ``device_step=True``) would move atoms without applying them."""
    constrained = [k for k, s in enumerate(structures) if s.constraints]
    if not constrained:
        return device_step
    k = constrained[0]
    names = ", ".join(type(c).__name__ for c in structures[k].constraints)
    if optimizer not in APPLIES_CONSTRAINTS or device_step is True:
        on_device = optimizer not in OPTIMIZERS or device_step is True
        how = "steps on the device" if on_device else "steps internal coordinates"
        raise ValueError(f"structures[{k}] carries ASE constraints ({names}); optimizer={optimizer!r} "
                         f"{'with device_step=True ' if device_step is True else ''}{how} and would not apply them: "
                         f"use optimizer= one of {', '.join(APPLIES_CONSTRAINTS)} (device_step='auto' or False), which "
                         "apply them as ASE does, or remove the constraints")
    return False


def check_pressure(pressure: float, cell_filter: Optional[str]) -> None:
    """Raise ``ValueError`` naming the fix for a pressure that is not a finite number, or a non-zero one without a
    cell filter (a fixed cell feels no pressure)."""
    if isinstance(pressure, bool) or not isinstance(pressure, (int, float)) or not math.isfinite(pressure):
        raise ValueError(f"pressure must be a finite number in eV/Å³ (1 GPa = 0.00624 eV/Å³); got {pressure!r}")
    if pressure != 0.0 and cell_filter is None:
        raise ValueError(f"pressure={pressure:g} eV/Å³ ({pressure / GPA:g} GPa) acts on the cell, which stays fixed "
                         "without a cell filter: "
                         "give cell_filter='frechet' (or 'unitcell'; --cell-filter on the command line)")


def relax(structures: Sequence[Any], model: Any, fmax: float = 0.05, steps: int = 500,
          optimizer: str = "fire", cell_filter: Optional[str] = None, max_atoms: int = 4096,
          max_angles: Optional[int] = DEFAULT_MAX_ANGLES, properties: Optional[Sequence[str]] = None,
          fire: FireParams = FireParams(), bfgs: BFGSParams = BFGSParams(),
          internal: Optional[InternalBFGSParams] = None, progress: bool = False,
          workers: int = 1, pool: Optional[WorkerPool] = None, lbfgs: LBFGSParams = LBFGSParams(),
          device_step: bool | str = "auto", pressure: float = 0.0, **load_kwargs: Any) -> List[RelaxResult]:
    """Relax many structures together (positions, or positions and cell), then predict their properties.

    Args:
        structures: a list of ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule`` (not
            modified; see :func:`mftcalc.calculators.inputs.as_structures`). ASE constraints (``FixAtoms``,
            ``FixCartesian``, ...: ``atoms.constraints``, ``Structure.constraints``, extxyz ``move_mask``) are
            applied by the host optimisers ``fire``, ``bfgs``, ``bfgs-lindh`` and ``lbfgs`` (ASE's, through the
            atoms and cell filters, as ASE applies them), which ``device_step="auto"`` then uses; the on-device and
            internal-coordinate optimisers refuse them by name.
        fmax: convergence threshold on the largest atomic force, eV/Å.
        steps: maximum optimiser steps per structure. optimizer: a name of
            :data:`mftcalc.relaxation.optimizers.OPTIMIZERS`: ``"fire"``, ``"bfgs"`` or ``"lbfgs"`` (ASE's optimisers
            and defaults, ``fire``/``bfgs``/``lbfgs`` parameters, one per structure, stepped with the batched
            forces), ``"bfgs-lindh"``: BFGS started from Lindh's model Hessian (molecules; about 2/3 of BFGS's
            steps on QM9, see :class:`mftcalc.relaxation.bfgs.BFGSParams`), or ``"bfgs-internal"``: BFGS in redundant
            internal coordinates (molecules; about 40 % of BFGS's steps on QM9, ``internal`` parameters, see
            :mod:`mftcalc.relaxation.internal_bfgs`; within the same fmax its end points are often lower than ASE
            BFGS's on flat surfaces); ``"fire-torch"``, ``"bfgs-torch"``, ``"bfgs-lindh-torch"``: the same steps
            computed on the model's device for all structures in flight at once
            (:data:`mftcalc.relaxation.optimizers.DEVICE_OPTIMIZERS`). device_step: ``"auto"`` (the on-device
            variant of ``fire``/``bfgs``/``bfgs-lindh`` on CUDA, and on CPU where
            ``benchmarks/device_optimizers.py`` measured it faster: :func:`mftcalc.relaxation.optimizers.step_path`),
            True (always; ``ValueError`` for an optimizer without one) or False (the host path). cell_filter:
            ``None`` (fixed cell) or ``"unitcell"`` / ``"frechet"`` (cell and positions together, ASE's
            ``UnitCellFilter`` / ``FrechetCellFilter`` with cell_factor = number of atoms; periodic structures
            only; ``fmax`` then also bounds the filter's cell forces). pressure: hydrostatic pressure on the cell,
            eV/Å³ (ASE's ``scalar_pressure``; 1 GPa = ``mftcalc.geometry.units.GPA`` = 0.00624 eV/Å³), with a
            ``cell_filter``: the relaxed cell has stress −pressure·I (ASE sign), the minimum of the enthalpy
            E + pV; the results' energy is E. max_atoms, max_angles: limits of the in-flight batch (angles counted on the input geometries at the model's
            a_rcut; ``max_angles=None``: atoms only). progress: a tqdm bar over the structures.
        workers: CPU processes to spread the structures over (each with its own model copy and
            ``torch.get_num_threads() // workers`` threads; see :mod:`mftcalc.relaxation.pool`); 1: this
            process only. pool: a running :class:`mftcalc.relaxation.pool.WorkerPool` (or :class:`ModelWorkers`) to use
            instead of starting one (its model is used; ``model`` must be the same).
        load_kwargs: as for :func:`mftcalc.calculators.predict.predict` (``dataset``: one force-field dataset for
            every structure).

    The structures are checked first, as in ``predict`` (the first bad one raises ``ValueError`` naming it).
    Returns one :class:`RelaxResult` per structure, in input order, with the energy, forces, stress (periodic) and
    properties at the relaxed geometry (``result.to_ase()``: ``ase.Atoms`` with them attached).
    """
    structures = as_structures(structures, "relax")
    stepper = make_optimizer(optimizer, fire=fire, bfgs=bfgs, lbfgs=lbfgs, internal=internal)
    device_step = check_constraints(structures, optimizer, device_step)
    stepper.check(structures, cell_filter)
    if cell_filter is not None and cell_filter not in CELL_FILTERS:
        raise ValueError(f"unknown cell_filter {cell_filter!r}; use None, 'unitcell' or 'frechet'")
    if cell_filter is not None and not all(s.pbc.all() for s in structures):
        raise ValueError(f"cell_filter={cell_filter!r} needs structures periodic in all three directions")
    check_pressure(pressure, cell_filter)
    handle = _as_handle(model, **load_kwargs)
    if not handle.forcefield_heads:
        raise ValueError("the model has no force-field head, so it cannot relax structures")
    handle.check_structures(structures)
    name = step_path(optimizer, device_step, handle.device, structures, cell_filter)
    if name != optimizer:
        stepper = make_optimizer(name, fire=fire, bfgs=bfgs, lbfgs=lbfgs, internal=internal)
    handle.warn_outside_domain(structures, properties)
    costs = angle_costs(handle.module, structures, max_angles)
    stream_kwargs = dict(fmax=fmax, max_steps=steps, fire=fire, cell_filter=cell_filter, pressure=float(pressure),
                         max_atoms=max_atoms,
                         max_cost=max_angles if costs is not None else None, optimizer=stepper)
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
    periodic = any(s.stress_defined for s in structures)    # the final pass gives their stress at the minimum
    if workers > 1 or pool is not None:
        from contextlib import nullcontext
        with (nullcontext(pool) if pool is not None else WorkerPool(handle, workers)) as workers_pool:
            workers_pool.relax_stream(items, emit, stream_kwargs)
            relaxed = [r for r in final if r is not None]
            preds = predict_on(workers_pool, [r.structure for r in relaxed], properties=properties,
                               max_atoms=max_atoms, max_angles=max_angles, check=False, stress=periodic)
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


class ModelWorkers(WorkerPool):
    """A :class:`mftcalc.relaxation.pool.WorkerPool` (``handle``, ``workers``, ``threads``) with :meth:`relax` and
    :meth:`predict` over its processes, for callers that relax or predict many times on one pool."""

    def relax(self, structures: Sequence[Any], **relax_kwargs: Any) -> List[RelaxResult]:
        """:func:`relax` of ``structures`` on these workers (same arguments, without ``model``)."""
        return relax(structures, self.handle, pool=self, **relax_kwargs)

    def predict(self, structures: Sequence[Structure], chunk: Optional[int] = None,
                on_done: Optional[Callable[[int], None]] = None, **predict_kwargs: Any) -> list:
        """:func:`mftcalc.calculators.predict.predict` over the workers (chunks of up to 256)."""
        return predict_on(self, structures, chunk=chunk, on_done=on_done, **predict_kwargs)
