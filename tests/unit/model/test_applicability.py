"""The applicability score: monotone in the distance from the training features, about 1 inside them, inf for an
element the training set never had, and exported with the model."""
from __future__ import annotations

import numpy as np
import torch

from mftcalc.model.applicability import KnnApplicabilityHead, fit_applicability


def _score(head, node, numbers):
    batch = torch.zeros(node.shape[0], dtype=torch.int64)
    _, score = head(node, numbers, batch, torch.zeros(node.shape[0], 3), torch.zeros(1, dtype=torch.int64), 1,
                    torch.zeros(1, 0))
    return float(score[0])


def test_score_grows_with_distance_and_flags_unseen_elements():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 8))
    head = KnnApplicabilityHead(8).double()
    fit_applicability(head, train, [np.array([1, 6])] * 300)
    numbers = torch.tensor([6, 1])
    direction = torch.tensor(rng.normal(size=8))
    direction /= direction.norm()
    scores = [_score(head, (t * direction).repeat(2, 1), numbers) for t in (0.0, 2.0, 4.0, 8.0, 16.0)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    inside = [_score(head, torch.tensor(row).repeat(2, 1), numbers) for row in rng.normal(size=(50, 8))]
    assert 0.7 < np.median(inside) < 1.5                      # typical training-like points score about 1
    assert np.isinf(_score(head, torch.zeros(2, 8, dtype=torch.float64), torch.tensor([6, 8])))   # O unseen


def test_reference_is_resized_on_load_and_scripts():
    head = KnnApplicabilityHead(4)
    fit_applicability(head, np.random.default_rng(1).normal(size=(30, 4)), [np.array([1])] * 30)
    fresh = KnnApplicabilityHead(4)
    fresh.load_state_dict(head.state_dict())
    assert fresh.reference.shape == (30, 4)
    scripted = torch.jit.script(fresh)
    node = torch.randn(3, 4)
    numbers = torch.tensor([1, 1, 1])
    batch = torch.tensor([0, 0, 1])
    args = (node, numbers, batch, torch.zeros(3, 3), torch.zeros(2, dtype=torch.int64), 2, torch.zeros(2, 0))
    torch.testing.assert_close(scripted(*args)[1], fresh(*args)[1])
