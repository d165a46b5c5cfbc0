"""Learning-rate schedule (with a restarted decay) and the scaled property loss."""
import math

import numpy as np
import pytest
import torch

from mftcalc import keys as K
from mftcalc.training.losses import property_loss
from mftcalc.training.schedule import ExponentialLR


def test_schedule_reaches_lr_end_and_is_staircase():
    lr = ExponentialLR(1e-3, 1e-5, num_steps=1000, decay_steps=100)
    assert lr(0) == lr(99) == 1e-3
    assert lr(100) < 1e-3
    assert math.isclose(lr(1000), 1e-5, rel_tol=1e-9)


def test_schedule_restart_holds_lr0_then_decays_over_the_rest():
    lr = ExponentialLR(9e-4, 1e-5, num_steps=14000, decay_steps=200, start_step=6684)
    assert lr(0) == lr(6684) == lr(6883) == 9e-4
    assert lr(6884) < 9e-4
    assert 1e-5 <= lr(13999) < 1.1e-5    # the last decay before num_steps is within one stair of lr_end
    with pytest.raises(ValueError, match="start_step"):
        ExponentialLR(1e-3, 1e-5, num_steps=100, decay_steps=10, start_step=100)


def test_property_loss_scale_divides_errors_but_not_logged_mae():
    name = "gap"
    batch = {K.property_key(name): torch.tensor([1.0, 2.0, 3.0]),
             K.has_property_key(name): torch.tensor([True, True, False])}
    pred = {name: torch.tensor([1.5, 1.0, 0.0])}
    raw, parts_raw = property_loss(pred, batch, name)
    scaled, parts_scaled = property_loss(pred, batch, name, scale=0.5)
    assert math.isclose(float(raw), (0.25 + 1.0) / 2)
    assert math.isclose(float(scaled), float(raw) / 0.25)
    assert parts_raw["mae"] == parts_scaled["mae"] == pytest.approx(0.75)


@pytest.mark.parametrize("beta, scale, reduction", [(1.0, 1.0, "mean"), (2.0, 1.0, "mean"), (1.0, 0.5, "mean"),
                                                    (1.0, 1.0, "sum")])
def test_smooth_l1_property_loss_is_huber_of_the_scaled_errors(beta, scale, reduction):
    """smooth_l1(x) = x²/(2β) for |x| < β, |x| − β/2 beyond, of the scaled errors x = (pred − label)/scale over
    the labelled structures; the mean divides by their count. Hand values at errors 0.5 and −2 (one unlabelled)."""
    name = "gap"
    batch = {K.property_key(name): torch.tensor([1.0, 2.0, 3.0]),
             K.has_property_key(name): torch.tensor([True, True, False])}
    pred = {name: torch.tensor([1.5, 0.0, 9.0], requires_grad=True)}
    loss, parts = property_loss(pred, batch, name, kind="smooth_l1", beta=beta, scale=scale, reduction=reduction)

    def huber(x: float) -> float:
        return x * x / (2 * beta) if abs(x) < beta else abs(x) - beta / 2

    terms = [huber(0.5 / scale), huber(-2.0 / scale)]
    expected = sum(terms) / (2 if reduction == "mean" else 1)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-7)
    assert {(1.0, 1.0, "mean"): 0.8125, (2.0, 1.0, "mean"): 0.53125, (1.0, 0.5, "mean"): 2.0,
            (1.0, 1.0, "sum"): 1.625}[(beta, scale, reduction)] == pytest.approx(expected)
    assert parts["mae"] == pytest.approx(1.25) and parts["loss"] == pytest.approx(expected, rel=1e-7)
    loss.backward()                        # gradient: x/β inside, sign(x) outside, divided by scale (and count)
    grads = [min(max(x / beta, -1.0), 1.0) / scale for x in (0.5 / scale, -2.0 / scale)]
    count = 2 if reduction == "mean" else 1
    np.testing.assert_allclose(pred[name].grad.numpy(), np.array(grads + [0.0]) / count, rtol=1e-6)
