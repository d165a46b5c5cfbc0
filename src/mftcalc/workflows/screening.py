"""Relax-then-predict screening of a structure file (or a list), writing CSV/extxyz/ASE-db results, resumable (CSV).

Output columns (CSV header, extxyz ``info`` keys, ASE-db key-value pairs) carry their unit in their name,
``<quantity>_<unit>``, the unit spelled in ASCII letters and digits (:func:`unit_tag`: ``Å`` -> ``A``, ``/`` ->
``_per_``, powers as plain digits, ``unitless`` for dimensionless heads): ``energy_eV``, ``fmax_eV_per_A``,
``gap_Hartree``, ``mu_Debye``, ``r2_bohr2``. Counts and labels have none: ``index``, ``name``, ``formula``,
``n_atoms``, ``dataset`` (the force-field dataset used), ``steps``, ``converged``, ``error`` (empty, or why the
structure has no results: it failed the structure check, or its relaxation ended with overlapping atoms).
In extxyz and ASE-db outputs each structure also carries the model's energy (eV), forces (eV/Å) and, when periodic
in all three directions, stress (eV/Å³) as ASE calculator results, so ``ase.io.read(out, ":")[i]
.get_potential_energy()`` works.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from mftcalc.relax.engine import predict, relax
from mftcalc.calculators.checks import check_overlaps
from mftcalc.calculators.inputs import as_structures
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.workflows.results_store import ResultsCSV, acquire_lock, file_sha256, make_provenance

ENERGY, FMAX = "energy_eV", "fmax_eV_per_A"
LEADING = ["index", "name", "formula", "n_atoms", "dataset", ENERGY, FMAX, "steps", "converged"]
#: what a screen writes, by the output's suffix: the resumable CSV table, or the structures with their results
OUTPUT_FORMATS = {".csv": "csv", ".extxyz": "extxyz", ".xyz": "extxyz", ".extxyz.gz": "extxyz",
                  ".xyz.gz": "extxyz", ".db": "db"}
OUTPUT_HELP = ("results: .csv (resumable table), .extxyz or .xyz (structures with energy/forces/stress as ASE "
               "calculator results and the columns in info; .extxyz.gz/.xyz.gz compressed) or .db (ASE database); "
               "column names carry their unit (energy_eV, fmax_eV_per_A, gap_Hartree, ...)")


def output_format(out: str | Path) -> str:
    """``"csv"``, ``"extxyz"`` or ``"db"`` for an output path by its suffix (:data:`OUTPUT_FORMATS`); any other
    suffix raises ``ValueError`` listing the supported ones."""
    path = Path(out)
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix not in OUTPUT_FORMATS:
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise ValueError(f"output {str(out)!r} has {what}, which mftcalc does not write; use .csv (resumable "
                         "table), .extxyz or .xyz (structures with their results; .extxyz.gz or .xyz.gz compressed) "
                         "or .db (ASE database)")
    return OUTPUT_FORMATS[suffix]


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


def unit_tag(unit: str) -> str:
    """A unit as the suffix of a column name: ``eV/Å`` -> ``eV_per_A``, ``bohr^2`` -> ``bohr2``, ``""`` ->
    ``unitless``."""
    if not unit or unit.lower() in ("unitless", "dimensionless", "1"):
        return "unitless"
    tag = unit.replace("Å", "A").replace("/", "_per_").replace("^", "")
    return re.sub(r"[^0-9A-Za-z_]+", "_", tag).strip("_")


def property_column(handle: ModelHandle, name: str) -> str:
    """Column of property head ``name``: ``<name>_<unit>`` (e.g. ``gap_Hartree``)."""
    return f"{name}_{unit_tag(handle.unit(name))}"


def result_columns(handle: ModelHandle, properties: Sequence[str]) -> List[str]:
    """The header of a screen's results: see the module docs."""
    return LEADING + [property_column(handle, p) for p in properties] + ["error"]


def results_files(out: str | Path) -> List[Path]:
    """A CSV output and its provenance record (what to delete to start a screen over)."""
    out = Path(out)
    return [out, out.with_name(out.name + ".provenance.json")]


