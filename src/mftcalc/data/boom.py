"""BOOM out-of-distribution splits of QM9 (Antoniuk et al., NeurIPS 2025 Datasets & Benchmarks).

BOOM's procedure (reference code ``boom/data/prepare_splits_qm9.py`` of FLASK-LLNL/BOOM), per property:

1. Molecules are keyed by SMILES (a repeated SMILES counts once, with the value of its last occurrence).
2. A 1-D Gaussian KDE is fitted to the values with scikit-learn's ``bandwidth="scott"``, which is
   ``h = n**(-1/5)`` **in the property's own unit** (scikit-learn does not multiply by the spread, unlike
   scipy's ``gaussian_kde``): 0.095 Ha for the gap, about twice its standard deviation.
3. The ``n_ood`` (10,000) molecules of lowest density are the OOD test set.
4. Every other molecule, in QM9 order, is ID test when Python's ``random.random()`` (``random.seed(42)``, reset
   per property) draws below 0.05, else training.

BOOM has no validation set; here ``val_fraction`` (5 %) of BOOM's training molecules are drawn (numpy, seeded)
as validation, the rest train. What differs from BOOM's files, and why: qm9pack ships 130,831 molecules, BOOM
counts all 133,885, so the densities lack 3,054 values and Python's draw sequence meets other molecules; the OOD
set is the procedure's, the ID set is a draw of the same law, not BOOM's exact molecules.

The density is evaluated with linear binning on a fine grid, an FFT convolution with the Gaussian and linear
interpolation back to the values (:func:`kde_density`): about 0.1 s per property for all of QM9, against minutes
for the exact kernel sum, and the same OOD set (tested against scikit-learn on a subsample; the full-set overlap
is in ``benchmarks/results/boom_splits.md``). Split files store QM9 indices (not row positions).
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

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
    """scikit-learn's ``KernelDensity(bandwidth="scott")`` for 1-D data: ``n**(-1/5)``, in the unit of ``values``
    (no spread factor). This is the bandwidth of BOOM's splits."""
    return float(np.asarray(values).size ** (-0.2))


