"""Collation: a list of :class:`Structure` -> one batch ``Dict[str, Tensor]`` (fields declared in ``mftcalc.keys``).

Atoms of all structures are concatenated (each per-atom array is copied exactly once, by one ``np.concatenate``),
with ``batch[N]`` giving the structure index of each atom. Missing labels are zero-filled and flagged by the
``has_*`` masks, so structures with and without stress (say) can share one batch.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from mftcalc import keys as K
from mftcalc.data.assembly import Assembly, components_of, is_assembly
from mftcalc.data.frame_params import frame_param_matrix
from mftcalc.data.structure import Structure

Batch = Dict[str, torch.Tensor]


def collate(structures: Sequence[Structure], dtype: torch.dtype = torch.float32,
            dataset: Optional[Sequence[int] | int] = None, properties: Optional[Iterable[str]] = None,
            device: torch.device | str = "cpu", frame_params: Sequence[str] = ()) -> Batch:
    """Concatenate structures into one batch.

    Args:
        structures: B structures.
        dtype: floating dtype of cells and labels. Positions are always float64: the model subtracts each
            structure's first atom before casting to its own dtype, so a float32 model stays exact far from the
            origin (float32 positions at 1e6 Å are already rounded to 0.06 Å).
        dataset: dataset index of each structure ([B] ints) or one int for all; default 0.
        properties: property names to collate as labels (default: every property any structure carries).
        device: where the tensors go.
        frame_params: names of the frame parameters to collate from each structure's ``info`` (the model's
            ``frame_param_names``; :mod:`mftcalc.data.frame_params`), raising when one lacks any; none by default.

    Returns:
        A batch dict with ``positions [N,3]``, ``numbers [N]``, ``batch [N]``, ``cell [B,3,3]``, ``pbc [B,3]``,
        ``n_atoms [B]``, ``dataset [B]``, and when any structure has them ``energy [B]``, ``forces [N,3]``,
        ``stress [B,3,3]`` with masks ``has_energy/has_forces/has_stress [B]``, ``property:<name> [B]`` with
        ``has_property:<name> [B]``, ``frame_params [B, F]`` when ``frame_params`` names any, and ``pool_mask
        [N]`` (1/0) when any structure has one. A list of
        assemblies (:class:`mftcalc.data.assembly.Assembly`) is collated by :func:`collate_assemblies` (their
        components, ``group_index``, labels [G]).
    """
    if len(structures) == 0:
        raise ValueError("cannot collate an empty list of structures")
    if is_assembly(structures[0]):
        return collate_assemblies(structures, dtype, dataset, None if properties is None else list(properties),
                                  device, frame_params)
    n_atoms = np.fromiter((s.n_atoms for s in structures), dtype=np.int64, count=len(structures))
    nb = len(structures)
    np_float = np.float32 if dtype == torch.float32 else np.float64

    def t(a: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    out: Batch = {
        K.POSITIONS: t(np.concatenate([s.positions for s in structures]).astype(np.float64, copy=False),
                       torch.float64),
        K.NUMBERS: t(np.concatenate([s.numbers for s in structures]), torch.int64),
        K.BATCH: t(np.repeat(np.arange(nb, dtype=np.int64), n_atoms), torch.int64),
        K.CELL: t(np.stack([s.cell for s in structures])),
        K.PBC: t(np.stack([s.pbc for s in structures]), torch.bool),
        K.N_ATOMS: t(n_atoms, torch.int64),
    }
    if dataset is None:
        ds = np.zeros(nb, dtype=np.int64)
    elif isinstance(dataset, (int, np.integer)):
        ds = np.full(nb, int(dataset), dtype=np.int64)
    else:
        ds = np.asarray(dataset, dtype=np.int64)
        if ds.shape != (nb,):
            raise ValueError(f"dataset has shape {ds.shape}, expected ({nb},)")
    out[K.DATASET] = t(ds, torch.int64)
    if len(frame_params):
        out[K.FRAME_PARAMS] = t(frame_param_matrix(structures, list(frame_params)))
    if any(s.pool_mask is not None for s in structures):          # the atoms group heads pool (others: all)
        out[K.POOL_MASK] = t(np.concatenate([s.pool_mask if s.pool_mask is not None else np.ones(s.n_atoms, bool)
                                             for s in structures]))

    has_e = np.array([s.energy is not None for s in structures])
    if has_e.any():
        out[K.ENERGY] = t(np.array([s.energy if s.energy is not None else 0.0 for s in structures]))
        out[K.HAS_ENERGY] = t(has_e, torch.bool)
    has_f = np.array([s.forces is not None for s in structures])
    if has_f.any():
        out[K.FORCES] = t(np.concatenate([s.forces if s.forces is not None else np.zeros((s.n_atoms, 3))
                                          for s in structures]).astype(np_float, copy=False))
        out[K.HAS_FORCES] = t(has_f, torch.bool)
    has_s = np.array([s.stress is not None for s in structures])
    if has_s.any():
        out[K.STRESS] = t(np.stack([s.stress if s.stress is not None else np.zeros((3, 3)) for s in structures]))
        out[K.HAS_STRESS] = t(has_s, torch.bool)

    names: List[str] = list(properties) if properties is not None else sorted(
        {p for s in structures for p in s.properties})
    for name in names:
        present = np.array([name in s.properties for s in structures])
        out[K.property_key(name)] = t(np.array([s.properties.get(name, 0.0) for s in structures]))
        out[K.has_property_key(name)] = t(present, torch.bool)
    return out


def collate_assemblies(assemblies: Sequence[Assembly], dtype: torch.dtype = torch.float32,
                       dataset: Optional[Sequence[int] | int] = None, properties: Optional[Sequence[str]] = None,
                       device: torch.device | str = "cpu", frame_params: Sequence[str] = ()) -> Dict[str, torch.Tensor]:
    """One batch of G assemblies: their B components collated (:func:`mftcalc.data.batch.collate`, ``dataset``
    per assembly or one int) plus ``group_index [B]`` int64, ``group_weight [B]`` and the labels
    ``property:<name> [G]`` with ``has_property:<name> [G]`` (default: every property any assembly carries).
    Frame parameters are the group's (``info``), repeated on its components."""
    if len(assemblies) == 0:
        raise ValueError("cannot collate an empty list of assemblies")
    sizes = np.array([len(a.components) for a in assemblies], dtype=np.int64)
    components = components_of(assemblies)
    if dataset is not None and not isinstance(dataset, (int, np.integer)):
        dataset = np.repeat(np.asarray(dataset, dtype=np.int64), sizes)
    if frame_params:              # the group's conditions on each component (a component frame may lack them)
        components = [Structure(c.positions, c.numbers, c.cell, c.pbc, pool_mask=c.pool_mask, info={**c.info, **{
            n: a.info[n] for n in frame_params if n in a.info}}) if any(n not in c.info for n in frame_params)
            else c for a in assemblies for c in a.components]
    out = collate(components, dtype=dtype, dataset=dataset, properties=[], device=device, frame_params=frame_params)
    out[K.GROUP_INDEX] = torch.from_numpy(np.repeat(np.arange(len(assemblies)), sizes)).to(device)
    out[K.GROUP_WEIGHT] = torch.from_numpy(np.concatenate([a.weights for a in assemblies])).to(device=device,
                                                                                              dtype=dtype)
    names = list(properties) if properties is not None else sorted({p for a in assemblies for p in a.properties})
    for name in names:
        present = np.array([name in a.properties for a in assemblies])
        out[K.property_key(name)] = torch.tensor([a.properties.get(name, 0.0) for a in assemblies], dtype=dtype,
                                                 device=device)
        out[K.has_property_key(name)] = torch.from_numpy(present).to(device)
    return out


def batch_to(batch: Batch, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Batch:
    """Move a batch to ``device`` and cast its floating fields to ``dtype`` (integer/bool fields keep theirs)."""
    out: Batch = {}
    for key, value in batch.items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.to(device) if device is not None else value
    return out


def split_sizes_by_atoms(n_atoms: Sequence[int], max_atoms: int, costs: Optional[Sequence[float]] = None,
                         max_cost: Optional[float] = None) -> List[List[int]]:
    """Group structure indices (in order) into chunks of at most ``max_atoms`` atoms and, when given, at most
    ``max_cost`` summed ``costs`` (e.g. angle counts); a structure over either limit forms a chunk alone."""
    groups: List[List[int]] = []
    current: List[int] = []
    count = 0
    cost = 0.0
    for idx, n in enumerate(n_atoms):
        c = float(costs[idx]) if costs is not None else 0.0
        over_cost = max_cost is not None and cost + c > max_cost
        if current and (count + n > max_atoms or over_cost):
            groups.append(current)
            current, count, cost = [], 0, 0.0
        current.append(idx)
        count += int(n)
        cost += c
    if current:
        groups.append(current)
    return groups
