"""benchmarks/feature_drift.py: the weight drift counts the backbone's floating-point tensors only."""
from __future__ import annotations

import pytest
import torch

from tests._helpers import load_benchmark


def test_weight_drift_is_relative_over_the_backbone():
    script = load_benchmark("feature_drift")
    prior = {"backbone.a": torch.tensor([3.0, 4.0]), "backbone.steps": torch.tensor([7]),
             "ff_heads.w": torch.tensor([1.0])}
    tuned = {"backbone.a": torch.tensor([3.0, 5.0]), "backbone.steps": torch.tensor([9]),
             "ff_heads.w": torch.tensor([100.0])}
    assert script.weight_drift(prior, tuned) == pytest.approx(1.0 / 25.0)
    assert script.weight_drift(prior, prior) == 0.0
