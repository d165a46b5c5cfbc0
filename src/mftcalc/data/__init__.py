"""Data layer: the structure record, collation into batches, readers/writers, QM9 with BOOM splits, MatBench."""
from mftcalc.data.batch import Batch, batch_to, collate
from mftcalc.data.boom import BoomSplit, boom_split, boom_splits, kde_density, load_splits, save_splits, test_union
from mftcalc.data.io import from_pymatgen, read_deepmd, read_structures, to_pymatgen, write_deepmd, write_extxyz
from mftcalc.data.matbench import MATBENCH_DATASETS, Fold, load_folds, load_matbench
from mftcalc.data.qm9 import QM9_PROPERTIES, QM9Dataset, load_qm9
from mftcalc.data.structure import Structure, StructureError

__all__ = [
    "Batch", "Structure", "StructureError", "batch_to", "collate",
    "read_structures", "write_extxyz", "read_deepmd", "write_deepmd", "from_pymatgen", "to_pymatgen",
    "QM9_PROPERTIES", "QM9Dataset", "load_qm9",
    "BoomSplit", "boom_split", "boom_splits", "kde_density", "load_splits", "save_splits", "test_union",
    "MATBENCH_DATASETS", "Fold", "load_folds", "load_matbench",
]
