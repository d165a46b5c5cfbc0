"""QM9 (130,831 molecules) from the ``qm9pack`` CSV files, cached as one compact npz of flat arrays.

The first load parses ``qm9pack/data/qm9_part*.csv`` (a few seconds) and writes ``qm9_v1.npz`` to the cache
directory (argument, else ``$MFTCALC_CACHE``, else ``~/.cache/mftcalc``); later loads read the npz (well under 2 s).
Geometries are B3LYP/6-31G(2df,p) minima in Å; properties keep the units of QM9 (see :data:`QM9_PROPERTIES`).
"""
from __future__ import annotations

import csv
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from mftcalc.data.structure import Structure

PathLike = Union[str, Path]

#: Property name -> unit (the units of the QM9 source data).
QM9_PROPERTIES: Dict[str, str] = {
    "homo": "Hartree", "lumo": "Hartree", "gap": "Hartree", "zpve": "Hartree",
    "r2": "bohr^2", "alpha": "bohr^3", "mu": "Debye", "cv": "cal/mol/K",
}
# qm9pack CSV column of each property.
_COLUMNS = {
    "homo": "HOMO_au", "lumo": "LUMO_au", "gap": "HOMO_LUMO_gap_au", "zpve": "ZPVE_au", "r2": "R2_bohr2",
    "alpha": "Polarizability_bohr3", "mu": "Dipole_debye", "cv": "Heatcapacity_Cv_cal_mol_K",
}
_SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
CACHE_NAME = "qm9_v2.npz"


@dataclass(frozen=True)
class QM9Dataset:
    """All QM9 molecules as flat arrays (M molecules, A atoms in total).

    Attributes:
        positions: [A, 3] float64, Å, molecule m is ``positions[offsets[m]:offsets[m + 1]]``.
        numbers: [A] uint8, atomic numbers (H, C, N, O, F).
        offsets: [M + 1] int64, start of each molecule in the atom arrays.
        properties: [M, P] float64, one column per name in ``property_names`` (units in :data:`QM9_PROPERTIES`).
        property_names: the P property names, in column order.
        qm9_index: [M] int64, the QM9 index of each molecule (1..133885, ascending; failed molecules absent).
        smiles: [M] str, the GDB SMILES of each molecule (qm9pack's ``SMILES``; BOOM keys molecules by it).
    """

    positions: np.ndarray
    numbers: np.ndarray
    offsets: np.ndarray
    properties: np.ndarray
    property_names: Tuple[str, ...]
    qm9_index: np.ndarray
    smiles: np.ndarray

    def __len__(self) -> int:
        return int(self.qm9_index.shape[0])

    @property
    def n_atoms(self) -> np.ndarray:
        """[M] int64, atoms per molecule."""
        return np.diff(self.offsets)

    def property(self, name: str) -> np.ndarray:
        """[M] float64 values of property ``name`` (unit ``QM9_PROPERTIES[name]``)."""
        return self.properties[:, self.property_names.index(self._check(name))]

    def rows(self, qm9_indices: Sequence[int]) -> np.ndarray:
        """[k] int64 row positions (0..M-1) of molecules given by their QM9 indices (as stored in split files)."""
        wanted = np.asarray(qm9_indices, dtype=np.int64)
        rows = np.searchsorted(self.qm9_index, wanted)
        rows = np.minimum(rows, len(self) - 1)
        missing = wanted[self.qm9_index[rows] != wanted]
        if missing.size:
            raise KeyError(f"QM9 indices not in the dataset: {missing[:10].tolist()}"
                           f"{' ...' if missing.size > 10 else ''} (3,054 QM9 molecules failed and are absent)")
        return rows

    def structures(self, indices: Optional[Sequence[int]] = None,
                   properties: Optional[Sequence[str]] = None) -> list:
        """``Structure`` records for rows ``indices`` (0..M-1; default all; use :meth:`rows` for QM9 indices).

        Each carries the requested ``properties`` (default all eight) with ``property_units`` set, and
        ``info["qm9_index"]``. Molecules are non-periodic (zero cell).
        """
        rows = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        names = list(self.property_names if properties is None else properties)
        columns = [self.property_names.index(self._check(n)) for n in names]
        units = {n: QM9_PROPERTIES[n] for n in names}
        out = []
        for r in rows.tolist():
            a, b = self.offsets[r], self.offsets[r + 1]
            values = self.properties[r, columns].tolist()
            out.append(Structure(positions=self.positions[a:b], numbers=self.numbers[a:b],
                                 properties=dict(zip(names, values)), property_units=dict(units),
                                 info={"qm9_index": int(self.qm9_index[r])}))
        return out

    def _check(self, name: str) -> str:
        if name not in self.property_names:
            raise KeyError(f"unknown QM9 property {name!r}; choose one of {list(self.property_names)}")
        return name


