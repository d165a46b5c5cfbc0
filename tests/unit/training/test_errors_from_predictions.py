"""``errors_from_predictions``: the one error core of ``mftcalc evaluate`` and training validation."""
from __future__ import annotations

import numpy as np
import pytest

from mftcalc.data.structure import Structure
from mftcalc.training.evaluate import errors_from_predictions


def _pair(n, energy_offset, force_offset, labels=("energy", "forces")):
    rng = np.random.default_rng(n)
    forces = rng.normal(size=(n, 3))
    s = Structure(positions=rng.normal(size=(n, 3)) * 3, numbers=np.full(n, 6),
                  energy=-5.0 * n if "energy" in labels else None,
                  forces=forces if "forces" in labels else None,
                  stress=np.eye(3) * 0.01 if "stress" in labels else None)
    pred = {"energy": -5.0 * n + energy_offset * n, "forces": forces + force_offset, "stress": np.eye(3) * 0.01 + 0.002}
    return s, pred


def test_known_offsets_give_their_errors():
    pairs = [_pair(3, 0.01, 0.1), _pair(5, -0.03, -0.3)]
    errors, arrays = errors_from_predictions([p[0] for p in pairs], [p[1] for p in pairs])
    assert errors["e_mae_per_atom"] == pytest.approx(0.02)
    assert errors["e_rmse_per_atom"] == pytest.approx(np.sqrt((0.01 ** 2 + 0.03 ** 2) / 2))
    assert errors["f_mae"] == pytest.approx((9 * 0.1 + 15 * 0.3) / 24)
    assert errors["f_rmse"] == pytest.approx(np.sqrt((9 * 0.01 + 15 * 0.09) / 24))
    assert "s_mae" not in errors
    assert arrays["e_ref"].shape == (2,) and arrays["f_pred"].shape == (24,)


def test_only_labelled_quantities_are_scored():
    pairs = [_pair(3, 0.01, 0.1, labels=("forces", "stress")), _pair(4, 0.02, 0.2, labels=("energy",))]
    errors, arrays = errors_from_predictions([p[0] for p in pairs], [p[1] for p in pairs])
    assert errors["e_mae_per_atom"] == pytest.approx(0.02)            # the second structure's energy only
    assert errors["f_mae"] == pytest.approx(0.1)                       # the first one's forces only
    assert errors["s_mae"] == pytest.approx(0.002)                     # every component offset by 0.002
    assert arrays["f_ref"].shape == (9,)
    none, _ = errors_from_predictions([pairs[0][0].with_labels(forces=None, stress=None)], [pairs[0][1]])
    assert none == {}
