"""Data layer: the structure record, collation into batches, readers/writers, QM9 with BOOM splits, MatBench."""
from mftcalc.data.batch import Batch, batch_to, collate
from mftcalc.data.structure import Structure, StructureError

__all__ = ["Batch", "Structure", "StructureError", "batch_to", "collate"]
