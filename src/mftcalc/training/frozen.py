"""The ``frozen-sklearn`` strategy: a ridge regression on pooled pretrained backbone features, written into an
ordinary linear property head, so the result is one checkpoint that the calculator serves like any other.

The backbone and force field stay exactly the pretrained ones (like LP), and no optimiser step is taken: the
per-element biases are fitted by least squares (as every property head's), then scikit-learn's ``RidgeCV`` fits
the residual on the structure's pooled node features (mean for an intensive property, sum for an extensive one),
with the regularisation chosen by efficient leave-one-out cross-validation. A linear head on per-atom features
pooled the same way is exactly that regression, so nothing but a ``Linear(n_dim, 1)`` is stored (``n_dim + F``
with F frame parameters, which enter the regression standardised as the head reads them). A group head
(:func:`fit_frozen_group_head`) is fitted the same way on its group embeddings.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import torch

from mftcalc.data.structure import Structure
from mftcalc.model.applicability import pooled_features

ALPHAS = np.logspace(-4, 4, 17)


def fit_frozen_head(model: torch.nn.Module, name: str, train: List[Structure], extensive: bool) -> Dict[str, float]:
    """Fit property head ``name`` of ``model`` (built with ``hidden=()``: one ``Linear``) by ridge regression on the
    pooled features of ``train``; its element ``bias`` must already hold the least-squares element fit
    (:func:`mftcalc.model.fitting.fit_property_head`). Returns the chosen ``alpha`` and the training RMSE."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    head = model.property_heads[name]
    linear = head.mlp.net[0]
    if len(head.mlp.net) != 1 or not isinstance(linear, torch.nn.Linear):
        raise ValueError(f"frozen-sklearn needs a linear property head (head_hidden: []), got {head.mlp}")
    y = np.array([s.properties[name] for s in train], dtype=np.float64)
    bias = head.bias.detach().cpu().double().numpy()
    per_structure_bias = np.array([bias[s.numbers].sum() if extensive else bias[s.numbers].mean() for s in train])
    residual = y - per_structure_bias
    x = pooled_features(model, train, extensive)
    if getattr(head, "n_frame", 0):      # the head reads [h_i, standardised frame parameters]: pool them alike
        from mftcalc.data.frame_params import frame_param_matrix
        mean, std_f = (t.detach().cpu().double().numpy() for t in (head.frame_mean, head.frame_std))
        frame = (frame_param_matrix(train, head.frame_names) - mean) / std_f
        counts = np.array([s.n_atoms for s in train], dtype=np.float64)[:, None]
        x = np.concatenate([x, frame * counts if extensive else frame], 1)
    scaler = StandardScaler(with_mean=not extensive).fit(x)     # extensive: no per-structure intercept exists
    std = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    centre = scaler.mean_ if not extensive else np.zeros(x.shape[1])
    ridge = RidgeCV(alphas=ALPHAS, fit_intercept=not extensive).fit((x - centre) / std, residual)
    weight = ridge.coef_ / std                                   # on raw pooled features
    intercept = float(ridge.intercept_ - np.dot(weight, centre)) if not extensive else 0.0
    with torch.no_grad():
        head.scale.fill_(1.0)
        linear.weight.copy_(torch.as_tensor(weight[None, :], dtype=linear.weight.dtype))
        linear.bias.fill_(intercept)                             # per atom; the mean over atoms adds it once
    fitted = x @ weight + intercept + per_structure_bias
    return {"alpha": float(ridge.alpha_), "train_rmse": float(np.sqrt(np.mean((fitted - y) ** 2)))}


def fit_frozen_group_head(model: torch.nn.Module, name: str, train: List, reduce_mean: bool) -> Dict[str, float]:
    """Fit group head ``name`` of ``model`` (built with ``hidden=()``) by ridge regression on the group embeddings
    of the assemblies ``train`` (:mod:`mftcalc.data.assembly`): each component's mean node feature over its pooled
    atoms, their weighted mean (``reduce_mean``) or weighted sum over the group, and the group's standardised frame
    parameters, exactly what the head's ``Linear`` reads. Returns the chosen ``alpha`` and the training RMSE."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler
    from mftcalc.data.assembly import components_of
    from mftcalc.model.inference import predict_structures

    head = model.group_heads[name]
    linear = head.mlp.net[0]
    if len(head.mlp.net) != 1 or not isinstance(linear, torch.nn.Linear):
        raise ValueError(f"frozen-sklearn needs a linear group head (head_hidden: []), got {head.mlp}")
    rows = predict_structures(model, components_of(train), compute_forces=False, compute_stress=False,
                              features=True, properties=False)
    pooled = np.stack([r["node_features"].astype(np.float64)[c.pool_mask if c.pool_mask is not None else
                                                              slice(None)].mean(0)
                       for r, c in zip(rows, components_of(train))])
    x, start = [], 0
    for a in train:
        z = (a.weights[:, None] * pooled[start:start + len(a.components)]).sum(0)
        x.append(z / a.weights.sum() if reduce_mean else z)
        start += len(a.components)
    x = np.stack(x)
    if getattr(head, "n_frame", 0):
        from mftcalc.data.frame_params import frame_param_matrix
        mean, std_f = (t.detach().cpu().double().numpy() for t in (head.frame_mean, head.frame_std))
        x = np.concatenate([x, (frame_param_matrix(train, head.frame_names) - mean) / std_f], 1)
    y = np.array([a.properties[name] for a in train], dtype=np.float64)
    scaler = StandardScaler().fit(x)
    std = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    ridge = RidgeCV(alphas=ALPHAS).fit((x - scaler.mean_) / std, y)
    weight = ridge.coef_ / std
    intercept = float(ridge.intercept_ - np.dot(weight, scaler.mean_))
    with torch.no_grad():
        head.scale.fill_(1.0)
        head.shift.fill_(0.0)
        linear.weight.copy_(torch.as_tensor(weight[None, :], dtype=linear.weight.dtype))
        linear.bias.fill_(intercept)
    fitted = x @ weight + intercept
    return {"alpha": float(ridge.alpha_), "train_rmse": float(np.sqrt(np.mean((fitted - y) ** 2)))}
