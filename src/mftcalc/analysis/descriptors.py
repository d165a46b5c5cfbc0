"""Backbone descriptors of structures, for a user's own models and maps: the model's node features, pooled per
structure (mean or sum) or per atom, with what identifies each row (formula, atom count, element, labels).

The node features are what every head of the model reads; they do not depend on the force-field dataset
embedding (that enters the force-field head only), so a structure has one descriptor whatever its dataset.
``mftcalc descriptors`` writes them (:func:`write_descriptors`: ``.npz`` with the record, ``.npy``, ``.csv``) and
draws a 2-D principal-component map (:func:`plot_descriptor_map`).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols

from mftcalc.files import atomic_write, atomic_write_binary

POOLS = ("mean", "sum", "atoms")
#: structures predicted per block: bounds the memory of the per-atom features of a long file, not the batch size
BLOCK = 10_000
FORMATS = (".npz", ".npy", ".csv")


@dataclass
class Descriptors:
    """Descriptors of ``B`` structures (``N`` atoms in all).

    Attributes:
        values: [B, F] pooled node features (``pool`` mean or sum) or [N, F] per atom (``pool`` atoms); unitless.
        pool: ``"mean"``, ``"sum"`` or ``"atoms"``.
        formulas: [B] Hill formulas; n_atoms: [B] atom counts.
        numbers: [N] atomic numbers of every atom, structure after structure.
        labels: property name -> [B] values from the input structures (NaN where a structure has none).
        units: property name -> unit of its labels, as the input declared it ("" when it did not).
        record: model path, its SHA-256 where it was a file, descriptor width, mftcalc version.
    """

    values: np.ndarray
    pool: str
    formulas: np.ndarray
    n_atoms: np.ndarray
    numbers: np.ndarray
    labels: Dict[str, np.ndarray] = field(default_factory=dict)
    units: Dict[str, str] = field(default_factory=dict)
    record: Dict[str, Any] = field(default_factory=dict)

    @property
    def structure_index(self) -> np.ndarray:
        """[N] the structure each atom belongs to (row of ``formulas``)."""
        return np.repeat(np.arange(len(self.n_atoms)), self.n_atoms)


def compute_descriptors(model: Any, structures: Sequence[Any], pool: str = "mean", device: str = "cpu",
                        dtype: torch.dtype = torch.float32, progress: bool = False) -> Descriptors:
    """The backbone descriptors of ``structures`` (``Structure``, ASE ``Atoms`` or pymatgen objects).

    ``model``: a checkpoint or TorchScript path, or a loaded model. Each structure is checked as on every path
    into the model (elements it was trained on, no overlapping atoms); the error names the structure.
    """
    from mftcalc.calculators.domains import formula
    from mftcalc.calculators.inputs import as_structures
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.model.inference import predict_structures
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)} (mean/sum: one row per structure, atoms: one per "
                         f"atom); got {pool!r}")
    structures = as_structures(structures, "descriptors")
    if not structures:
        raise ValueError("no structures to describe: the input holds none")
    handle = ModelHandle.load(model, device=device, dtype=dtype)
    handle.check_structures(structures, forcefield=False, frame_params=False)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(structures), desc="descriptors", unit="structure")
    parts = []
    for start in range(0, len(structures), BLOCK):          # pooled block by block: the per-atom rows of one block
        rows = predict_structures(handle.module, structures[start:start + BLOCK], compute_forces=False,
                                  compute_stress=False, features=True, properties=False)
        per_atom = [r["node_features"].astype(np.float64) for r in rows]
        if pool == "atoms":
            parts.append(np.concatenate(per_atom))
        else:
            parts.append(np.stack([f.mean(0) if pool == "mean" else f.sum(0) for f in per_atom]))
        if bar is not None:
            bar.update(len(rows))
    if bar is not None:
        bar.close()
    values = np.concatenate(parts)
    names = sorted({name for s in structures for name in s.properties})
    labels = {n: np.array([float(s.properties.get(n, np.nan)) for s in structures]) for n in names}
    units = {n: next((s.property_units[n] for s in structures if n in s.property_units), "") for n in names}
    record = {"model": str(model) if isinstance(model, (str, Path)) else type(model).__name__,
              "pool": pool, "n_dim": int(values.shape[1]), "dtype": str(dtype).replace("torch.", "")}
    if isinstance(model, (str, Path)):
        from mftcalc.filehash import sha256_file
        record["model_sha256"] = sha256_file(model)
    from mftcalc import __version__
    record["mftcalc"] = __version__
    return Descriptors(values=values, pool=pool, formulas=np.array([formula(s) for s in structures]),
                       n_atoms=np.array([s.n_atoms for s in structures]),
                       numbers=np.concatenate([np.asarray(s.numbers) for s in structures]),
                       labels=labels, units=units, record=record)


def write_descriptors(desc: Descriptors, path: str | Path) -> Path:
    """Write ``desc`` by suffix:

    - ``.npz``: ``descriptors`` [rows, F], ``formula`` and ``n_atoms`` [B], ``numbers`` [N], ``structure_index``
      [N] (pool atoms), ``y_<property>`` [B] per label of the input, and ``record`` (JSON: model, its SHA-256,
      pool, label units);
    - ``.npy``: the [rows, F] array alone;
    - ``.csv``: one row per structure (``index, formula, n_atoms, <property>_<unit>..., d0, d1, ...``) or per atom
      (``structure, atom, element, d0, ...``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"{path}: descriptors are written as {', '.join(FORMATS)}; give --out a name ending in one")
    if suffix == ".npz":
        arrays = {"descriptors": desc.values, "formula": desc.formulas, "n_atoms": desc.n_atoms,
                  "numbers": desc.numbers, **{f"y_{n}": v for n, v in desc.labels.items()},
                  "record": np.array(json.dumps({**desc.record, "units": desc.units}))}
        if desc.pool == "atoms":
            arrays["structure_index"] = desc.structure_index
        atomic_write_binary(path, lambda fh: np.savez_compressed(fh, **arrays))
    elif suffix == ".npy":
        atomic_write_binary(path, lambda fh: np.save(fh, desc.values))
    else:
        atomic_write(path, lambda tmp: _write_csv(desc, tmp))
    return path


