"""Relax-then-predict screening of a structure file, writing CSV/extxyz/ASE-db results, resumable."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mftcalc.calculators.batched import predict, relax
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.data.structure import Structure


def default_model_path() -> Path:
    """The shipped model: ``$MFTCALC_MODEL`` if set, else ``models/mft_gap.pt`` or ``models/pretrained.pt``
    of the source tree this package is installed from."""
    import os
    if os.environ.get("MFTCALC_MODEL"):
        return Path(os.environ["MFTCALC_MODEL"])
    root = Path(__file__).resolve().parents[3] / "models"
    for name in ("mft_gap.pt", "pretrained.pt"):
        if (root / name).exists():
            return root / name
    raise FileNotFoundError(f"no shipped model in {root}; pass --model or set MFTCALC_MODEL")


def example_path(name: str = "molecules.extxyz") -> Path:
    """A bundled example structure file (``molecules.extxyz``: 8 small organic molecules; ``silicon.extxyz``)."""
    path = Path(__file__).resolve().parents[1] / "examples" / name
    if not path.exists():
        raise FileNotFoundError(f"bundled example {name} not found in {path.parent}")
    return path


def _done_rows(out: Path) -> Dict[int, Dict[str, str]]:
    if not out.exists() or out.suffix != ".csv":
        return {}
    with open(out, newline="") as fh:
        return {int(row["index"]): row for row in csv.DictReader(fh)}


def screen(input_path: str | Path, model: Any, out: str | Path, do_relax: bool = True, fmax: float = 0.05,
           steps: int = 500, chunk: int = 256, properties: Optional[Sequence[str]] = None,
           progress: bool = True, optimizer: str = "fire", cell_filter: Optional[str] = None, workers: int = 1,
           **load_kwargs: Any) -> List[Dict[str, Any]]:
    """Relax (optionally) and predict every structure of ``input_path``; results go to ``out``.

    ``out`` ending in ``.csv`` gets one row per structure (index, name, formula, n_atoms, energy, fmax, steps,
    converged, properties) and is appended chunk by chunk, so a killed run resumes with the unfinished entries;
    ``.extxyz``/``.db`` outputs get the (relaxed) structures with the results in ``info``. ``workers`` > 1
    relaxes (or predicts) on that many CPU processes (:mod:`mftcalc.calculators.parallel`), started once for the
    whole file.
    """
    out = Path(out)
    handle = model if isinstance(model, ModelHandle) else ModelHandle.load(model, **load_kwargs)
    structures = read_structures(input_path)
    done = _done_rows(out)
    todo = [k for k in range(len(structures)) if k not in done]
    rows: List[Dict[str, Any]] = [dict(r) for r in done.values()]
    final_structures: Dict[int, Structure] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(structures), initial=len(done), desc="screen", unit="structure")
    pool = None
    if workers > 1 and todo:
        from mftcalc.calculators.parallel import ModelWorkers
        pool = ModelWorkers(handle, workers)
    try:
        _screen_chunks(structures, todo, chunk, handle, pool, do_relax, fmax, steps, properties, optimizer,
                       cell_filter, out, rows, final_structures, bar)
    finally:
        if pool is not None:
            pool.close()
    if bar is not None:
        bar.close()
    if out.suffix != ".csv":
        by_index = {int(r["index"]): r for r in rows}
        ordered = [final_structures[k].with_labels(info={**final_structures[k].info, **_info(by_index[k])})
                   for k in sorted(final_structures)]
        if out.suffix == ".db":
            from ase.db import connect
            with connect(out) as db:
                for s in ordered:
                    db.write(s.to_ase(), key_value_pairs={k: v for k, v in s.info.items()
                                                          if isinstance(v, (int, float, str, bool))})
        else:
            write_extxyz(ordered, out)
    return sorted(rows, key=lambda r: int(r["index"]))


def _screen_chunks(structures: List[Structure], todo: List[int], chunk: int, handle: ModelHandle, pool: Any,
                   do_relax: bool, fmax: float, steps: int, properties: Optional[Sequence[str]], optimizer: str,
                   cell_filter: Optional[str], out: Path, rows: List[Dict[str, Any]],
                   final_structures: Dict[int, Structure], bar: Any) -> None:
    """The chunk loop of :func:`screen`: relax (or predict) each chunk, append its rows (CSV: to ``out``)."""
    for start in range(0, len(todo), chunk):
        idx = todo[start:start + chunk]
        batch = [structures[k] for k in idx]
        new_rows = []
        if do_relax:
            kwargs = dict(fmax=fmax, steps=steps, properties=properties, optimizer=optimizer, cell_filter=cell_filter)
            results = pool.relax(batch, **kwargs) if pool is not None else relax(batch, handle, **kwargs)
            for k, r in zip(idx, results):
                final_structures[k] = r.structure
                new_rows.append(_row(k, structures[k], r.energy, r.fmax, r.steps, r.converged, r.properties))
        else:
            kwargs = dict(properties=properties, forces=bool(handle.forcefield_heads))
            preds = pool.predict(batch, **kwargs) if pool is not None else predict(batch, handle, **kwargs)
            for k, p in zip(idx, preds):
                final_structures[k] = structures[k]
                f = p.get("forces")
                fm = float(np.sqrt((f * f).sum(1)).max()) if f is not None else float("nan")
                props = {n: v for n, v in p.items() if n not in ("energy", "forces")}
                new_rows.append(_row(k, structures[k], p.get("energy", float("nan")), fm, 0, False, props))
        rows.extend(new_rows)
        if out.suffix == ".csv":
            _append_rows(out, new_rows)
        if bar is not None:
            bar.update(len(idx))


def _row(k: int, s: Structure, energy: float, fmax: float, steps: int, converged: bool,
         props: Dict[str, float]) -> Dict[str, Any]:
    from ase.formula import Formula
    from ase.data import chemical_symbols
    formula = str(Formula("".join(chemical_symbols[z] for z in s.numbers)).format("hill"))
    row: Dict[str, Any] = {"index": k, "name": s.info.get("name", ""), "formula": formula, "n_atoms": s.n_atoms,
                           "energy_eV": energy, "fmax_eV_A": fmax, "steps": steps, "converged": converged}
    row.update(props)
    return row


def _info(row: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("index", "name", "formula", "n_atoms")}


def _append_rows(path: Path, rows: List[Dict[str, Any]]) -> None:
    if not rows:
        return
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
