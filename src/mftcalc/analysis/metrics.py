"""Representation metrics: Davies–Bouldin index of labelled features (raw and t-SNE), 1-Wasserstein drift."""
from __future__ import annotations

from typing import Optional

import numpy as np


def _subsample(x: np.ndarray, n: int, seed: int, *others: np.ndarray):
    if len(x) <= n:
        return (x,) + others
    idx = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return (x[idx],) + tuple(o[idx] for o in others)


def davies_bouldin(features: np.ndarray, labels: np.ndarray, min_count: int = 10) -> float:
    """Davies–Bouldin index of ``features`` [n, d] clustered by ``labels`` (clusters smaller than ``min_count``
    are dropped); lower = better separated chemical environments."""
    from sklearn.metrics import davies_bouldin_score
    names, counts = np.unique(labels, return_counts=True)
    keep = np.isin(labels, names[counts >= min_count])
    if len(np.unique(labels[keep])) < 2:
        raise ValueError("Davies–Bouldin needs at least two clusters with enough members")
    return float(davies_bouldin_score(features[keep], labels[keep]))


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE embedding [n, 2] of the features (scikit-learn, PCA initialisation)."""
    from sklearn.manifold import TSNE
    return TSNE(n_components=2, perplexity=min(perplexity, max(5.0, (len(features) - 1) / 3)), init="pca",
                random_state=seed).fit_transform(features)


def wasserstein_drift(reference: np.ndarray, other: np.ndarray, n_samples: int = 5000, seed: int = 0) -> float:
    """Exact 1-Wasserstein distance (POT ``emd2``, Euclidean ground cost) between two feature clouds,
    each subsampled to ``n_samples`` points."""
    import ot
    a, = _subsample(reference, n_samples, seed)
    b, = _subsample(other, n_samples, seed + 1)
    cost = ot.dist(a, b, metric="euclidean")
    return float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost, numItermax=10_000_000))


def db_index_pair(features: np.ndarray, labels: np.ndarray, n_samples: int = 5000, seed: int = 0,
                  tsne: bool = True) -> dict:
    """DB index in the raw feature space and (``tsne``) on the 2-D t-SNE embedding, on a common subsample."""
    x, y = _subsample(features, n_samples, seed, labels)
    out = {"db_raw": davies_bouldin(x, y)}
    if tsne:
        out["db_tsne"] = davies_bouldin(tsne_embedding(x, seed), y)
    return out


def normalise(values: dict, reference: dict) -> dict:
    """Each metric divided by the pretrained model's value of the same metric."""
    return {k: v / reference[k] for k, v in values.items() if k in reference and reference[k] not in (0, None)}


def relative_drift(reference: np.ndarray, other: np.ndarray) -> float:
    """Σ‖other − reference‖² / Σ‖reference‖² of two aligned feature arrays [N, D] (row k of both: the same atom);
    0 when they agree, 1 when ``other`` is as far from ``reference`` as ``reference`` is from zero."""
    reference, other = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape:
        raise ValueError(f"relative_drift needs aligned arrays, got shapes {reference.shape} and {other.shape}")
    norm = float((reference ** 2).sum())
    return float(((other - reference) ** 2).sum()) / norm if norm > 0 else float("nan")


def sliced_drift(reference: np.ndarray, other: np.ndarray, seed: Optional[int] = 0) -> float:
    """Cheap sliced-Wasserstein distance (POT, 128 projections), for logging drift while training."""
    import ot
    return float(ot.sliced_wasserstein_distance(reference, other, n_projections=128, seed=seed))
