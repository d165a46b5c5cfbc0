"""BOOM out-of-distribution splits of QM9 (Antoniuk et al., NeurIPS 2025 Datasets & Benchmarks).

Per property: fit a 1-D Gaussian KDE with Scott's bandwidth ``h = std(ddof=1) * n**(-1/5)`` to the values of all
molecules; the ``n_ood`` (10,000) molecules of lowest density form the OOD test set; from the rest a random
``id_fraction`` (5 %) is the ID test set and a further ``val_fraction`` (5 %) the validation set; the remainder
is the training set. The density is evaluated with linear binning on a fine grid, an FFT convolution with the
Gaussian and linear interpolation back to the values (:func:`kde_density`): about 0.1 s per property for all of
QM9, against minutes for the exact kernel sum, and the same OOD set to within a few boundary molecules.
Split files store QM9 indices (not row positions).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Sequence, Union

import numpy as np

PathLike = Union[str, Path]


@dataclass(frozen=True)
class BoomSplit:
    """One property's split; every field is a sorted int64 array of QM9 indices, the four sets disjoint."""

    property: str
    train: np.ndarray
    val: np.ndarray
    id_test: np.ndarray
    ood_test: np.ndarray

    def parts(self) -> Dict[str, np.ndarray]:
        """The four sets by name: ``train``, ``val``, ``id_test``, ``ood_test``."""
        return {"train": self.train, "val": self.val, "id_test": self.id_test, "ood_test": self.ood_test}


def scott_bandwidth(values: np.ndarray) -> float:
    """Scott's rule for a 1-D Gaussian KDE: ``std(values, ddof=1) * n**(-1/5)`` (as scipy's ``gaussian_kde``)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values, ddof=1) * values.size ** (-0.2))


def kde_density(values: np.ndarray, bandwidth: float | None = None, grid_size: int = 2 ** 20,
                cutoff: float = 12.0) -> np.ndarray:
    """Gaussian KDE of ``values`` evaluated at each value, by binned FFT convolution.

    ``density(x) = 1 / (n h sqrt(2 pi)) * sum_j exp(-(x - x_j)^2 / (2 h^2))``. The values are linearly binned on
    ``grid_size`` points spanning [min, max], the bin weights are convolved with the Gaussian sampled on the grid
    (truncated at ``cutoff`` bandwidths, where it is below 1e-31) and the grid density is linearly interpolated
    back; both steps err by O((spacing / h)^2), about 1e-8 relative for QM9 properties.

    Args:
        values: [n] float, finite.
        bandwidth: kernel width h in the unit of ``values`` (default :func:`scott_bandwidth`).
        grid_size: number of grid points.
        cutoff: kernel support in bandwidths.

    Returns:
        [n] float64 densities, in 1 / unit of ``values``.
    """
    from scipy.signal import fftconvolve  # imported here: scipy.signal takes ~0.7 s to import

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)):
        raise ValueError("kde_density needs a 1-D array of at least two finite values")
    h = scott_bandwidth(x) if bandwidth is None else float(bandwidth)
    lo, hi = x.min(), x.max()
    if h <= 0 or hi == lo:
        raise ValueError("kde_density: all values are equal, so the density is undefined; check the property")
    step = (hi - lo) / (grid_size - 1)
    t = (x - lo) / step
    left = np.minimum(t.astype(np.int64), grid_size - 2)
    frac = t - left
    weights = (np.bincount(left, 1.0 - frac, minlength=grid_size)
               + np.bincount(left + 1, frac, minlength=grid_size))
    half = min(grid_size - 1, int(np.ceil(cutoff * h / step)))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * (step / h)) ** 2)
    grid_density = fftconvolve(weights, kernel, mode="same") / (x.size * h * np.sqrt(2.0 * np.pi))
    return np.interp(x, lo + step * np.arange(grid_size), grid_density)


def boom_split(values: np.ndarray, qm9_index: np.ndarray, name: str = "", n_ood: int = 10_000,
               id_fraction: float = 0.05, val_fraction: float = 0.05, seed: int = 0) -> BoomSplit:
    """BOOM split of one property.

    Args:
        values: [M] property values of all molecules.
        qm9_index: [M] QM9 index of each molecule.
        name: property name recorded in the split.
        n_ood: size of the OOD test set (the lowest-density molecules; ties broken by position).
        id_fraction, val_fraction: fractions of the non-OOD molecules drawn for ID test and validation.
        seed: seed of the random draw (same seed -> same split).
    """
    values = np.asarray(values, dtype=np.float64)
    qm9_index = np.asarray(qm9_index, dtype=np.int64)
    if values.shape != qm9_index.shape or values.ndim != 1:
        raise ValueError(f"values {values.shape} and qm9_index {qm9_index.shape} must be 1-D of equal length")
    if not 0 < n_ood < values.size:
        raise ValueError(f"n_ood={n_ood} must be between 1 and the number of molecules ({values.size})")
    order = np.argsort(kde_density(values), kind="stable")
    ood, rest = order[:n_ood], order[n_ood:]
    rest = np.random.default_rng(seed).permutation(np.sort(rest))
    n_id, n_val = round(id_fraction * rest.size), round(val_fraction * rest.size)
    if n_id + n_val >= rest.size:
        raise ValueError(f"id_fraction + val_fraction = {id_fraction + val_fraction} leaves no training set")
    def qm9(rows: np.ndarray) -> np.ndarray:
        return np.sort(qm9_index[rows])

    return BoomSplit(property=name, train=qm9(rest[n_id + n_val:]), val=qm9(rest[n_id:n_id + n_val]),
                     id_test=qm9(rest[:n_id]), ood_test=qm9(ood))


def boom_splits(dataset, properties: Sequence[str] | None = None, seed: int = 0, **kwargs) -> Dict[str, BoomSplit]:
    """BOOM splits of several properties of a :class:`~mftcalc.data.qm9.QM9Dataset` (default: all of them);
    ``kwargs`` go to :func:`boom_split`."""
    names = list(dataset.property_names if properties is None else properties)
    return {n: boom_split(dataset.property(n), dataset.qm9_index, name=n, seed=seed, **kwargs) for n in names}


def test_union(splits: Mapping[str, BoomSplit]) -> np.ndarray:
    """Sorted QM9 indices in the ID or OOD test set of any split (molecules a force-field labeller must skip)."""
    parts = [np.concatenate([s.id_test, s.ood_test]) for s in splits.values()]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


test_union.__test__ = False  # a library function, not a pytest test, when imported into a test module


def save_splits(splits: Mapping[str, BoomSplit], path: PathLike) -> None:
    """Write splits as JSON ``{property: {"train": [...], "val": [...], "id_test": [...], "ood_test": [...]}}``
    of QM9 indices (gzip-compressed when ``path`` ends with ``.gz``)."""
    path = Path(path)
    payload = {name: {k: v.tolist() for k, v in s.parts().items()} for name, s in splits.items()}
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        json.dump(payload, fh)


def load_splits(path: PathLike) -> Dict[str, BoomSplit]:
    """Read splits written by :func:`save_splits`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such split file; create one with save_splits or "
                                "`mftcalc data qm9 --splits-out`")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        payload = json.load(fh)
    try:
        return {name: BoomSplit(property=name, **{k: np.asarray(part[k], dtype=np.int64) for k in
                                                   ("train", "val", "id_test", "ood_test")})
                for name, part in payload.items()}
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a BOOM split file (expected {{property: {{train, val, id_test, "
                         f"ood_test}}}}): {exc}") from None
