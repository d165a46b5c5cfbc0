"""Force-field datasets for training: reading (a file or a glob), one dataset's structures of a mixed file, the
filters (BOOM test molecules, large forces, a seeded subsample), the seeded train/validation split, the replay
files beside a pretrained checkpoint, and :class:`ForceFieldData`, the spec of fine-tuning's auxiliary data.

Pretraining (:mod:`mftcalc.training.pretrain`) and MFT's auxiliary task read their data through the same
:func:`select_structures`, so a dataset filtered the same way holds the same structures in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mftcalc.data.io import read_structures
from mftcalc.data.structure import Structure
from mftcalc.geometry.isolation import isolated_in_box
from mftcalc.schema import from_mapping, option


@dataclass
class Holdout:
    """Pretraining's validation split of a dataset, dropped from fine-tuning's auxiliary data so that the
    retention numbers stay held out (give the pretraining config's values)."""

    seed: int = option(help="the split's seed: pretraining's seed + 100 + the dataset's position in its datasets")
    val_fraction: float = option(0.05, "pretraining's val_fraction of the dataset")
    max_val: int = option(200, "pretraining's max_val of the dataset")


@dataclass
class ForceFieldData:
    """Force-field structures of one dataset for fine-tuning (MFT's auxiliary task; also written as a bare path).
    Structures carrying ``info["dataset"]`` are kept only when it names this dataset."""

    path: str = option(help="a file any reader understands, or a glob pattern of such files (read in sorted order)")
    exclude_splits: Optional[str] = option(None, "BOOM split file: drop molecules (info['qm9_index']) in its "
                                                 "ID/OOD test sets")
    exclude_properties: Optional[List[str]] = option(None, "with exclude_splits: only these properties' test sets "
                                                           "(default: every split in the file)")
    max_force: Optional[float] = option(None, "drop structures with an atomic force above this (eV/Å)")
    max_structures: Optional[int] = option(None, "keep a seeded subsample of this many (before the holdout, as "
                                                 "pretraining does)")
    subsample_seed: int = option(0, "seed of the max_structures subsample (pretraining's: its seed + the "
                                    "dataset's position)")
    holdout: Optional[Holdout] = option(None, "drop pretraining's validation structures of this dataset")


def task_domain(structures: Sequence[Structure], cutoff: Optional[float] = None) -> str:
    """``materials`` when any structure is periodic, else ``molecules``: which replay set matches a task.
    ``cutoff`` (Å, the model's): a molecule in a periodic box with vacuum at least that wide counts as a molecule
    (the model sees no periodic image; :mod:`mftcalc.geometry.isolation`)."""
    def periodic(s: Structure) -> bool:
        if not np.any(s.pbc):
            return False
        return cutoff is None or not isolated_in_box(s.positions, s.cell, s.pbc, cutoff)
    return "materials" if any(periodic(s) for s in structures) else "molecules"


def replay_path(model_path: str | Path, domain: str) -> Path:
    """``<checkpoint stem>_replay_<domain>.extxyz.gz`` beside a pretrained checkpoint (``domain``: molecules or
    materials), where pretraining writes its replay subsets and MFT looks for its default auxiliary data."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}_replay_{domain}.extxyz.gz")


def replay_structures(pretrained_path: Optional[str | Path], domain: str = "molecules"
                      ) -> Dict[str, List[Structure]]:
    """The domain-matched replay set shipped beside a pretrained checkpoint (``molecules``: the GFN2-xTB
    conformers; ``materials``: the periodic DFT sets), grouped by ``info["dataset"]``."""
    if pretrained_path is None:
        raise ValueError("mft needs a pretrained checkpoint (its replay set is the default force-field data)")
    path = Path(pretrained_path)
    replay = replay_path(path, domain)
    if not replay.exists():
        raise FileNotFoundError(f"no {domain} replay set {replay} beside {path}; pass force-field data "
                                "explicitly (ff_data in the config)")
    groups: Dict[str, List[Structure]] = {}
    for s in read_structures(replay):
        groups.setdefault(str(s.info.get("dataset", "default")), []).append(s)
    return groups


def read_dataset(path: str) -> List[Structure]:
    """Structures of one file, or of every file matching a glob pattern (sorted); errors name the pattern."""
    if any(ch in path for ch in "*?["):
        import glob
        files = sorted(glob.glob(path))
        if not files:
            raise FileNotFoundError(f"no files match {path!r}")
        return [s for f in files for s in read_structures(f)]
    return read_structures(path)


def select_structures(structures: List[Structure], name: str, path: str, exclude_splits: Optional[str] = None,
                      exclude_properties: Optional[List[str]] = None, max_force: Optional[float] = None,
                      max_structures: Optional[int] = None, subsample_seed: int = 0) -> List[Structure]:
    """The structures of dataset ``name`` read from ``path``, filtered in this order: those of another dataset
    (``info["dataset"]``) out; molecules of BOOM test sets out (:func:`drop_test_molecules`); structures with a
    force above ``max_force`` (eV/Å) out; a seeded subsample of ``max_structures``."""
    tagged = [s for s in structures if "dataset" in s.info]
    if tagged:                        # a mixed file (e.g. a replay set): only this dataset's structures
        structures = [s for s in structures if s.info.get("dataset", name) == name]
        if not structures:
            raise ValueError(f"{path} holds no structures of dataset {name!r} (its info['dataset'] values: "
                             f"{sorted({str(s.info['dataset']) for s in tagged})})")
    if exclude_splits:
        structures = drop_test_molecules(structures, exclude_splits, exclude_properties, name)
    if max_force is not None:
        structures = [s for s in structures
                      if s.forces is None or np.sqrt((s.forces ** 2).sum(1)).max() <= max_force]
    if max_structures is not None and len(structures) > max_structures:
        keep = np.sort(np.random.default_rng(subsample_seed).permutation(len(structures))[:max_structures])
        structures = [structures[i] for i in keep]
    return structures


def load_forcefield_set(name: str, spec: str | Path | Mapping[str, Any] | ForceFieldData) -> List[Structure]:
    """Force-field structures of dataset ``name`` for fine-tuning (MFT's auxiliary task): ``spec`` is a path, a
    :class:`ForceFieldData` or its mapping (checked by the config loader). None left after the filters is an
    error."""
    if isinstance(spec, (str, Path)):
        spec = ForceFieldData(path=str(spec))
    elif not isinstance(spec, ForceFieldData):
        spec = from_mapping(ForceFieldData, spec, f"force-field data {name!r}")
    structures = select_structures(read_dataset(spec.path), name, spec.path, spec.exclude_splits,
                                   spec.exclude_properties, spec.max_force, spec.max_structures, spec.subsample_seed)
    if spec.holdout is not None:
        h = spec.holdout
        structures, _ = split_train_val(structures, h.val_fraction, h.max_val, h.seed)
    if not structures:
        raise ValueError(f"force-field data {name!r}: no structures left after the filters of {spec}")
    return structures


def split_train_val(structures: List[Structure], val_fraction: float, max_val: int, seed: int
                    ) -> Tuple[List[Structure], List[Structure]]:
    """Seeded split into training and validation structures, stable when a dataset grows.

    Structures are grouped by ``info["qm9_index"]`` when present (all conformers of a molecule fall on the same
    side, so validation molecules are unseen in training), else by position in the file; a group is validation
    when a seeded integer hash of its key falls below ``val_fraction``. At most ``max_val`` validation
    structures are kept (the first ones); the rest of the validation groups are not used for training either.
    """
    val: List[Structure] = []
    train: List[Structure] = []
    for k, s in enumerate(structures):
        key = int(s.info.get("qm9_index", k))
        h = ((key * 2654435761 + seed * 40503 + 12345) % 4294967296) / 4294967296.0
        if h < val_fraction:
            if len(val) < max_val:
                val.append(s)
        else:
            train.append(s)
    if not train:
        raise ValueError("validation split left no training structures; lower val_fraction")
    return train, val


def drop_test_molecules(structures: List[Structure], splits_path: str, properties: Optional[List[str]],
                        name: str = "") -> List[Structure]:
    """Structures whose ``info["qm9_index"]`` is in no ID/OOD test set of ``properties`` in a BOOM split file.

    Raises when a structure has no ``qm9_index`` (it could not be checked) or a property has no split."""
    from mftcalc.data.boom import load_splits, test_union

    splits = load_splits(splits_path)
    names = list(splits) if properties is None else list(properties)
    unknown = [p for p in names if p not in splits]
    if unknown:
        raise ValueError(f"dataset {name!r}: exclude_properties {unknown} have no split in {splits_path} "
                         f"(it has {sorted(splits)})")
    excluded = set(test_union({p: splits[p] for p in names}).tolist())
    unkeyed = sum("qm9_index" not in s.info for s in structures)
    if unkeyed:
        raise ValueError(f"dataset {name!r}: {unkeyed} structures have no info['qm9_index'], so exclude_splits "
                         "cannot check them; drop exclude_splits for this dataset or label it with mftcalc label")
    return [s for s in structures if int(s.info["qm9_index"]) not in excluded]
