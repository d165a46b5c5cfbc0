"""Relax-then-predict screening of a structure file (or a list), writing CSV/extxyz/ASE-db results, resumable (CSV).

Where it runs: this process (optionally with a pool of CPU worker processes, :mod:`mftcalc.relaxation.pool`), one
shard of a scheduler array job (``shard=(I, N)``, joined by :func:`mftcalc.workflows.shards.merge`), or a Dask
cluster (``client=``, :mod:`mftcalc.workflows.dask_screen`). Each runs the same chunks
(:mod:`mftcalc.workflows.screen_chunk`) into the same output (columns and formats:
:mod:`mftcalc.workflows.screen_format`; the resumable CSV: :mod:`mftcalc.workflows.results_store`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mftcalc.calculators.inputs import as_structures
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.io import read_structures
from mftcalc.data.structure import Structure
from mftcalc.filehash import sha256_file
from mftcalc.workflows.results_store import ResultsCSV, acquire_lock, make_provenance
from mftcalc.workflows.screen_chunk import screen_chunk
from mftcalc.workflows.screen_format import (ENERGY, FMAX, LEADING, OUTPUT_FORMATS, OUTPUT_HELP,  # noqa: F401
                                             output_format, property_column, provenance_path, result_columns,
                                             results_files, summary, unit_tag, write_structures)
from mftcalc.workflows.shards import blocks, parse_shard, shard_option, shard_path


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


def _model_sha256(handle: ModelHandle) -> str:
    """SHA-256 of the model file, or of the weights of a model object without one."""
    if handle.source is not None:
        return sha256_file(handle.source)
    digest = hashlib.sha256()                    # a model object: its weights
    for key, value in sorted(handle.module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def screen(input_path: Union[str, Path, Sequence[Any]], model: Any, out: str | Path, do_relax: bool = True,
           fmax: float = 0.05, steps: int = 500, chunk: int = 256, properties: Optional[Sequence[str]] = None,
           progress: bool = True, optimizer: str = "fire", cell_filter: Optional[str] = None, workers: int = 1,
           shard: Optional[Union[str, Tuple[int, int]]] = None, client: Any = None, pressure: float = 0.0,
           **load_kwargs: Any) -> List[Dict[str, Any]]:
    """Relax (optionally) and predict every structure of ``input_path``; results go to ``out``.

    ``input_path``: a structure file (anything :func:`mftcalc.data.read_structures` reads) or a list of
    ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``
    (:func:`mftcalc.calculators.inputs.as_structures`; a CSV resume then checks a hash of their atoms).
    ``out`` ending in ``.csv`` gets one row per structure (columns: :mod:`mftcalc.workflows.screen_format`),
    appended chunk by chunk in whole lines and in input order, so a killed run resumes with the unfinished entries
    (:mod:`mftcalc.workflows.results_store`: a resume with another model, input, option or mftcalc version is
    refused; a second run on the same output is refused while the first holds its lock). ``.extxyz``/``.xyz``
    (optionally ``.gz``) and ``.db`` outputs get the (relaxed) structures with the model's energy, forces and stress
    (periodic) as ASE calculator results and the row in ``info``; any other suffix is refused
    (:func:`output_format`). Each structure is checked first (elements, overlapping atoms, force-field dataset); one
    that fails gets a row with its ``error`` and the others carry on.

    Chunks: blocks of ``chunk`` consecutive structures, each relaxed (or predicted) together. Where they run:
    ``workers`` > 1: that many CPU processes of this machine (:mod:`mftcalc.relaxation.pool`), started once for the
    whole file. ``shard=(I, N)`` or ``"I/N"``: only shard I's blocks (:mod:`mftcalc.workflows.shards`: blocks dealt
    round robin), written to ``<out stem>.shard-I-of-N<suffix>``; ``mftcalc merge`` joins the shards into exactly
    this function's unsharded output. ``client``: a ``distributed.Client``; the chunks run as tasks on its workers,
    each keeping one model loaded (:mod:`mftcalc.workflows.dask_screen`), and the results stream into the same
    output. ``pressure``: hydrostatic pressure on the cell, eV/Å³, for a relaxation with ``cell_filter``
    (:func:`mftcalc.relax`). ``load_kwargs``: as for :meth:`ModelHandle.load` (``device``, ``dtype``, ``dataset``, ``head``, ...),
    when ``model`` is a path (with ``client``: how the workers load it; this process reads it on the CPU).
    Returns the rows of the structures this call covers (all, or the shard's), in input order.
    """
    shard = parse_shard(shard)
    if client is not None and workers > 1:
        raise ValueError("give workers > 1 (processes of this machine) or client (a Dask cluster), not both")
    out = Path(out) if shard is None else shard_path(out, shard)
    kind = output_format(out)
    if isinstance(input_path, (str, os.PathLike)):
        structures = read_structures(input_path)
    else:
        structures = as_structures(input_path, "screen")
        input_path = None
    if isinstance(model, ModelHandle):
        handle, worker_kwargs = model, model.load_kwargs()
    else:                                  # with a Dask client this process needs the model's metadata only
        worker_kwargs = dict(load_kwargs)
        handle = ModelHandle.load(model, **({**load_kwargs, "device": "cpu"} if client is not None else load_kwargs))
    names = list(handle.property_names if properties is None else properties)
    unknown = [p for p in names if p not in handle.property_names]
    if unknown:
        raise KeyError(f"model has no property head(s) {unknown}; it has {handle.property_names}")
    columns = result_columns(handle, names)
    mine = blocks(len(structures), chunk, shard)
    out.parent.mkdir(parents=True, exist_ok=True)
    if do_relax:
        from mftcalc.relaxation.api import check_pressure
        check_pressure(pressure, cell_filter)
    elif pressure:
        raise ValueError("pressure acts in a relaxation of the cell: give do_relax=True (--relax) and a cell filter")
    options = dict(do_relax=do_relax, fmax=fmax, steps=steps, names=names, optimizer=optimizer,
                   cell_filter=cell_filter, pressure=float(pressure))
    shard_entry = None if shard is None else shard_option(shard, chunk, len(structures))
    with _results(out, handle, input_path, columns, structures, options, shard_entry, mine) as (store, provenance):
        done = store.done if store is not None else {}
        todo = [[k for k in block if k not in done] for block in mine]
        chunks = ({k: structures[k] for k in block} for block in todo if block)
        rows: List[Dict[str, Any]] = [dict(r) for r in done.values()]
        final_structures: Dict[int, Structure] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=sum(map(len, mine)), initial=len(done), desc="screen", unit="structure")
        pool = None
        if workers > 1 and any(todo):
            from mftcalc.relaxation.api import ModelWorkers
            pool = ModelWorkers(handle, workers)
        try:
            if client is not None:
                from mftcalc.workflows.dask_screen import run_chunks
                handle.warn_outside_domain([s for block in todo for s in (structures[k] for k in block)], names)
                results = run_chunks(client, chunks, handle, worker_kwargs, options, labels=kind != "csv",
                                     model_sha256=provenance["model"]["sha256"])
            else:
                results = _local_chunks(chunks, handle, pool, options, labels=kind != "csv")
            for new_rows, finals in results:
                new_rows = [{c: r.get(c, "") for c in columns} for r in new_rows]     # failures: empty values
                if client is not None:                  # the Dask workers' warnings stay on the workers
                    _warn_unfamiliar(handle, structures, new_rows, names)
                rows.extend(new_rows)
                final_structures.update(finals)
                if store is not None:
                    store.append(new_rows)
                if bar is not None:
                    bar.update(len(new_rows))
        finally:
            if pool is not None:
                pool.close()
            if bar is not None:
                bar.close()
        if kind != "csv":
            write_structures(out, kind, rows, final_structures)
            if shard is not None:          # a complete extxyz/db shard: its record, for mftcalc merge
                import json

                from mftcalc.files import atomic_write_text
                atomic_write_text(provenance_path(out), json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    return sorted(rows, key=lambda r: int(r["index"]))


def _warn_unfamiliar(handle: ModelHandle, structures: List[Structure], rows: List[Dict[str, Any]],
                     names: List[str]) -> None:
    """``ModelHandle.warn_unfamiliar`` from finished result rows (their score columns; failed rows have none)."""
    scores = [{h: float(r[property_column(handle, h)]) for h in handle.applicability_heads
               if r.get(property_column(handle, h), "") != ""} for r in rows]
    handle.warn_unfamiliar([structures[int(r["index"])] for r in rows], scores, names)


def _local_chunks(chunks: Any, handle: ModelHandle, pool: Any, options: Dict[str, Any], labels: bool):
    """Each chunk (structures by index) run here (or on ``pool``): yields ``(rows, final_structures)``."""
    for structures in chunks:
        final: Dict[int, Structure] = {}
        yield screen_chunk(structures, handle, pool, final_structures=final, labels=labels, **options), final


@contextlib.contextmanager
def _results(out: Path, handle: ModelHandle, input_path: Optional[str | Path], columns: List[str],
             structures: List[Structure], run: Dict[str, Any], shard_entry: Optional[Dict[str, int]],
             mine: List[List[int]]):
    """The locked output and this run's provenance record: ``(ResultsCSV, record)`` for ``.csv``, else ``(None,
    record)`` (the lock only; other formats are written at the end). ``input_path`` None: the structures were
    passed as a list. ``run``: the screen's options; ``shard_entry``: ``options.shard`` of a shard, else None;
    ``mine``: the blocks this output holds."""
    options: Dict[str, Any] = {"relax": run["do_relax"], "properties": run["names"],
                               "dtype": str(handle.dtype).replace("torch.", ""),
                               "head": getattr(handle.module, "active_ff_head", None) or None,
                               "dataset": handle.dataset_names[handle.dataset] if handle.dataset is not None else None,
                               "allow_untrained_elements": handle.allow_untrained_elements}
    if run["do_relax"]:
        options.update(fmax=run["fmax"], steps=run["steps"], optimizer=run["optimizer"],
                       cell_filter=run["cell_filter"])
        if run["pressure"]:                  # recorded (and a resume at another pressure refused) when set
            options["pressure_eV_per_A3"] = run["pressure"]
    if shard_entry is not None:
        options["shard"] = shard_entry
    if input_path is None:
        provenance = make_provenance(_model_sha256(handle), handle.source, f"{len(structures)} structures in memory",
                                     options, columns, input_sha256=structures_sha256(structures))
    else:
        provenance = make_provenance(_model_sha256(handle), handle.source, input_path, options, columns)
    if output_format(out) != "csv":
        # not <out>.lock: ASE's database takes that name for its own lock file and would wait on ours for ever
        fd = acquire_lock(out.with_name(out.name + ".screen.lock"), out)
        try:
            yield None, provenance
        finally:
            os.close(fd)
        return
    allowed = {k for block in mine for k in block}
    with ResultsCSV(out, columns, provenance, _row_validator(structures, columns, allowed, run["do_relax"])) as store:
        yield store, provenance


def _row_validator(structures: List[Structure], columns: List[str], allowed: set, relaxed: bool):
    """``validate(row) -> None or reason`` for rows read back on resume; ``allowed``: the indices this output
    holds (all, or a shard's); ``relaxed``: the run relaxes (``converged`` True or False; else empty, or False as
    outputs of predictions written before December 2026 have it)."""
    flags = ("True", "False") if relaxed else ("", "False")
    numbers = [ENERGY, FMAX] + columns[len(LEADING):-1]

    def validate(row: Dict[str, str]) -> Optional[str]:
        try:
            k = int(row["index"])
        except ValueError:
            return f"index {row['index']!r} is not an integer"
        if not 0 <= k < len(structures):
            return f"index {k} is outside the input's 0..{len(structures) - 1}"
        if k not in allowed:
            return f"structure {k} is not in this shard"
        if row["n_atoms"] != str(structures[k].n_atoms):
            return f"structure {k} has {row['n_atoms']!r} atoms, the input has {structures[k].n_atoms}"
        if row["error"]:
            return None                                    # a recorded failure
        for column in numbers:
            try:
                float(row[column])
            except ValueError:
                return f"{column} = {row[column]!r} is not a number"
        if not row["steps"].isdigit():
            return f"steps = {row['steps']!r} is not a count"
        if row["converged"] not in flags:
            return f"converged = {row['converged']!r} is not {' or '.join(repr(f) for f in flags)}"
        return None

    return validate


def structures_sha256(structures: Sequence[Structure]) -> str:
    """SHA-256 of what the model sees of each structure (atomic numbers, positions, cell, pbc, ``info["dataset"]``):
    the input record of a screen of structures passed as a list."""
    digest = hashlib.sha256()
    for s in structures:
        for array in (s.numbers.astype(np.int64), s.positions.astype(np.float64), s.cell.astype(np.float64),
                      s.pbc.astype(np.bool_)):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(repr(s.info.get("dataset")).encode())
    return digest.hexdigest()
