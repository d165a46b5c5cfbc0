"""Anchors (mftcalc.training.anchor): the penalties are the documented formulas, zero with zero gradient at the
start, see only what trains, and are refused by name where they cannot apply."""
from __future__ import annotations

import pytest
import torch

from mftcalc import keys as K
from mftcalc.data.batch import collate
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.mft_model import MFTModel
from mftcalc.training.anchor import Anchor, build_anchor, check_anchor

from _helpers import emt_structures


def _model() -> MFTModel:
    torch.manual_seed(0)
    heads = {"energy": default_forcefield_head(), "vpa": HeadConfig(kind="scalar", unit="Å^3", hidden=(8,))}
    return MFTModel(ModelConfig(backbone=backbone_preset("cpu", n_layers=1), heads=heads)).double()


def _features(model, batch):
    return model(batch, compute_forces=False, compute_stress=False, compute_properties=False,
                 features=True)[K.NODE_FEATURES]


def _perturb(model, seed=1, size=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("backbone."):
                p.add_(size * torch.randn(p.shape, generator=g, dtype=p.dtype))


def test_feature_penalty_is_the_relative_squared_drift_and_zero_at_the_start():
    model = _model()
    batch = collate(emt_structures("Cu", 3, 0), dtype=torch.float64)
    anchor = Anchor(model, "features", 2.5)
    node = _features(model, batch)
    start = anchor.feature_penalty(batch, node)
    assert float(start) == 0.0
    ref = node.detach().clone()
    _perturb(model)
    node = _features(model, batch)
    expected = 2.5 * float(((node - ref) ** 2).sum() / (ref ** 2).sum())
    penalty = anchor.feature_penalty(batch, node)
    assert float(penalty) == pytest.approx(expected, rel=1e-12) and expected > 0
    penalty.backward()                                     # the gradient reaches the trained backbone only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("backbone."))
    assert all(p.grad is None for p in anchor.reference.parameters())


def test_weight_penalty_is_l2_sp_over_the_trained_backbone():
    model = _model()
    for name, p in model.named_parameters():               # a frozen layer is no part of the anchor
        p.requires_grad_(name.startswith("backbone.") and not name.startswith("backbone.type_embedding"))
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    anchor = build_anchor(model, "weights", 0.5)
    assert float(anchor.weight_penalty(model)) == 0.0
    _perturb(model)
    drift = sum(float(((p - start[n]) ** 2).sum()) for n, p in model.named_parameters() if n in start)
    norm = sum(float((w ** 2).sum()) for w in start.values())
    assert float(anchor.weight_penalty(model)) == pytest.approx(0.5 * drift / norm, rel=1e-12)
    assert set(anchor.reference_weights) == set(start)


def test_bad_anchors_are_refused_by_name():
    assert build_anchor(_model(), "none", 1.0) is None
    with pytest.raises(ValueError, match="anchor must be one of .*'feature'"):
        check_anchor("feature", 1.0)
    with pytest.raises(ValueError, match="anchor_weight must be a finite number > 0"):
        check_anchor("weights", 0.0)
    frozen = _model()
    for name, p in frozen.named_parameters():
        p.requires_grad_(not name.startswith("backbone."))
    with pytest.raises(ValueError, match="no backbone parameter trains here"):
        Anchor(frozen, "features", 1.0)


def test_relative_drift_is_the_anchors_quantity_on_aligned_features():
    import numpy as np
    from mftcalc.analysis.metrics import relative_drift
    h0 = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert relative_drift(h0, h0) == 0.0
    assert relative_drift(h0, 2 * h0) == pytest.approx(1.0)                # as far as h0 is from zero
    assert relative_drift(h0, h0 + [[0.0, 1.0], [0.0, 0.0]]) == pytest.approx(1.0 / 5.0)
    with pytest.raises(ValueError, match="aligned arrays"):
        relative_drift(h0, h0[:1])


def test_reference_features_are_kept_per_item_and_equal_a_fresh_pass():
    """The frozen reference's features are computed once per item: a batch of kept items needs no forward pass,
    and reordered batches give what a fresh pass gives."""
    model = _model()
    structures = emt_structures("Cu", 2, 0) + emt_structures("Al", 2, 1)
    anchor = Anchor(model, "features", 1.0)
    first = collate(structures[:3], dtype=torch.float64)
    anchor.reference_features(first, keys=[("s", 0), ("s", 1), ("s", 2)])
    fresh = anchor.reference_features(collate([structures[2], structures[0]], dtype=torch.float64))
    calls = []
    anchor.reference.register_forward_hook(lambda *args: calls.append(1))
    kept = anchor.reference_features(collate([structures[2], structures[0]], dtype=torch.float64),
                                     keys=[("s", 2), ("s", 0)])
    assert not calls and torch.allclose(kept, fresh, rtol=0, atol=1e-12)
    mixed = collate([structures[3], structures[1]], dtype=torch.float64)
    anchor.reference_features(mixed, keys=[("s", 3), ("s", 1)])           # one new item: one pass, then kept
    assert len(calls) == 1 and ("s", 3) in anchor._cache
    anchor.cache_limit = 0
    other = collate([structures[0]], dtype=torch.float64)
    assert anchor.reference_features(other, keys=[("t", 0)]).shape[0] == structures[0].n_atoms
    assert ("t", 0) not in anchor._cache                                   # over the limit: computed, not kept
