"""Learning-rate schedule (with a restarted decay) and the scaled property loss."""
import math

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
