"""The applicability limit (mftcalc.model.applicability.training_score_limit) and its warning: a property handed out
for a structure whose ood_score exceeds the largest score of a training structure against the others warns once
(DomainWarning) on every path: the ASE calculator, predict (in this process and through a worker pool), relax; the
score itself asked alone does not; the card states the limit."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.distance import cdist

from _helpers import scored_gap_model
from mftcalc import predict, relax
from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.model_handle import DomainWarning, ModelHandle
from mftcalc.calculators.predict import predict_on
from mftcalc.data.structure import Structure
from mftcalc.model.applicability import KnnApplicabilityHead, training_score_limit
from mftcalc.model.card import model_card
from mftcalc.model.checkpoint import model_metadata, save_model

TRAIN = ["CH3OH", "C2H6", "CH3CH2OH", "CH3OCH3", "C3H8"]      # small saturated molecules, rattled
LIMIT_MATCH = r"ood_score \S+ \(beyond \S+, the largest score of a training structure against the others\)"


def _train(n: int = 30) -> list:
    out = []
    for k in range(n):
        atoms = molecule(TRAIN[k % len(TRAIN)])
        atoms.rattle(0.03, seed=k)
        out.append(Structure.from_ase(atoms))
    return out


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    model = scored_gap_model(_train())
    path = tmp_path_factory.mktemp("limit") / "scored.pt"
    save_model(model, path, model_metadata(model, elements=[1, 6, 7, 8, 14]))
    return path


def _far() -> Structure:
    """C60: no training structure is a fullerene."""
    return Structure.from_ase(molecule("C60"))


def test_limit_is_the_largest_leave_one_out_score(model_path):
    handle = ModelHandle.load(model_path, dtype=torch.float64)
    head = handle.module.property_heads["ood_score"]
    z = head.reference.numpy()
    d = cdist(z, z)
    np.fill_diagonal(d, np.inf)
    loo = np.sort(d, axis=1)[:, :5].mean(1) / float(head.scale)
    assert training_score_limit(head) == pytest.approx(loo.max(), rel=1e-12)
    assert np.median(loo) == pytest.approx(1.0, rel=1e-12)       # the scale is the median of the same scores
    assert handle.applicability_limit("ood_score") == pytest.approx(loo.max(), rel=1e-12)
    assert np.isnan(training_score_limit(KnnApplicabilityHead(8)))  # not fitted: no limit


def test_calculator_warns_once_for_an_unfamiliar_structure(model_path):
    calc = MFTCalculator(model_path, dtype=torch.float64)
    limit = calc.handle.applicability_limit("ood_score")
    near = _train(1)[0].to_ase()
    far = molecule("C60")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        assert calc.get_property("ood_score", near) <= limit
        calc.get_property("gap", near)                              # like the training set: silent
        assert calc.get_property("ood_score", far) > limit           # the score alone: silent
    with pytest.warns(DomainWarning, match=LIMIT_MATCH + r".* property heads \['gap'\]"):
        calc.get_property("gap", far)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        again = molecule("C60")
        again.rattle(0.05, seed=1)
        assert calc.get_property("ood_score", again) > limit
        calc.get_property("gap", again)                               # once per calculator


def test_an_element_no_training_structure_had_is_named(model_path):
    silane = molecule("SiH4")                        # Si is a model element, but no property-training structure had it
    calc = MFTCalculator(model_path, dtype=torch.float64)
    with pytest.warns(DomainWarning, match="ood_score inf .it holds an element no property-training structure had"):
        calc.get_property("gap", silane)


def test_predict_and_relax_warn_even_when_the_score_is_not_asked_for(model_path):
    items = _train(3) + [_far()]
    with pytest.warns(DomainWarning, match=r"C60 has ood_score"):
        rows = predict(items, model_path, properties=["gap"], dtype=torch.float64)
    assert [sorted(r) for r in rows] == [["energy", "gap"]] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        predict(items, model_path, properties=["ood_score"], dtype=torch.float64)   # only the score: silent
        predict(items[:3], model_path, properties=["gap"], dtype=torch.float64)
    with pytest.warns(DomainWarning, match=LIMIT_MATCH):
        relax([_far()], model_path, steps=2, dtype=torch.float64)


class _InProcessPool:
    """A stand-in for WorkerPool: runs the task here on a second handle whose warnings are silenced, as a worker's
    are."""

    def __init__(self, path):
        self.handle = ModelHandle.load(path, dtype=torch.float64)
        self._worker = ModelHandle.load(path, dtype=torch.float64)

    def map(self, task, structures, kwargs, chunk=None, on_done=None, largest=64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DomainWarning)
            return task(self._worker, list(structures), kwargs)


def test_a_worker_pool_warns_in_the_calling_process(model_path):
    pool = _InProcessPool(model_path)
    with pytest.warns(DomainWarning, match=LIMIT_MATCH):
        rows = predict_on(pool, _train(2) + [_far()], properties=["gap"])
    assert [sorted(r) for r in rows] == [["energy", "gap"]] * 3     # the score was asked for the warning, dropped
    rows = predict_on(_InProcessPool(model_path), _train(2), properties=None)
    assert "ood_score" in rows[0]


def test_card_states_the_limit(model_path):
    limit = ModelHandle.load(model_path, dtype=torch.float64).applicability_limit("ood_score")
    card = model_card(model_path)
    assert f"to 30 training structures, about 1 for a typical one; above {limit:.3g}" in card
