"""Property tasks for fine-tuning: train/val/test structures from QM9 BOOM splits or MatBench folds.

A :class:`PropertyTask` carries the structures of each part and how the property is learned (head kind,
extensive or intensive, element bias, loss). ``test_parts`` maps a name (``id_test``/``ood_test`` for QM9,
``test`` for MatBench) to structures.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mftcalc.data.frame_params import frame_param_matrix
from mftcalc.data.structure import Structure

# How each property is learned (paper defaults): head kind, extensive, element bias, loss.
PROPERTY_RECIPES: Dict[str, Dict] = {
    "homo": dict(kind="scalar", extensive=False, element_bias=True, loss="mse"),
    "lumo": dict(kind="scalar", extensive=False, element_bias=True, loss="mse"),
    "gap": dict(kind="scalar", extensive=False, element_bias=True, loss="mse"),
    "zpve": dict(kind="scalar", extensive=True, element_bias=True, loss="mse"),
    "alpha": dict(kind="scalar", extensive=True, element_bias=True, loss="mse"),
    "cv": dict(kind="scalar", extensive=True, element_bias=True, loss="mse"),
    "mu": dict(kind="dipole", extensive=False, element_bias=False, loss="mse"),
    "r2": dict(kind="r2", extensive=True, element_bias=False, loss="mse"),
    "refractive_index": dict(kind="scalar", extensive=False, element_bias=False, loss="smooth_l1"),
    "log10_gvrh": dict(kind="scalar", extensive=False, element_bias=True, loss="smooth_l1"),
    "formation_energy": dict(kind="scalar", extensive=False, element_bias=True, loss="smooth_l1"),
}


@dataclass
class PropertyTask:
    """Structures of one property task and how the property is learned."""

    name: str
    property: str
    unit: str
    train: List[Structure]
    val: List[Structure]
    test_parts: Dict[str, List[Structure]]
    recipe: Dict = field(default_factory=dict)
    description: str = ""
    frame_params: Dict[str, str] = field(default_factory=dict)     # {info key: unit} the property head reads
    group_key: str = ""                # file tasks of groups: the info key naming each frame's group (assembly)
    weight_key: str = ""               # ... and the info key of each component's weight


def _subsample(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return indices
    n = max(1, int(round(fraction * len(indices))))
    return np.sort(np.random.default_rng(seed).choice(indices, n, replace=False))


def qm9_task(dataset, splits: Dict, prop: str, train_fraction: float = 1.0, seed: int = 0,
             max_eval: Optional[int] = None) -> PropertyTask:
    """QM9 property ``prop`` on its BOOM split (``splits[prop]``), training on ``train_fraction`` of train.

    ``max_eval`` caps val/ID/OOD sizes (seeded subsample) for quick runs; ``None`` keeps the full sets.
    """
    from mftcalc.data.qm9 import QM9_PROPERTIES
    split = splits[prop]
    train_idx = _subsample(split.train, train_fraction, seed)

    def part(indices: np.ndarray, k: int) -> List[Structure]:
        if max_eval is not None and len(indices) > max_eval:
            indices = np.sort(np.random.default_rng(seed + k).choice(indices, max_eval, replace=False))
        return dataset.structures(dataset.rows(indices), properties=[prop])

    return PropertyTask(name=f"qm9-{prop}", property=prop, unit=QM9_PROPERTIES[prop],
                        train=dataset.structures(dataset.rows(train_idx), properties=[prop]),
                        val=part(split.val, 1), test_parts={"id_test": part(split.id_test, 2),
                                                            "ood_test": part(split.ood_test, 3)},
                        recipe=dict(PROPERTY_RECIPES[prop]),
                        description=f"QM9 {prop}, BOOM split, train fraction {train_fraction}")


def matbench_task(structures: List[Structure], dataset: str, fold, train_fraction: float = 1.0,
                  seed: int = 0, val_fraction: float = 0.1) -> PropertyTask:
    """MatBench ``dataset`` on one fold (``mftcalc.data.matbench.Fold``); folds without a validation part
    (the random folds) get a seeded ``val_fraction`` of train as validation."""
    from mftcalc.data.matbench import MATBENCH_DATASETS
    meta = MATBENCH_DATASETS[dataset]
    train_rows, val_rows = np.asarray(fold.train), np.asarray(fold.val)
    if val_rows.size == 0:
        perm = np.random.default_rng(seed + 17).permutation(train_rows)
        n_val = max(1, int(round(val_fraction * len(perm))))
        val_rows, train_rows = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    train_rows = _subsample(train_rows, train_fraction, seed)
    return PropertyTask(name=f"matbench-{dataset}-{fold.kind}-{fold.index}", property=meta.property,
                        unit=meta.unit, train=[structures[i] for i in train_rows],
                        val=[structures[i] for i in val_rows],
                        test_parts={"test": [structures[i] for i in fold.test]},
                        recipe=dict(PROPERTY_RECIPES[meta.property]),
                        description=f"MatBench {dataset}, {fold.kind} fold {fold.index}")


def file_task(path: str, prop: str, unit: str = "", intensive: bool = True, val_path: Optional[str] = None,
              val_fraction: float = 0.1, test_path: Optional[str] = None, seed: int = 0,
              element_bias: bool = True, loss: str = "mse", train_fraction: float = 1.0,
              model_path: Optional[str] = None, smiles_dataset: str = "xtb_qm9",
              frame_params: Optional[Dict[str, str]] = None, group_key: Optional[str] = None,
              weight_key: str = "weight") -> PropertyTask:
    """A property task from the user's own labelled structures (any format ``read_structures`` reads).

    The property is a per-structure scalar in each frame's ``info`` (extxyz comment line, ASE database key-value
    pairs); ``unit`` is declared by the user (stored in the model metadata and every output column). The
    validation set is ``val_path`` or a seeded ``val_fraction`` of the data; ``test_path`` adds a ``test`` part.
    ``intensive``: the head averages per-atom terms (a gap, a refractive index); else it sums them (an energy,
    a polarisability). Raises, naming the file and the fix, when the property is missing from a frame, is not
    finite, or the data mixes periodic and non-periodic structures (one task has one force-field domain).

    A ``.csv`` file is a table of SMILES (column ``smiles``) and the property: its molecules are embedded with
    RDKit and relaxed with ``model_path``'s force field under dataset ``smiles_dataset``
    (:mod:`mftcalc.data.smiles`); the relaxed geometries go to ``<csv>_relaxed.extxyz`` and are reused.

    ``frame_params`` (``{info key: unit}``): per-structure conditions the property depends on, read from every
    frame (:mod:`mftcalc.data.frame_params`; a SMILES CSV's columns of those names); a frame without one, or with a
    value that is not one finite number, raises naming the file and frame.

    ``group_key``: the label belongs to a group of frames (an assembly, :mod:`mftcalc.data.assembly`): frames
    with the same ``info[group_key]`` are one training item, weighted by ``info[weight_key]`` (default 1), and the
    task's head is a group head (``intensive``: the weighted mean of the components' pooled features, else
    their weighted sum). The validation share is drawn over groups.
    """
    frame_params = dict(frame_params or {})
    if group_key and str(path).lower().endswith(".csv"):
        raise ValueError(f"{path}: a SMILES CSV has one molecule per row and no group key; write the components as "
                         f"frames with info[{group_key!r}] (extxyz) to fine-tune on groups")

    def read(part_path: str, what: str) -> List[Structure]:
        nonlocal unit
        structures = read_property_file(part_path, prop, unit, what, model_path, smiles_dataset, list(frame_params))
        if structures and not unit:                      # the unit the file declared, for the later files too
            unit = structures[0].property_units.get(prop, "")
        try:
            frame_param_matrix(structures, list(frame_params), frame_params)
        except ValueError as exc:
            raise ValueError(f"{part_path} ({what}): {str(exc).replace('structure ', 'frame ', 1)}") from None
        masked = next((k for k, s in enumerate(structures) if s.pool_mask is not None), None)
        if masked is not None and not group_key:
            raise ValueError(f"{part_path} ({what}): frame {masked} has a pool_mask, which only a group head reads "
                             "(--group-key); a per-structure property head pools every atom: drop the mask, or "
                             "give the frames a group key")
        if group_key:
            from mftcalc.data.assembly import group_structures
            return group_structures(structures, group_key, weight_key, list(frame_params), f"{part_path} ({what})")
        return structures

    data = read(path, "training data")
    periodic = {bool(np.any(s.pbc)) for s in data}        # an assembly is periodic when any component is
    if len(periodic) > 1:
        n_pbc = sum(bool(np.any(s.pbc)) for s in data)
        raise ValueError(f"{path}: {n_pbc} periodic and {len(data) - n_pbc} non-periodic structures in one task; "
                         "fine-tune molecules and crystals as separate tasks (each gets the force-field dataset "
                         "and replay set of its own domain). Molecules in periodic boxes among bare ones: give them "
                         "pbc=False (a file of boxed molecules alone is taken as molecules when its vacuum is wider "
                         "than the model's cutoff)")
    if val_path:
        train, val = data, read(val_path, "validation data")
    else:
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        perm = np.random.default_rng(seed + 17).permutation(len(data))
        n_val = max(1, int(round(val_fraction * len(data))))
        if n_val >= len(data):
            items = "groups" if group_key else "structures"
            raise ValueError(f"{path}: {len(data)} {items} are too few to split off validation; give --val FILE")
        val = [data[i] for i in np.sort(perm[:n_val])]
        train = [data[i] for i in np.sort(perm[n_val:])]
    train = [train[i] for i in _subsample(np.arange(len(train)), train_fraction, seed)]
    test_parts = {"test": read(test_path, "test data")} if test_path else {}
    recipe = dict(kind="scalar", extensive=not intensive, element_bias=element_bias, loss=loss)
    if group_key:
        recipe.update(kind="group", extensive=False, element_bias=False,
                      group_reduce="mean" if intensive else "sum")
    conditions = f" at {', '.join(frame_params)}" if frame_params else ""
    if group_key:
        conditions += f", one value per group of frames ({group_key})"
    return PropertyTask(name=f"file-{prop}", property=prop, unit=unit, train=train, val=val, test_parts=test_parts,
                        recipe=recipe, description=f"{prop} ({unit or 'no unit'}){conditions} from {path}",
                        frame_params=frame_params, group_key=group_key or "",
                        weight_key=weight_key if group_key else "")


def read_property_file(path: str, prop: str, unit: str = "", what: str = "data", model_path: Optional[str] = None,
                       smiles_dataset: str = "xtb_qm9", columns: Sequence[str] = ()) -> List[Structure]:
    """Labelled structures of ``path`` with property ``prop`` (any ``read_structures`` format, or a SMILES CSV
    relaxed with ``model_path``, see :func:`file_task`); every value must be present and finite. ``columns``: a
    SMILES CSV's further columns copied into each molecule's ``info`` (frame parameters).

    ``unit``: the user's; where the file declares the property's unit (``property_units``, as
    :func:`mftcalc.data.io.write_extxyz` writes it), an empty ``unit`` takes the file's and a different one is
    refused by the reader (the labels are in the file's unit; nothing converts them)."""
    from mftcalc.data.io import read_structures

    if str(path).lower().endswith(".csv"):
        from mftcalc.data.smiles import smiles_structures
        if model_path is None:
            raise ValueError(f"{path}: a SMILES CSV needs a pretrained model to relax its molecules")
        out = str(path)[:-4] + "_relaxed.extxyz"
        structures, report = smiles_structures(path, prop, unit, model_path, smiles_dataset, out, columns=columns)
        print(f"{path} ({what}): {report.summary()}; geometries in {out}")
    else:
        structures = read_structures(path, properties={prop: unit})   # raises naming a frame without it
        unit = _declared_unit(structures, prop, unit, f"{path} ({what})")
    values = np.array([s.properties[prop] for s in structures], dtype=float)
    if not np.all(np.isfinite(values)):
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"{path} ({what}): frame {bad} has a non-finite {prop!r} ({values[bad]}); "
                         "drop or fix that frame")
    return [s.with_labels(property_units={**s.property_units, prop: unit}) for s in structures]


