"""One chunk of a screen: each structure checked, the good ones relaxed (or predicted) together, one row each.

A chunk is the unit of work everywhere a screen runs: in this process, on the worker pool of one machine, in a
shard of an array job and as one Dask task. Run in one process (here, in a shard, as a Dask task), the same chunk
gives the same batches and so the same numbers to the last bit (:mod:`mftcalc.workflows.shards`); the worker pool
shares a chunk's structures among its processes, so its batches, and the last digits, may differ. Row columns:
:mod:`mftcalc.workflows.screen_format`.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import numpy as np

from mftcalc.calculators.checks import check_overlaps
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.structure import Structure
from mftcalc.relaxation.api import relax
from mftcalc.workflows.screen_format import ENERGY, FMAX, frame_param_column, property_column


def screen_chunk(structures: Dict[int, Structure], handle: ModelHandle, pool: Any, do_relax: bool, fmax: float,
                 steps: int, names: List[str], optimizer: str, cell_filter: Optional[str],
                 final_structures: Dict[int, Structure], labels: bool = False,
                 pressure: float = 0.0) -> List[Dict[str, Any]]:
    """Check, relax (or predict) one chunk: ``structures`` by input index, in input order. Returns their rows in
    that order (failures: ``error`` set, no values). ``pressure``: eV/Å³ on the cell (with ``cell_filter``). ``pool``: a :class:`mftcalc.relaxation.api.ModelWorkers` or None.
    ``final_structures`` gets each (relaxed) structure by index: with ``labels``, the model's energy, forces and
    stress (periodic) as its labels (no labels for a failed structure), for the extxyz/db writers."""
    rows: Dict[int, Dict[str, Any]] = {}
    datasets: Dict[int, str] = {}
    ok: List[int] = []
    for k, s in structures.items():
        try:
            index = handle.check_structure(s, k)
            datasets[k] = handle.dataset_names[index] if handle.forcefield_heads else ""
            ok.append(k)
        except ValueError as exc:                # elements, overlaps, dataset: recorded, the rest carry on
            rows[k] = _row(handle, k, s, "", error=str(exc))
            final_structures[k] = _unlabelled(s) if labels else s
    batch = [structures[k] for k in ok]
    if batch and do_relax:
        kwargs = dict(fmax=fmax, steps=steps, properties=names, optimizer=optimizer, cell_filter=cell_filter,
                      pressure=pressure)
        results = pool.relax(batch, **kwargs) if pool is not None else relax(batch, handle, **kwargs)
        for k, r in zip(ok, results):
            final_structures[k] = r.structure
            try:
                check_overlaps(r.structure)
            except ValueError as exc:
                rows[k] = _row(handle, k, structures[k], datasets[k], error=f"after relaxation: {exc}")
                continue
            if labels:
                final_structures[k] = r.labelled()
            rows[k] = _row(handle, k, structures[k], datasets[k], r.energy, r.fmax, r.steps, r.converged, r.properties)
    elif batch:
        from mftcalc import predict                      # the public batched prediction
        kwargs = dict(properties=names, forces=bool(handle.forcefield_heads), stress=labels)
        preds = pool.predict(batch, **kwargs) if pool is not None else predict(batch, handle, **kwargs)
        for k, p in zip(ok, preds):
            final_structures[k] = structures[k]
            if labels:                                   # the model's results replace any labels of the input
                final_structures[k] = structures[k].with_labels(energy=p.get("energy"), forces=p.get("forces"),
                                                                stress=p.get("stress"))
            f = p.get("forces")
            fm = float(np.sqrt((f * f).sum(1)).max()) if f is not None else float("nan")
            props = {n: v for n, v in p.items() if n not in ("energy", "forces", "stress")}
            rows[k] = _row(handle, k, structures[k], datasets[k], p.get("energy", float("nan")), fm, 0, "", props)
    return [rows[k] for k in structures]


def _row(handle: ModelHandle, k: int, s: Structure, dataset: str, energy: float = float("nan"),
         fmax: float = float("nan"), steps: int = 0, converged: Union[bool, str] = "",
         props: Optional[Dict[str, float]] = None, error: str = "") -> Dict[str, Any]:
    """One result row (columns: :mod:`mftcalc.workflows.screen_format`); a failed structure has ``error`` set and
    no values; ``converged`` is empty for a structure that was predicted, not relaxed."""
    from ase.data import chemical_symbols
    from ase.formula import Formula
    formula = str(Formula("".join(chemical_symbols[z] for z in s.numbers)).format("hill"))
    row: Dict[str, Any] = {"index": k, "name": s.info.get("name", ""), "formula": formula, "n_atoms": s.n_atoms,
                           "dataset": dataset}
    row.update({frame_param_column(handle, n): s.info.get(n, "") for n in handle.frame_params})
    if error:
        return {**row, "error": error}
    row.update({ENERGY: energy, FMAX: fmax, "steps": steps, "converged": converged})
    row.update({property_column(handle, n): v for n, v in (props or {}).items()})
    row["error"] = ""
    return row


def _unlabelled(s: Structure) -> Structure:
    """``s`` without energy, forces and stress (a failed structure's output carries no results, not its input's)."""
    return s.with_labels(energy=None, forces=None, stress=None)
