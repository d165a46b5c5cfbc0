"""Batched prediction: energies, properties, forces and stress of many structures, in batches sized by atom and
angle count, in this process or on worker processes.

Takes a list of ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``
(:func:`mftcalc.calculators.inputs.as_structures`). Worker processes (``workers`` > 1) come from
:class:`mftcalc.relaxation.pool.WorkerPool`, which runs :func:`_predict_task` on chunks of the structures
(:func:`predict_on`): the pool is handed the function and never imports this module.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc.calculators.inputs import as_structures
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.assembly import is_assembly
from mftcalc.data.batch import collate
from mftcalc.data.structure import Structure
from mftcalc.model.inference import DEFAULT_MAX_ANGLES, chunk_groups


def _as_handle(model: Any, **kwargs: Any) -> ModelHandle:
    """``model`` itself when it is a loaded :class:`ModelHandle`, else ``ModelHandle.load(model, **kwargs)``."""
    return model if isinstance(model, ModelHandle) else ModelHandle.load(model, **kwargs)


def predict(structures: Sequence[Any], model: Any, properties: Optional[Sequence[str]] = None,
            max_atoms: int = 4096, forces: bool = False, progress: bool = False,
            max_angles: Optional[int] = DEFAULT_MAX_ANGLES, workers: int = 1, check: bool = True,
            stress: bool = False, **load_kwargs: Any) -> List[Dict[str, Any]]:
    """Energies and properties (and forces or stress if asked) of many structures, batched by atom and angle count
    (``max_atoms``, ``max_angles``; see :func:`mftcalc.model.inference.chunk_groups`); ``workers`` > 1 spreads
    them over that many CPU processes (:mod:`mftcalc.relaxation.pool`).

    ``structures``: a list of ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``
    (:func:`mftcalc.calculators.inputs.as_structures`; anything else raises ``TypeError`` naming its index).
    Returns one dict per structure: ``energy`` (eV, if the model has a force field), each requested property
    (all property heads by default, in the head's unit), ``forces`` [n, 3] eV/Å when ``forces=True`` and
    ``stress`` [3, 3] eV/Å³ (ASE sign) when ``stress=True``, for structures with one
    (:attr:`mftcalc.data.Structure.stress_defined`: periodic in at least one direction, a cell with a volume).

    Every structure is checked first (``ModelHandle.check_structure``: elements, overlapping atoms, force-field
    dataset; the first bad one raises ``ValueError`` naming it), and property heads applied outside their training
    domain warn once; so does a structure beyond the applicability limit (``ModelHandle.warn_unfamiliar``), with or
    without ``check``. ``check=False`` skips both (for :func:`mftcalc.relaxation.api.relax`, whose inputs were checked:
    its relaxed structures only get their datasets). ``load_kwargs`` (model given as a path): ``dtype``,
    ``device``, ``head``, ``dataset`` (one force-field dataset for every structure; default: per structure by the
    rule of :mod:`mftcalc.calculators.domains`), ``allow_untrained_elements``.

    A list of :class:`mftcalc.data.assembly.Assembly` (groups of component structures) gives one row per group:
    each group head's value (default all) and ``ood_score`` (the least familiar component's), see
    :func:`predict_groups_of`.
    """
    if len(structures) and is_assembly(structures[0]):
        if forces or stress or workers > 1:
            raise ValueError("a list of assemblies gets one value per group, in one process: forces and stress "
                             "belong to single structures (predict the components for them); drop forces, stress "
                             "and workers")
        return predict_groups_of(structures, _as_handle(model, **load_kwargs), properties, max_atoms, check)
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
        from mftcalc.relaxation.pool import WorkerPool
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(structures), desc="predict", unit="structure")
        with WorkerPool(handle, workers) as pool:
            rows = predict_on(pool, structures, on_done=None if bar is None else bar.update, properties=names,
                              max_atoms=max_atoms, forces=forces, stress=stress, max_angles=max_angles, check=False)
        if bar is not None:
            bar.close()
        return rows
    has_ff = bool(handle.forcefield_heads)
    out: List[Dict[str, Any]] = []
    scores: List[Dict[str, float]] = []             # applicability scores, asked for or not (warn_unfamiliar)
    score_heads = handle.applicability_heads        # read once, not per structure
    groups = chunk_groups(handle.module, structures, max_atoms, max_angles)
    if progress:
        from tqdm.auto import tqdm
        groups = tqdm(groups, desc="predict", unit="batch")
    for group in groups:
        chunk = [structures[i] for i in group]
        batch = collate(chunk, handle.dtype, dataset=[datasets[i] for i in group], properties=[],
                        device=handle.device, frame_params=handle.frame_params)
        want_forces = forces and has_ff
        want_stress = stress and has_ff and any(s.stress_defined for s in chunk)
        context = torch.enable_grad() if (want_forces or want_stress) else torch.no_grad()
        with context:
            res = handle.module(batch, compute_forces=want_forces, compute_stress=want_stress,
                                compute_properties=True, features=False)
        offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in chunk])])
        for k in range(len(chunk)):
            row: Dict[str, Any] = {p: float(res[p][k].detach()) for p in names}
            scores.append({p: float(res[p][k].detach()) for p in score_heads if p in res})
            if has_ff:
                row["energy"] = float(res["energy"][k].detach())
            if want_forces:
                row["forces"] = res["forces"][offsets[k]:offsets[k + 1]].detach().cpu().double().numpy()
            if want_stress and chunk[k].stress_defined:
                row["stress"] = res["stress"][k].detach().cpu().double().numpy()
            out.append(row)
    handle.warn_unfamiliar(structures, scores, names)
    return out


def predict_groups_of(assemblies: Sequence[Any], handle: ModelHandle, properties: Optional[Sequence[str]] = None,
                      max_atoms: int = 4096, check: bool = True) -> List[Dict[str, Any]]:
    """One row per assembly: every group head in ``properties`` (default all) in its unit, and ``ood_score`` when
    the model has one. Components may be ``Structure``, ``ase.Atoms`` or pymatgen objects; each is checked as the
    calculator checks a structure (``check``). Raises naming the fix for a property that is not a group head."""
    from mftcalc.data.assembly import Assembly
    from mftcalc.model.inference import predict_assemblies
    group_heads = handle.group_heads
    names = list(group_heads if properties is None else properties)
    wrong = [n for n in names if n not in group_heads]
    if wrong or not names:
        raise KeyError(f"a list of assemblies gets one value per group from a group head; {wrong or 'none'} is "
                       f"not one (the model's group heads: {group_heads or 'none'}, its other heads "
                       f"{[n for n in handle.property_names if n not in group_heads]} predict single structures)")
    items = []
    for k, a in enumerate(assemblies):
        if not is_assembly(a):
            raise TypeError(f"predict: item {k} is a {type(a).__name__}, not an Assembly; give groups or "
                            "structures, not both")
        items.append(Assembly(as_structures(a.components, f"predict (group {k})"), a.weights, dict(a.properties),
                              dict(a.property_units), dict(a.info)))
    if check:
        handle.check_structures([c for a in items for c in a.components], forcefield=False)
    rows = predict_assemblies(handle.module, items, max_atoms, handle.dtype, handle.device, names=names)
    handle.warn_unfamiliar([None] * len(rows), rows, names,
                           [f"group {k} (its least familiar component)" for k in range(len(rows))])
    return [{k: v for k, v in row.items() if k in names or k == "ood_score"} for row in rows]


def _predict_task(handle: ModelHandle, structures: List[Structure], kwargs: Dict[str, Any]) -> list:
    """One chunk of :func:`predict_on`, in a worker process with its model ``handle``."""
    return predict(structures, handle, workers=1, **kwargs)


def predict_on(pool: Any, structures: Sequence[Structure], chunk: Optional[int] = None,
               on_done: Optional[Callable[[int], None]] = None, **predict_kwargs: Any) -> list:
    """:func:`predict` of ``structures`` on a running :class:`mftcalc.relaxation.pool.WorkerPool` (its model), in
    chunks of up to 256 to whichever worker is free; ``predict_kwargs`` as for :func:`predict` (not ``workers``).
    Rows in input order. The workers' warnings are silenced, so this process gives the applicability warning
    (``ModelHandle.warn_unfamiliar``) from scores it asks for and drops unless they were asked for."""
    handle = pool.handle
    properties = predict_kwargs.pop("properties", None)
    names = list(handle.property_names if properties is None else properties)
    extra = [n for n in handle.applicability_heads if n not in names]
    rows = pool.map(_predict_task, structures, {**predict_kwargs, "properties": names + extra}, chunk=chunk,
                    on_done=on_done, largest=256)
    handle.warn_unfamiliar(structures, rows, names)
    return [{k: v for k, v in row.items() if k not in extra} for row in rows] if extra else rows