def _write_csv(desc: Descriptors, tmp: str) -> None:
    width = [f"d{k}" for k in range(desc.values.shape[1])]
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        if desc.pool == "atoms":
            writer.writerow(["structure", "atom", "element", *width])
            index, offsets = desc.structure_index, np.concatenate([[0], np.cumsum(desc.n_atoms)])
            for k, row in enumerate(desc.values):
                writer.writerow([index[k], k - offsets[index[k]], chemical_symbols[int(desc.numbers[k])],
                                 *(f"{v:.8g}" for v in row)])
            return
        names = list(desc.labels)
        heads = [f"{n}_{desc.units[n]}" if desc.units.get(n) else n for n in names]
        writer.writerow(["index", "formula", "n_atoms", *heads, *width])
        for k, row in enumerate(desc.values):
            y = ["" if np.isnan(desc.labels[n][k]) else f"{desc.labels[n][k]:.10g}" for n in names]
            writer.writerow([k, desc.formulas[k], desc.n_atoms[k], *y, *(f"{v:.8g}" for v in row)])


def plot_descriptor_map(desc: Descriptors, path: str | Path, color_by: Optional[str] = None) -> Dict[str, Any]:
    """A 2-D principal-component map of the standardised descriptors (scikit-learn ``PCA``), one point per row.

    Points are coloured by the label ``color_by`` (a colour bar in its unit), else by element (pool atoms) or by
    chemical system (``C-H-O``; the 12 most frequent). Returns the explained variance ratio of the two axes.
    """
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler
    from mftcalc.analysis.plots import _pyplot
    if len(desc.values) < 3:
        raise ValueError(f"a map needs at least 3 rows of descriptors; got {len(desc.values)}")
    if color_by is not None and color_by not in desc.labels:
        raise ValueError(f"--color-by {color_by!r}: the input structures carry no such label; they carry "
                         f"{sorted(desc.labels) or 'none'}")
    pca = PCA(n_components=2, random_state=0)
    xy = pca.fit_transform(StandardScaler().fit_transform(desc.values))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    size = 4 if len(xy) > 2000 else 12
    if color_by is not None:
        y = desc.labels[color_by]
        y = np.repeat(y, desc.n_atoms) if desc.pool == "atoms" else y
        ok = np.isfinite(y)
        ax.scatter(xy[~ok, 0], xy[~ok, 1], s=size, c="lightgrey", label=f"no {color_by} label ({int((~ok).sum())})")
        points = ax.scatter(xy[ok, 0], xy[ok, 1], s=size, c=y[ok], cmap="viridis")
        unit = desc.units.get(color_by)
        fig.colorbar(points, ax=ax, label=f"{color_by} ({unit})" if unit else color_by)
        if (~ok).any():
            ax.legend(fontsize=7)
    else:
        groups = _groups(desc)
        names: List[str] = sorted(set(groups.tolist()), key=lambda n: -int((groups == n).sum()))
        for name in names[:12]:
            sel = groups == name
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, label=f"{name} ({int(sel.sum())})")
        rest = ~np.isin(groups, names[:12])
        if rest.any():
            ax.scatter(xy[rest, 0], xy[rest, 1], s=size, c="lightgrey", label=f"other ({int(rest.sum())})")
        ax.legend(fontsize=7, markerscale=2)
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.0f} % of the variance)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.0f} %)")
    ax.set_title(f"backbone descriptors ({desc.pool}), {len(xy):,} {'atoms' if desc.pool == 'atoms' else 'structures'}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"explained_variance_ratio": [float(r) for r in ratio]}


def _groups(desc: Descriptors) -> np.ndarray:
    """Element of each atom (pool atoms) or chemical system of each structure (``C-H-O``)."""
    if desc.pool == "atoms":
        return np.array([chemical_symbols[int(z)] for z in desc.numbers])
    offsets = np.concatenate([[0], np.cumsum(desc.n_atoms)])
    return np.array(["-".join(sorted({chemical_symbols[int(z)] for z in desc.numbers[a:b]}))
                     for a, b in zip(offsets[:-1], offsets[1:])])


def read_descriptors(path: str | Path) -> Dict[str, Any]:
    """An ``.npz`` of :func:`write_descriptors` back as a dict of arrays, with ``record`` decoded from JSON."""
    with np.load(path, allow_pickle=False) as data:
        out: Dict[str, Any] = {k: data[k] for k in data.files}
    out["record"] = json.loads(str(out["record"]))
    return out
