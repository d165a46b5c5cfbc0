"""Deepening a trained model: append message-passing layers that start as the identity.

A trained backbone that underfits its data (train error ≈ validation error) has too little capacity or too little
training; adding layers tests the first without throwing the training away. Each appended
:class:`~mftcalc.model.backbone.RepFlowLayer` gets freshly initialised weights and **zero residual scales**
(``res_node``, ``res_edge``, ``res_angle``), so its node, edge and angle outputs equal its inputs and the grown
model's energies, forces, stresses and properties equal the base model's to rounding. The residual scales
receive gradients from the first step (ReZero-style), and the new layers' weights do once their scales move.

The base's last layer skipped its edge and angle updates (nothing read them; see ``Backbone.forward``), so those
weights are untrained; in the grown model they feed the new layers, which ignore them until their scales move.
"""
from __future__ import annotations

import dataclasses

import torch

from mftcalc.model.config import ModelConfig
from mftcalc.model.mft_model import MFTModel


def grow_layers(base: MFTModel, n_new: int, seed: int = 0) -> MFTModel:
    """A copy of ``base`` with ``n_new`` identity-initialised layers appended to its backbone.

    Args:
        base: a trained model (any heads); not modified.
        n_new: layers to append (≥ 1).
        seed: seed of the new layers' weight initialisation.
    Returns:
        The grown model (``base``'s dtype, train mode), whose ``config.backbone.n_layers`` is the base's plus
        ``n_new``; ``metadata`` is the base's plus ``grown_from`` (the base's content hash and layer count).
    """
    if n_new < 1:
        raise ValueError(f"n_new must be at least 1, got {n_new}")
    old = base.config.backbone.n_layers
    config = ModelConfig(backbone=dataclasses.replace(base.config.backbone, n_layers=old + n_new),
                         heads=dict(base.config.heads), datasets=list(base.config.datasets))
    dtype = next(base.parameters()).dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MFTModel(config).to(dtype)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    new_prefixes = tuple(f"backbone.layers.{k}." for k in range(old, old + n_new))
    if unexpected or any(not key.startswith(new_prefixes) for key in missing):
        raise RuntimeError(f"growing {old} -> {old + n_new} layers: unexpected keys {unexpected}, "
                           f"missing keys outside the new layers {[k for k in missing if not k.startswith(new_prefixes)]}")
    with torch.no_grad():
        for layer in list(model.backbone.layers)[old:]:
            for scale in [*layer.res_node, *layer.res_edge, layer.res_angle]:
                scale.zero_()
    meta = dict(getattr(base, "metadata", {}))
    meta["grown_from"] = {"content_sha256": getattr(base, "content_sha256", None), "n_layers": old,
                          "n_new": n_new, "seed": seed}
    model.metadata = meta                                              # type: ignore[attr-defined]
    model.train()
    return model
