"""SMILES in, relaxed 3-D molecules out: a CSV of SMILES and a property becomes labelled structures.

Each SMILES is embedded with RDKit (ETKDGv3, seeded, ``n_conformers`` conformers with hydrogens), the model's
force field picks each molecule's lowest-energy conformer, and those are relaxed together with the model
(batched, BFGS in internal coordinates). The relaxed molecules are written to an extxyz file with the property,
the SMILES and the CSV row, and reused when the same CSV and model come again (their hashes are recorded).
Rows whose SMILES RDKit cannot parse or embed are skipped and reported with their row numbers and counts.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mftcalc.data.structure import Structure
from mftcalc.filehash import sha256_file


@dataclass
class SmilesReport:
    """What happened to the rows of a SMILES CSV."""

    rows: int = 0
    used: int = 0
    skipped: List[Tuple[int, str, str]] = field(default_factory=list)   # (row, smiles, reason)
    reused: bool = False

    def summary(self) -> str:
        text = f"{self.used} of {self.rows} SMILES rows used"
        if self.skipped:
            shown = "; ".join(f"row {r} {s!r}: {why}" for r, s, why in self.skipped[:5])
            text += f", {len(self.skipped)} skipped ({shown}{' ...' if len(self.skipped) > 5 else ''})"
        return text + (" (relaxed geometries reused)" if self.reused else "")


def read_smiles_csv(path: str | Path, prop: str, smiles_column: str = "smiles",
                    columns: Sequence[str] = ()) -> List[Tuple[int, str, float, Dict[str, float]]]:
    """(row number, SMILES, value, {column: value} of ``columns``) of each row, e.g. a temperature column read as a
    frame parameter; a missing column or a non-numeric or non-finite value names the row."""
    path = Path(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        for needed in (smiles_column, prop, *columns):
            if needed not in header:
                raise ValueError(f"{path}: no column {needed!r} (columns: {header}); name the SMILES column "
                                 f"{smiles_column!r} and pick --property (and frame parameters) from the columns")
        rows = []
        for k, row in enumerate(reader, start=2):               # row 1 is the header
            numbers = {name: _number(path, k, name, row[name]) for name in (prop, *columns)}
            rows.append((k, row[smiles_column].strip(), numbers.pop(prop), numbers))
    if not rows:
        raise ValueError(f"{path}: no data rows")
    return rows


def _number(path: Path, row: int, column: str, text: Optional[str]) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{path}, row {row}: {column} = {text!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{path}, row {row}: {column} = {value} is not finite")
    return value


def embed(smiles: str, n_conformers: int, seed: int) -> Tuple[Optional[List[Structure]], str]:
    """RDKit ETKDGv3 conformers (with hydrogens) of one SMILES, or ``(None, reason)``."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem

    RDLogger.DisableLog("rdApp.*")              # a bad row is reported once, by us, with its row number
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None, "RDKit cannot parse it"
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n_conformers), params=params))
    if not ids:
        return None, "RDKit could not embed it in 3-D"
    numbers = np.array([atom.GetAtomicNum() for atom in mol.GetAtoms()])
    return [Structure(positions=mol.GetConformer(i).GetPositions(), numbers=numbers) for i in ids], ""


def smiles_structures(path: str | Path, prop: str, unit: str, model_path: str | Path, dataset: str,
                      out_path: str | Path, smiles_column: str = "smiles", n_conformers: int = 4, seed: int = 0,
                      fmax: float = 0.05, columns: Sequence[str] = ()) -> Tuple[List[Structure], SmilesReport]:
    """Labelled, relaxed molecules from a SMILES CSV (module docstring); ``dataset`` is the force-field dataset
    of the model that relaxes them (e.g. ``xtb_qm9``). Writes/reuses ``out_path`` (extxyz). ``columns``: further
    numeric columns copied into each molecule's ``info`` (frame parameters such as a temperature)."""
    from mftcalc.data.io import read_structures, write_extxyz

    path, out_path = Path(path), Path(out_path)
    stamp = {"csv_sha256": sha256_file(path), "model_sha256": sha256_file(model_path), "dataset": dataset,
             "n_conformers": n_conformers, "seed": seed, "fmax": fmax}
    if columns:                                 # a cache made without these columns is made again
        stamp["csv_columns"] = ",".join(columns)
    rows = read_smiles_csv(path, prop, smiles_column, columns)
    report = SmilesReport(rows=len(rows))
    if out_path.exists():
        cached = read_structures(out_path, properties={prop: unit})
        if cached and all(s.info.get(k) == v for s in cached[:1] for k, v in stamp.items()):
            used = {int(s.info["csv_row"]) for s in cached}
            report.used, report.reused = len(cached), True
            report.skipped = [(r, smi, "skipped when the geometries were made") for r, smi, *_ in rows
                              if r not in used]
            return cached, report
    candidates: List[Structure] = []
    owners: List[int] = []
    for index, (row, smi, *_) in enumerate(rows):
        conformers, reason = embed(smi, n_conformers, seed)
        if conformers is None:
            report.skipped.append((row, smi, reason))
            continue
        candidates.extend(conformers)
        owners.extend([index] * len(conformers))
    if not candidates:
        raise ValueError(f"{path}: no SMILES could be embedded ({report.summary()})")
    from mftcalc.calculators.predict import predict
    from mftcalc.relaxation.api import relax
    energies = np.array([float(r["energy"]) for r in predict(candidates, str(model_path), properties=[],
                                                                 dataset=dataset)])
    best: dict = {}
    for k, owner in enumerate(owners):
        if owner not in best or energies[k] < energies[best[owner]]:
            best[owner] = k
    chosen = sorted(best)
    results = relax([candidates[best[i]] for i in chosen], str(model_path), fmax=fmax, optimizer="bfgs-internal",
                    properties=[], dataset=dataset)
    out: List[Structure] = []
    for index, result in zip(chosen, results):
        row, smi, value, extra = rows[index]
        out.append(Structure(positions=result.structure.positions, numbers=result.structure.numbers,
                             properties={prop: value}, property_units={prop: unit},
                             info={**stamp, **extra, "smiles": smi, "csv_row": row,
                                   "converged": bool(result.converged)}))
    report.used = len(out)
    write_extxyz(out, out_path)
    return out, report
