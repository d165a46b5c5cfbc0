"""MatBench datasets (dielectric, elasticity, perovskites) and their folds: 5 random folds and 50-fold OOD splits.

Structures come from ``<dataset>.extxyz.gz`` (target in ``info["target"]``, one frame per row) or from the standard
matminer/MatBench JSON (``{"index": [...], "columns": [...], "data": [[pymatgen structure dict, target], ...]}``,
optionally gzipped). Each structure carries its target as a named property (see :data:`MATBENCH_DATASETS`) and
``info["row"]`` (0-based row). Folds are lists of row numbers: ``random_folds.json.gz``
(``{dataset: {"0".."4": {"train", "test"}}}``) and ``ood_folds_<dataset>.json.gz``
(``{kind: {"0".."49": {"train", "val", "test"}}}``).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from mftcalc.data.io import from_pymatgen, read_structures
from mftcalc.data.structure import Structure, StructureError

PathLike = Union[str, Path]


@dataclass(frozen=True)
class MatbenchDataset:
    """Name of the target property, its unit, the MatBench task name and the number of rows (MatBench v0.1),
    which bounds the row numbers in the folds."""

    property: str
    unit: str
    task: str
    n_rows: int


MATBENCH_DATASETS: Dict[str, MatbenchDataset] = {
    "dielectric": MatbenchDataset("refractive_index", "unitless", "matbench_dielectric", 4764),
    "elasticity": MatbenchDataset("log10_gvrh", "log10(GPa)", "matbench_log_gvrh", 10987),
    "perovskites": MatbenchDataset("formation_energy", "eV/cell", "matbench_perovskites", 18928),
}
OOD_FOLD_KINDS = ("LOCO", "SparseXcluster", "SparseXsingle", "SparseYcluster", "SparseYsingle")
FOLD_KINDS = ("random",) + OOD_FOLD_KINDS


@dataclass(frozen=True)
class Fold:
    """One fold: int64 arrays of row numbers (``val`` is empty for the random folds)."""

    kind: str
    index: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def load_matbench(dataset: str, path: PathLike) -> List[Structure]:
    """Structures of a MatBench dataset, in row order, with the target as property ``MATBENCH_DATASETS[dataset]``.

    Args:
        dataset: ``"dielectric"``, ``"elasticity"`` or ``"perovskites"``.
        path: an ``.extxyz[.gz]`` or matbench ``.json[.gz]`` file, or a directory holding ``<dataset>.extxyz.gz``
            (or ``.extxyz``) or ``<task>.json.gz`` (or ``.json``), e.g. ``matbench_log_gvrh.json.gz``.
    """
    meta = _meta(dataset)
    path = _find(Path(path), [f"{dataset}.extxyz.gz", f"{dataset}.extxyz", f"{meta.task}.json.gz", f"{meta.task}.json"])
    if path.name.endswith((".json", ".json.gz")):
        structures = _read_matbench_json(path, meta)
    else:
        structures = []
        for row, s in enumerate(read_structures(path, properties={"target": meta.unit})):
            if s.info.get("row", row) != row:
                raise StructureError(f"{path}: frame {row} has info row={s.info['row']}; frames must be in row order")
            info = dict(s.info, row=row)
            structures.append(s.with_labels(properties={meta.property: s.properties["target"]},
                                            property_units={meta.property: meta.unit}, info=info))
    return structures


def load_folds(dataset: str, kind: str, path: PathLike) -> List[Fold]:
    """Folds of ``dataset``: ``kind="random"`` gives the 5 MatBench folds (from ``random_folds.json.gz``), an OOD
    kind (:data:`OOD_FOLD_KINDS`) the 50 folds from ``ood_folds_<dataset>.json.gz``. ``path`` is that file or
    its directory. Rows are checked to lie in 0..n_rows-1 with train, val and test disjoint."""
    meta = _meta(dataset)
    if kind not in FOLD_KINDS:
        raise ValueError(f"unknown fold kind {kind!r}; choose one of {list(FOLD_KINDS)}")
    filename = "random_folds.json.gz" if kind == "random" else f"ood_folds_{dataset}.json.gz"
    path = _find(Path(path), [filename])
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        payload = json.load(fh)
    key = dataset if kind == "random" else kind
    if key not in payload:
        raise ValueError(f"{path}: no entry {key!r} (has {sorted(payload)}); is this the right fold file?")
    folds = []
    for name, parts in sorted(payload[key].items(), key=lambda item: int(item[0])):
        arrays = {p: np.asarray(parts.get(p, []), dtype=np.int64) for p in ("train", "val", "test")}
        rows = np.concatenate(list(arrays.values()))
        if rows.size and (rows.min() < 0 or rows.max() >= meta.n_rows):
            raise ValueError(f"{path}: {kind} fold {name} has rows outside 0..{meta.n_rows - 1}")
        if np.unique(rows).size != rows.size:
            raise ValueError(f"{path}: {kind} fold {name} has overlapping or repeated rows in train/val/test")
        folds.append(Fold(kind=kind, index=int(name), **arrays))
    return folds


def targets(structures: List[Structure], dataset: str) -> np.ndarray:
    """[n] float64 target values (unit ``MATBENCH_DATASETS[dataset].unit``) of structures from :func:`load_matbench`."""
    name = _meta(dataset).property
    return np.array([s.properties[name] for s in structures], dtype=np.float64)


def _meta(dataset: str) -> MatbenchDataset:
    if dataset not in MATBENCH_DATASETS:
        raise ValueError(f"unknown MatBench dataset {dataset!r}; choose one of {list(MATBENCH_DATASETS)}")
    return MATBENCH_DATASETS[dataset]


def _find(path: Path, names: List[str]) -> Path:
    """``path`` itself if it is a file, else the first of ``names`` inside the directory ``path``."""
    if path.is_file():
        return path
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: none of {names} found in this directory")
    raise FileNotFoundError(f"{path}: no such file or directory")


def _read_matbench_json(path: Path, meta: MatbenchDataset) -> List[Structure]:
    from pymatgen.core import Structure as PmgStructure

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        payload = json.load(fh)
    try:
        columns, data, ids = payload["columns"], payload["data"], payload["index"]
        s_col = columns.index("structure")
        if len(columns) != 2:
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{path}: not a MatBench JSON (needs 'index', 'data' and two 'columns', "
                         "'structure' and the target)") from None
    t_col = 1 - s_col
    structures = []
    for row, (mbid, record) in enumerate(zip(ids, data)):
        try:
            s = from_pymatgen(PmgStructure.from_dict(record[s_col]))
            structures.append(s.with_labels(properties={meta.property: record[t_col]},
                                            property_units={meta.property: meta.unit},
                                            info={"row": row, "mbid": mbid}))
        except (StructureError, TypeError, ValueError) as exc:
            raise StructureError(f"{path}: row {row} ({mbid}): {exc}") from None
    return structures
