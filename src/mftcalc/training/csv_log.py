"""Learning-curve CSV files (``train.csv``, ``val.csv``): rows appended as training goes, columns widened when a
row brings new ones."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List

from mftcalc.files import atomic_write_text


def append_row(path: Path, row: Dict[str, float]) -> None:
    """Append a row; when the row brings new columns the file is rewritten (atomically) with the union header."""
    fields: List[str] = []
    if path.exists():
        with open(path, newline="") as fh:
            fields = next(csv.reader(fh), [])
    if path.exists() and all(k in fields for k in row):
        with open(path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=fields).writerow(row)
        return
    rows: List[Dict[str, str]] = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    fields = fields + [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())      # a kill mid-rewrite keeps the old log whole