def default_cache_dir() -> Path:
    """``$MFTCALC_CACHE`` if set, else ``~/.cache/mftcalc``."""
    return Path(os.environ.get("MFTCALC_CACHE", "~/.cache/mftcalc")).expanduser()


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` (found without importing it: its import needs
    ``pkg_resources``)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("qm9pack is not installed; `pip install qm9pack` or pass data_dir= to load_qm9")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_qm9(cache_dir: Optional[PathLike] = None, data_dir: Optional[PathLike] = None,
             progress: bool = True) -> QM9Dataset:
    """Load QM9, from the npz cache when it is current, else by parsing the CSVs and writing the cache.

    Args:
        cache_dir: where the npz cache lives (default :func:`default_cache_dir`).
        data_dir: folder with ``qm9_part*.csv`` (default: the installed qm9pack's ``data`` folder).
        progress: show a tqdm bar while parsing.
    """
    data_dir = Path(data_dir) if data_dir is not None else qm9pack_data_dir()
    files = sorted(data_dir.glob("qm9_part*.csv"))
    if not files:
        raise FileNotFoundError(f"{data_dir}: no qm9_part*.csv files; reinstall qm9pack or fix data_dir")
    signature = ";".join(f"{f.resolve()}:{f.stat().st_size}" for f in files)
    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_NAME
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["signature"]) == signature:
                return QM9Dataset(positions=z["positions"], numbers=z["numbers"], offsets=z["offsets"],
                                  properties=z["properties"], property_names=tuple(z["property_names"].tolist()),
                                  qm9_index=z["qm9_index"], smiles=z["smiles"])
    dataset = parse_qm9_csv(files, progress=progress)
    _write_cache(dataset, cache, signature)
    return dataset


def parse_qm9_csv(files: Sequence[PathLike], progress: bool = True) -> QM9Dataset:
    """Parse qm9pack CSV files (columns ``Index``, ``N_atoms``, ``Elements``, ``XYZ_Ang`` and the property
    columns) into a :class:`QM9Dataset`; the files must hold ascending QM9 indices (as qm9pack ships them)."""
    csv.field_size_limit(sys.maxsize)
    index, n_atoms, elements, xyz, values, smiles = [], [], [], [], [], []
    for path in tqdm(files, desc="parsing QM9 CSV", unit="file", disable=not progress):
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            missing = [c for c in ("Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang", *_COLUMNS.values())
                       if c not in header]
            if missing:
                raise ValueError(f"{path}: columns {missing} missing; this is not a qm9pack QM9 CSV")
            col = {name: header.index(name) for name in header}
            prop_cols = [col[_COLUMNS[p]] for p in QM9_PROPERTIES]
            for row in reader:
                index.append(row[col["Index"]])
                smiles.append(row[col["SMILES"]])
                n_atoms.append(row[col["N_atoms"]])
                elements.append(row[col["Elements"]])
                xyz.append(row[col["XYZ_Ang"]])
                values.append([row[c] for c in prop_cols])
    strip = str.maketrans("", "", "[]' ")
    counts = np.array(n_atoms, dtype=np.int64)
    symbols = ",".join(elements).translate(strip).split(",")
    unknown = set(symbols) - set(_SYMBOLS)
    if unknown:
        raise ValueError(f"QM9 CSV: unexpected element symbols {sorted(unknown)}; expected H, C, N, O, F")
    numbers = np.array([_SYMBOLS[s] for s in symbols], dtype=np.uint8)
    positions = np.array(",".join(xyz).translate(strip).split(","), dtype=np.float64)
    if numbers.size != counts.sum() or positions.size != 3 * counts.sum():
        raise ValueError(f"QM9 CSV: {numbers.size} elements and {positions.size // 3} positions for "
                         f"{counts.sum()} atoms (N_atoms); the CSV files are corrupt — reinstall qm9pack")
    qm9_index = np.array(index, dtype=np.int64)
    properties = np.array(values, dtype=np.float64)
    if np.any(np.diff(qm9_index) <= 0):
        raise ValueError("QM9 CSV: molecule indices are not strictly ascending across the files; pass the "
                         "qm9_part*.csv files in order, each once")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return QM9Dataset(positions=positions.reshape(-1, 3), numbers=numbers, offsets=offsets, properties=properties,
                      property_names=tuple(QM9_PROPERTIES), qm9_index=qm9_index, smiles=np.array(smiles))


def _write_cache(dataset: QM9Dataset, cache: Path, signature: str) -> None:
    """Write the npz atomically (temporary file + rename), so concurrent loaders never see a partial file."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, positions=dataset.positions, numbers=dataset.numbers, offsets=dataset.offsets,
                     properties=dataset.properties, property_names=np.array(dataset.property_names),
                     qm9_index=dataset.qm9_index, smiles=dataset.smiles, signature=np.array(signature))
        os.replace(tmp, cache)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
