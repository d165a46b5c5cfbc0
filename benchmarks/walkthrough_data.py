"""Data of the README's own-data walk-through: SMILES of QM9 molecules with a made-up but physical property.

Draws 240 QM9 molecules (seeded) that are in no gap/HOMO/LUMO test set of ``data/boom_splits.json.gz``, computes the
GFN2-xTB dipole magnitude (Debye, tblite) at QM9's B3LYP geometry and writes ``examples/walkthrough/dipoles.csv``
(200 molecules) and ``dipoles_test.csv`` (40), columns ``smiles,xtb_dipole``.

    python benchmarks/walkthrough_data.py
"""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from mftcalc.data.boom import load_splits, test_union
from mftcalc.data.qm9 import load_qm9
from mftcalc.labelling.xtb import singlepoint

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    start = time.perf_counter()
    qm9 = load_qm9(progress=False)
    splits = load_splits(ROOT / "data" / "boom_splits.json.gz")
    excluded = test_union({p: splits[p] for p in ("gap", "homo", "lumo")})
    pool = np.setdiff1d(qm9.qm9_index, excluded)
    chosen = np.sort(np.random.default_rng(2026).choice(pool, 240, replace=False))
    rows = []
    for structure, smiles in zip(qm9.structures(qm9.rows(chosen), properties=[]), qm9.smiles[qm9.rows(chosen)]):
        dipole = singlepoint(structure.numbers, structure.positions).dipole
        rows.append((str(smiles), round(float(np.linalg.norm(dipole)), 4)))
    out = ROOT / "examples" / "walkthrough"
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("dipoles.csv", rows[:200]), ("dipoles_test.csv", rows[200:])):
        with open(out / name, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["smiles", "xtb_dipole"])
            writer.writerows(part)
    print(f"wrote {out}/dipoles.csv (200) and dipoles_test.csv (40) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
