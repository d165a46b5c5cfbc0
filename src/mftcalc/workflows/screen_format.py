"""What a screen writes: output formats by suffix, result columns with their units, structure outputs, summary.

Output columns (CSV header, extxyz ``info`` keys, ASE-db key-value pairs) carry their unit in their name,
``<quantity>_<unit>``, the unit spelled in ASCII letters and digits (:func:`unit_tag`: ``Å`` -> ``A``, ``/`` ->
``_per_``, powers as plain digits, ``unitless`` for dimensionless heads): ``energy_eV``, ``fmax_eV_per_A``,
``gap_Hartree``, ``mu_Debye``, ``r2_bohr2``. Counts and labels have none: ``index``, ``name``, ``formula``,
``n_atoms``, ``dataset`` (the force-field dataset used), ``steps``, ``converged`` (True or False after a
relaxation, empty for a prediction), the frame parameters a model reads (``temperature_K``: the input's value,
:mod:`mftcalc.data.frame_params`), ``error`` (empty, or why the
structure has no results: it failed the structure check, or its relaxation ended with overlapping atoms).
In extxyz and ASE-db outputs each structure also carries the model's energy (eV), forces (eV/Å) and, when it has one
(periodic in a direction, a cell with a volume), stress (eV/Å³) as ASE calculator results, so ``ase.io.read(out, ":")[i]
.get_potential_energy()`` works.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Sequence

from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure

ENERGY, FMAX = "energy_eV", "fmax_eV_per_A"
LEADING = ["index", "name", "formula", "n_atoms", "dataset", ENERGY, FMAX, "steps", "converged"]
#: what a screen writes, by the output's suffix: the resumable CSV table, or the structures with their results
OUTPUT_FORMATS = {".csv": "csv", ".extxyz": "extxyz", ".xyz": "extxyz", ".extxyz.gz": "extxyz",
                  ".xyz.gz": "extxyz", ".db": "db"}
OUTPUT_HELP = ("results: .csv (resumable table), .extxyz or .xyz (structures with energy/forces/stress as ASE "
               "calculator results and the columns in info; .extxyz.gz/.xyz.gz compressed) or .db (ASE database); "
               "column names carry their unit (energy_eV, fmax_eV_per_A, gap_Hartree, ...)")


def output_suffix(out: str | Path) -> str:
    """The suffix that names an output's format: ``.csv``, ``.extxyz.gz``, ... (two parts for ``.gz``)."""
    path = Path(out)
    return "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix


def output_format(out: str | Path) -> str:
    """``"csv"``, ``"extxyz"`` or ``"db"`` for an output path by its suffix (:data:`OUTPUT_FORMATS`); any other
    suffix raises ``ValueError`` listing the supported ones."""
    suffix = output_suffix(out)
    if suffix not in OUTPUT_FORMATS:
        what = f"suffix {suffix!r}" if suffix else "no suffix"
        raise ValueError(f"output {str(out)!r} has {what}, which mftcalc does not write; use .csv (resumable "
                         "table), .extxyz or .xyz (structures with their results; .extxyz.gz or .xyz.gz compressed) "
                         "or .db (ASE database)")
    return OUTPUT_FORMATS[suffix]


def provenance_path(out: str | Path) -> Path:
    """The provenance record beside an output: ``<out>.provenance.json``."""
    out = Path(out)
    return out.with_name(out.name + ".provenance.json")


def results_files(out: str | Path) -> List[Path]:
    """A CSV output and its provenance record (what to delete to start a screen over)."""
    return [Path(out), provenance_path(out)]


def unit_tag(unit: str) -> str:
    """A unit as the suffix of a column name: ``eV/Å`` -> ``eV_per_A``, ``bohr^2`` -> ``bohr2``, ``""`` ->
    ``unitless``."""
    if not unit or unit.lower() in ("unitless", "dimensionless", "1"):
        return "unitless"
    tag = unit.replace("Å", "A").replace("/", "_per_").replace("^", "")
    return re.sub(r"[^0-9A-Za-z_]+", "_", tag).strip("_")


def property_column(handle: Any, name: str) -> str:
    """Column of property head ``name`` of a :class:`~mftcalc.calculators.model_handle.ModelHandle`:
    ``<name>_<unit>`` (e.g. ``gap_Hartree``)."""
    return f"{name}_{unit_tag(handle.unit(name))}"


def frame_param_column(handle: Any, name: str) -> str:
    """Column of frame parameter ``name`` (an input the model's property heads read, :mod:`mftcalc.data.
    frame_params`): ``<name>_<unit>`` (e.g. ``temperature_K``), the value the structure came with."""
    return f"{name}_{unit_tag(handle.frame_param_units.get(name, ''))}"


def result_columns(handle: Any, properties: Sequence[str]) -> List[str]:
    """The header of a screen's results: see the module docs."""
    return (LEADING + [frame_param_column(handle, n) for n in handle.frame_params]
            + [property_column(handle, p) for p in properties] + ["error"])


def write_structures(out: Path, kind: str, rows: List[Dict[str, Any]], final_structures: Dict[int, Structure]
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