def _model_sha256(handle: ModelHandle) -> str:
    """SHA-256 of the model file, or of the weights of a model object without one."""
    if handle.source is not None:
        return file_sha256(handle.source)
    digest = hashlib.sha256()                    # a model object: its weights
    for key, value in sorted(handle.module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def screen(input_path: Union[str, Path, Sequence[Any]], model: Any, out: str | Path, do_relax: bool = True,
           fmax: float = 0.05, steps: int = 500, chunk: int = 256, properties: Optional[Sequence[str]] = None,
           progress: bool = True, optimizer: str = "fire", cell_filter: Optional[str] = None, workers: int = 1,
           **load_kwargs: Any) -> List[Dict[str, Any]]:
    """Relax (optionally) and predict every structure of ``input_path``; results go to ``out``.

    ``input_path``: a structure file (anything :func:`mftcalc.data.read_structures` reads) or a list of
    ``mftcalc.data.Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``
    (:func:`mftcalc.calculators.inputs.as_structures`; a CSV resume then checks a hash of their atoms).
    ``out`` ending in ``.csv`` gets one row per structure (columns: module docs), appended chunk by chunk in whole
    lines, so a killed run resumes with the unfinished entries (:mod:`mftcalc.workflows.results_store`: a resume
    with another model, input, option or mftcalc version is refused; a second run on the same output is refused
    while the first holds its lock). ``.extxyz``/``.xyz`` (optionally ``.gz``) and ``.db`` outputs get the (relaxed)
    structures with the model's energy, forces and stress (periodic) as ASE calculator results and the row in
    ``info``; any other suffix is refused (:func:`output_format`). Each structure is checked first (elements,
    overlapping atoms, force-field dataset); one that fails gets a row with its ``error`` and the others carry on.
    ``workers`` > 1 relaxes (or predicts) on that many CPU processes (:mod:`mftcalc.relax.pool`), started
    once for the whole file. ``load_kwargs``: as for
    :meth:`ModelHandle.load` (``dtype``, ``dataset``, ``head``, ...), when ``model`` is a path.
    """
    out = Path(out)
    kind = output_format(out)
    if isinstance(input_path, (str, os.PathLike)):
        structures = read_structures(input_path)
    else:
        structures = as_structures(input_path, "screen")
        input_path = None
    handle = model if isinstance(model, ModelHandle) else ModelHandle.load(model, **load_kwargs)
    names = list(handle.property_names if properties is None else properties)
    unknown = [p for p in names if p not in handle.property_names]
    if unknown:
        raise KeyError(f"model has no property head(s) {unknown}; it has {handle.property_names}")
    columns = result_columns(handle, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _results(out, handle, input_path, columns, structures, do_relax, fmax, steps, optimizer, cell_filter,
                  names) as store:
        done = store.done if store is not None else {}
        todo = [k for k in range(len(structures)) if k not in done]
        rows: List[Dict[str, Any]] = [dict(r) for r in done.values()]
        final_structures: Dict[int, Structure] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(structures), initial=len(done), desc="screen", unit="structure")
        pool = None
        if workers > 1 and todo:
            from mftcalc.relax.pool import ModelWorkers
            pool = ModelWorkers(handle, workers)
        try:
            for start in range(0, len(todo), chunk):
                new_rows = _screen_chunk(structures, todo[start:start + chunk], handle, pool, do_relax, fmax, steps,
                                         names, optimizer, cell_filter, final_structures, labels=kind != "csv")
                new_rows = [{c: r.get(c, "") for c in columns} for r in new_rows]     # failures: empty values
                rows.extend(new_rows)
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
            _write_structures(out, kind, rows, final_structures)
    return sorted(rows, key=lambda r: int(r["index"]))


@contextlib.contextmanager
def _results(out: Path, handle: ModelHandle, input_path: Optional[str | Path], columns: List[str],
             structures: List[Structure], do_relax: bool, fmax: float, steps: int, optimizer: str,
             cell_filter: Optional[str], names: List[str]):
    """The locked output: a :class:`ResultsCSV` for ``.csv`` (with its provenance record), else None (the lock
    only; other formats are written at the end). ``input_path`` None: the structures were passed as a list."""
    if output_format(out) != "csv":
        # not <out>.lock: ASE's database takes that name for its own lock file and would wait on ours for ever
        fd = acquire_lock(out.with_name(out.name + ".screen.lock"), out)
        try:
            yield None
        finally:
            os.close(fd)
        return
    options: Dict[str, Any] = {"relax": do_relax, "properties": names, "dtype": str(handle.dtype).replace("torch.", ""),
                               "head": getattr(handle.module, "active_ff_head", None) or None,
                               "dataset": handle.dataset_names[handle.dataset] if handle.dataset is not None else None,
                               "allow_untrained_elements": handle.allow_untrained_elements}
    if do_relax:
        options.update(fmax=fmax, steps=steps, optimizer=optimizer, cell_filter=cell_filter)
    if input_path is None:
        provenance = make_provenance(_model_sha256(handle), handle.source, f"{len(structures)} structures in memory",
                                     options, columns, input_sha256=structures_sha256(structures))
    else:
        provenance = make_provenance(_model_sha256(handle), handle.source, input_path, options, columns)
    with ResultsCSV(out, columns, provenance, _row_validator(structures, columns)) as store:
        yield store


def _row_validator(structures: List[Structure], columns: List[str]):
    """``validate(row) -> None or reason`` for rows read back on resume."""
    numbers = [ENERGY, FMAX] + columns[len(LEADING):-1]

    def validate(row: Dict[str, str]) -> Optional[str]:
        try:
            k = int(row["index"])
        except ValueError:
            return f"index {row['index']!r} is not an integer"
        if not 0 <= k < len(structures):
            return f"index {k} is outside the input's 0..{len(structures) - 1}"
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
        if row["converged"] not in ("True", "False"):
            return f"converged = {row['converged']!r} is not True or False"
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


def _screen_chunk(structures: List[Structure], idx: List[int], handle: ModelHandle, pool: Any, do_relax: bool,
                  fmax: float, steps: int, names: List[str], optimizer: str, cell_filter: Optional[str],
                  final_structures: Dict[int, Structure], labels: bool = False) -> List[Dict[str, Any]]:
    """Check, relax (or predict) one chunk of input indices ``idx``; its rows in input order. ``final_structures``
    gets each (relaxed) structure: with ``labels``, the model's energy, forces and stress (periodic) as its labels
    (no labels for a failed structure), for the extxyz/db writers."""
    rows: Dict[int, Dict[str, Any]] = {}
    datasets: Dict[int, str] = {}
    ok: List[int] = []
    for k in idx:
        try:
            index = handle.check_structure(structures[k], k)
            datasets[k] = handle.dataset_names[index] if handle.forcefield_heads else ""
            ok.append(k)
        except ValueError as exc:                # elements, overlaps, dataset: recorded, the rest carry on
            rows[k] = _row(handle, k, structures[k], "", error=str(exc))
            final_structures[k] = _unlabelled(structures[k]) if labels else structures[k]
    batch = [structures[k] for k in ok]
    if batch and do_relax:
        kwargs = dict(fmax=fmax, steps=steps, properties=names, optimizer=optimizer, cell_filter=cell_filter)
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
            rows[k] = _row(handle, k, structures[k], datasets[k], p.get("energy", float("nan")), fm, 0, False, props)
    return [rows[k] for k in idx]


def _row(handle: ModelHandle, k: int, s: Structure, dataset: str, energy: float = float("nan"),
         fmax: float = float("nan"), steps: int = 0, converged: bool = False,
         props: Optional[Dict[str, float]] = None, error: str = "") -> Dict[str, Any]:
    """One result row (columns: module docs); a failed structure has ``error`` set and no values."""
    from ase.data import chemical_symbols
    from ase.formula import Formula
    formula = str(Formula("".join(chemical_symbols[z] for z in s.numbers)).format("hill"))
    row: Dict[str, Any] = {"index": k, "name": s.info.get("name", ""), "formula": formula, "n_atoms": s.n_atoms,
                           "dataset": dataset}
    if error:
        return {**row, "error": error}
    row.update({ENERGY: energy, FMAX: fmax, "steps": steps, "converged": converged})
    row.update({property_column(handle, n): v for n, v in (props or {}).items()})
    row["error"] = ""
    return row


def summary(rows: Sequence[Dict[str, Any]], relaxed: bool) -> str:
    """End-of-run summary: how many converged, did not converge, failed (with the first reasons)."""
    failed = [r for r in rows if r.get("error")]
    if relaxed:
        converged = sum(str(r.get("converged")) == "True" for r in rows if not r.get("error"))
        text = (f"{len(rows)} structures: {converged} converged, {len(rows) - len(failed) - converged} not converged "
                f"(out of steps), {len(failed)} failed")
    else:
        text = f"{len(rows)} structures: {len(rows) - len(failed)} predicted, {len(failed)} failed"
    if failed:
        text += "\n" + "\n".join(f"  failed: {r['error']}" for r in failed[:5])
        if len(failed) > 5:
            text += f"\n  ... and {len(failed) - 5} more (the error column)"
    return text


def _unlabelled(s: Structure) -> Structure:
    """``s`` without energy, forces and stress (a failed structure's output carries no results, not its input's)."""
    return s.with_labels(energy=None, forces=None, stress=None)


def _write_structures(out: Path, kind: str, rows: List[Dict[str, Any]], final_structures: Dict[int, Structure]
                      ) -> None:
    """extxyz / ASE-db output (``kind``): the (relaxed) structures in input order, their labels (the model's
    energy, forces, stress) as ASE calculator results and their row in ``info``."""
    by_index = {int(r["index"]): r for r in rows}
    ordered = [final_structures[k].with_labels(info={**final_structures[k].info, **_info(by_index[k])})
               for k in sorted(final_structures)]
    if kind == "db":
        from ase.db import connect
        with connect(out) as db:
            for s in ordered:
                db.write(s.to_ase(), key_value_pairs={k: v for k, v in s.info.items()
                                                      if isinstance(v, (int, float, str, bool))})
    else:
        write_extxyz(ordered, out)


def _info(row: Dict[str, Any]) -> Dict[str, Any]:
    """A row as ``info`` entries: no reserved ASE-db keys (formula, ...), no empty ``error``."""
    return {k: v for k, v in row.items() if k not in ("index", "name", "formula", "n_atoms") and v != ""}