def _declared_unit(structures: Sequence[Structure], prop: str, unit: str, where: str) -> str:
    """The unit of ``prop`` in ``structures``: ``unit`` (the user's), or the file's declared one where ``unit`` is
    empty; ``ValueError`` when the frames declare several (a unit the user gave that differs from a frame's
    declared one is refused by the reader)."""
    declared = sorted({s.property_units[prop] for s in structures if s.property_units.get(prop)})
    if len(declared) > 1:
        raise ValueError(f"{where}: the frames declare {prop!r} in several units ({', '.join(declared)}); convert "
                         "them to one unit first")
    return unit or (declared[0] if declared else "")


def load_task(spec: Any, fraction: float, fold: Optional[int], seed: int, cache: Dict[str, Any],
              qm9_splits: Optional[str] = None, qm9_max_eval: Optional[int] = None,
              matbench_path: Optional[str] = None, model_path: Optional[str] = None) -> PropertyTask:
    """The :class:`PropertyTask` of a task spec (:class:`mftcalc.experiments.config.TaskSpec`) at training
    ``fraction``, MatBench ``fold`` and ``seed``. QM9, its splits (``qm9_splits`` or BOOM's, computed) and MatBench
    datasets and folds (under ``matbench_path``) are read once per ``cache``; a SMILES CSV file task is relaxed
    with ``model_path``."""
    if spec.kind == "qm9":
        if "qm9" not in cache:
            from mftcalc.data.boom import boom_splits, load_splits
            from mftcalc.data.qm9 import load_qm9
            ds = load_qm9()
            cache["qm9"] = ds
            cache["splits"] = load_splits(qm9_splits) if qm9_splits else boom_splits(ds)
        return qm9_task(cache["qm9"], cache["splits"], spec.property, fraction, seed, qm9_max_eval)
    if spec.kind == "file":
        return file_task(spec.path, spec.property, spec.unit, spec.intensive, spec.val_path, spec.val_fraction,
                         spec.test_path, seed, train_fraction=fraction, model_path=model_path,
                         frame_params=spec.frame_params, group_key=spec.group_key, weight_key=spec.weight_key)
    if spec.kind == "matbench":
        from mftcalc.data.matbench import load_folds, load_matbench
        if matbench_path is None:
            raise ValueError("matbench tasks need matbench_path in the config")
        key = f"mb:{spec.dataset}"
        if key not in cache:
            cache[key] = load_matbench(spec.dataset, matbench_path)
        fkey = f"folds:{spec.dataset}:{spec.folds}"
        if fkey not in cache:
            cache[fkey] = load_folds(spec.dataset, spec.folds, matbench_path)
        return matbench_task(cache[key], spec.dataset, cache[fkey][fold], fraction, seed)
    raise ValueError(f"unknown task kind {spec.kind!r}; use qm9, matbench or file")