def scott_bandwidth_scaled(values: np.ndarray) -> float:
    """scipy's ``gaussian_kde`` Scott rule: ``std(values, ddof=1) * n**(-1/5)`` (mftcalc's splits before
    2026-12, which selected a different OOD set than BOOM's; kept for comparison)."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.std(values, ddof=1) * values.size ** (-0.2))


BANDWIDTHS = {"scott": scott_bandwidth, "scott-scaled": scott_bandwidth_scaled}


def kde_density(values: np.ndarray, bandwidth: float | None = None, grid_size: int = 2 ** 20,
                cutoff: float = 12.0) -> np.ndarray:
    """Gaussian KDE of ``values`` evaluated at each value, by binned FFT convolution.

    ``density(x) = 1 / (n h sqrt(2 pi)) * sum_j exp(-(x - x_j)^2 / (2 h^2))``. The values are linearly binned on
    ``grid_size`` points spanning [min, max], the bin weights are convolved with the Gaussian sampled on the grid
    (truncated at ``cutoff`` bandwidths, where it is below 1e-31) and the grid density is linearly interpolated
    back; both steps err by O((spacing / h)^2), about 1e-8 relative for QM9 properties.

    Args:
        values: [n] float, finite.
        bandwidth: kernel width h in the unit of ``values`` (default :func:`scott_bandwidth`, BOOM's).
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
    if hi == lo:
        raise ValueError("kde_density: all values are equal, so the density is undefined; check the property")
    if not h > 0:
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
               id_fraction: float = 0.05, val_fraction: float = 0.05, seed: int = 0,
               keys: Optional[Sequence[str]] = None, bandwidth: Union[str, float] = "scott",
               id_seed: int = 42) -> BoomSplit:
    """BOOM split of one property (the procedure in the module docstring).

    Args:
        values: [M] property values of all molecules, in QM9 order.
        qm9_index: [M] QM9 index of each molecule (ascending).
        name: property name recorded in the split.
        n_ood: size of the OOD test set, in keys (the lowest-density keys).
        id_fraction: probability of a non-OOD key to be ID test (BOOM: 0.05, Python ``random`` seeded ``id_seed``).
        val_fraction: fraction of BOOM's training keys drawn (numpy, ``seed``) as validation.
        seed: seed of the validation draw only; the OOD and ID sets do not depend on it.
        keys: [M] molecule keys (SMILES); molecules sharing a key count once in the density (with the last
            value) and fall in the same set. Default: every molecule its own key.
        bandwidth: ``"scott"`` (BOOM's, :func:`scott_bandwidth`), ``"scott-scaled"`` or a width in the
            property's unit.
        id_seed: seed of Python's ``random`` for the ID draw (BOOM: 42).
    """
    import random

    values = np.asarray(values, dtype=np.float64)
    qm9_index = np.asarray(qm9_index, dtype=np.int64)
    if values.shape != qm9_index.shape or values.ndim != 1:
        raise ValueError(f"values {values.shape} and qm9_index {qm9_index.shape} must be 1-D of equal length")
    if keys is None:
        first, group = np.arange(values.size), np.arange(values.size)
        key_values = values
    else:
        if len(keys) != values.size:
            raise ValueError(f"keys has {len(keys)} entries for {values.size} values")
        _, first, group = np.unique(np.asarray(keys), return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")           # keys in order of first appearance (BOOM's dict order)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        group = rank[group]
        first = first[order]
        key_values = np.empty(first.size)
        key_values[group] = values                         # the last occurrence wins, as in BOOM's dict
    n_keys = key_values.size
    if not 0 < n_ood < n_keys:
        raise ValueError(f"n_ood={n_ood} must be between 1 and the number of molecules ({n_keys})")
    if isinstance(bandwidth, str):
        if bandwidth not in BANDWIDTHS:
            raise ValueError(f"unknown bandwidth {bandwidth!r}; use one of {sorted(BANDWIDTHS)} or a number")
        h = BANDWIDTHS[bandwidth](key_values)
    else:
        h = float(bandwidth)
    density = kde_density(key_values, bandwidth=h)
    ood_keys = np.argsort(density, kind="stable")[:n_ood]
    is_ood = np.zeros(n_keys, dtype=bool)
    is_ood[ood_keys] = True
    draw = random.Random(id_seed)
    is_id = np.zeros(n_keys, dtype=bool)
    for k in np.flatnonzero(~is_ood).tolist():            # BOOM's loop: one draw per non-OOD key, in order
        is_id[k] = draw.random() < id_fraction
    boom_train = np.flatnonzero(~is_ood & ~is_id)
    n_val = round(val_fraction * (n_keys - n_ood))
    if n_val >= boom_train.size:
        raise ValueError(f"id_fraction + val_fraction = {id_fraction + val_fraction} leaves no training set")
    is_val = np.zeros(n_keys, dtype=bool)
    is_val[np.random.default_rng(seed).permutation(boom_train)[:n_val]] = True

    def qm9(key_mask: np.ndarray) -> np.ndarray:
        return np.sort(qm9_index[key_mask[group]])

    return BoomSplit(property=name, train=qm9(~is_ood & ~is_id & ~is_val), val=qm9(is_val), id_test=qm9(is_id),
                     ood_test=qm9(is_ood))


def boom_splits(dataset, properties: Sequence[str] | None = None, seed: int = 0, **kwargs) -> Dict[str, BoomSplit]:
    """BOOM splits of several properties of a :class:`~mftcalc.data.qm9.QM9Dataset` (default: all of them),
    keyed by its SMILES; ``kwargs`` go to :func:`boom_split`."""
    names = list(dataset.property_names if properties is None else properties)
    return {n: boom_split(dataset.property(n), dataset.qm9_index, name=n, seed=seed, keys=dataset.smiles, **kwargs)
            for n in names}


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
