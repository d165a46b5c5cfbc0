"""Applicability score: how far a structure's pooled backbone features lie from the fine-tuning training set's.

``ood_score = mean distance to the k nearest training structures / median of the same distance within the
training set (leave-one-out)``, in standardised feature space. About 1 for a typical training-like structure;
larger is farther. A structure holding an element that no training structure had gets ``inf`` (the property head
has never seen that element's contribution). The head is an ordinary property head of kind ``knn_ood``, so every
path that predicts properties (calculator, predict, screen) returns the score beside the property.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

N_TYPES = 119


class KnnApplicabilityHead(nn.Module):
    """k-nearest-neighbour distance of mean-pooled node features to stored training features.

    Buffers: ``reference`` [M, n_dim] standardised pooled features of (a subsample of) the training set, ``mean``
    and ``std`` [n_dim] of the standardisation, ``scale`` [1] the training set's own median k-NN distance,
    ``seen`` [119] bool, the elements of the training set. ``reference`` is resized on loading (M is data).
    """

    def __init__(self, n_dim: int, k: int = 5) -> None:
        super().__init__()
        self.k = int(k)
        self.register_buffer("reference", torch.zeros(0, n_dim))
        self.register_buffer("mean", torch.zeros(n_dim))
        self.register_buffer("std", torch.ones(n_dim))
        self.register_buffer("scale", torch.ones(1))
        self.register_buffer("seen", torch.zeros(N_TYPES, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        key = prefix + "reference"
        if key in state_dict:
            self.reference = torch.zeros_like(state_dict[key], dtype=self.reference.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, node: Tensor, numbers: Tensor, batch: Tensor, positions: Tensor, dataset: Tensor,
                n_structures: int, frame: Tensor) -> Tuple[Tensor, Tensor]:
        """node [N, n_dim] -> (zeros [N], score [B]) (dimensionless)."""
        counts = torch.zeros(n_structures, dtype=node.dtype, device=node.device).index_add_(
            0, batch, torch.ones_like(node[:, 0]))
        pooled = torch.zeros(n_structures, node.shape[1], dtype=node.dtype, device=node.device).index_add_(
            0, batch, node) / counts.clamp(min=1.0).unsqueeze(1)
        z = (pooled - self.mean) / self.std
        k = min(self.k, self.reference.shape[0])
        if k == 0:
            score = torch.full((n_structures,), float("nan"), dtype=node.dtype, device=node.device)
        else:
            d = torch.cdist(z.to(self.reference.dtype), self.reference)                     # [B, M]
            score = d.topk(k, dim=1, largest=False).values.mean(1).to(node.dtype) / self.scale
        unseen = (~self.seen[numbers]).to(node.dtype)                                       # [N]
        any_unseen = torch.zeros(n_structures, dtype=node.dtype, device=node.device).index_add_(0, batch, unseen)
        score = torch.where(any_unseen > 0, torch.full_like(score, float("inf")), score)
        return torch.zeros_like(node[:, 0]), score


def training_score_limit(head: nn.Module) -> float:
    """The largest applicability score of the head's reference (training) structures, each scored against the
    others (leave-one-out, the rule by which :func:`fit_applicability` set ``scale``); dimensionless. NaN for a
    head with fewer than two reference structures (not fitted).

    ``head`` is a :class:`KnnApplicabilityHead`, eager or TorchScript (only its buffers and ``k`` are read), so
    checkpoints written before the limit existed get it from what they store.
    """
    reference = head.reference.detach().to(torch.float64)           # [M, n_dim]
    m = reference.shape[0]
    if m < 2:
        return float("nan")
    d = torch.cdist(reference, reference)                             # [M, M]; M <= max_reference (2000)
    d.fill_diagonal_(float("inf"))
    k = min(int(head.k), m - 1)
    own = d.topk(k, dim=1, largest=False).values.mean(1)
    return float(own.max()) / float(head.scale.detach().to(torch.float64)[0])


def pooled_features(model: nn.Module, structures: Sequence, extensive: bool = False) -> np.ndarray:
    """[B, n_dim] per-structure sum (``extensive``) or mean of the model's backbone node features."""
    from mftcalc.model.inference import predict_structures
    rows = predict_structures(model, structures, compute_forces=False, compute_stress=False, features=True,
                              properties=False)
    pool = np.sum if extensive else np.mean
    return np.stack([pool(r["node_features"].astype(np.float64), axis=0) for r in rows])


def fit_applicability(head: KnnApplicabilityHead, pooled: np.ndarray, numbers: Sequence[np.ndarray],
                      max_reference: int = 2000, seed: int = 0) -> float:
    """Store (a seeded subsample of at most ``max_reference``) training features in ``head``.

    Args:
        pooled: [M, n_dim] mean-pooled node features of the training structures.
        numbers: their atomic numbers (one array per structure), for the element coverage.
    Returns:
        The scale (median leave-one-out k-NN distance of the reference set to itself, standardised space).
    """
    pooled = np.asarray(pooled, dtype=np.float64)
    if pooled.shape[0] < 2:
        raise ValueError("the applicability score needs at least two training structures")
    if pooled.shape[0] > max_reference:
        pooled = pooled[np.sort(np.random.default_rng(seed).choice(pooled.shape[0], max_reference, replace=False))]
    mean = pooled.mean(0)
    std = pooled.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    z = (pooled - mean) / std
    from scipy.spatial.distance import cdist
    d = cdist(z, z)                                   # [M, M]; M <= max_reference keeps it at most 32 MB
    np.fill_diagonal(d, np.inf)
    k = min(head.k, z.shape[0] - 1)
    own = np.sort(d, axis=1)[:, :k].mean(1)
    scale = float(np.median(own)) if np.median(own) > 0 else 1.0
    seen = np.zeros(N_TYPES, dtype=bool)
    for z_numbers in numbers:
        seen[np.unique(z_numbers)] = True
    dtype = head.mean.dtype
    head.reference = torch.as_tensor(z, dtype=dtype)
    head.mean.copy_(torch.as_tensor(mean, dtype=dtype))
    head.std.copy_(torch.as_tensor(std, dtype=dtype))
    head.scale.fill_(scale)
    head.seen.copy_(torch.as_tensor(seen))
    return scale
