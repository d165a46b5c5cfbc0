"""Growing a trained model by identity-initialised layers (``mftcalc.model.grow``): the grown model predicts what
the base predicts (energies, forces, stress, properties), its new residual scales get gradients at once, and the
new layers' weights start learning once a scale moves."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mftcalc.data.batch import collate
from mftcalc.model.grow import grow_layers
from mftcalc.model.inference import predict_structures

from _helpers import make_tiny_model


def _all_outputs(model, structures):
    return predict_structures(model, structures, 0, compute_stress=True)


def test_grown_model_predicts_what_the_base_predicts(molecules, crystal):
    base = make_tiny_model()
    grown = grow_layers(base, 2).eval()
    assert grown.config.backbone.n_layers == base.config.backbone.n_layers + 2
    assert grown.metadata["grown_from"]["n_layers"] == base.config.backbone.n_layers
    structures = molecules + [crystal]
    for a, b in zip(_all_outputs(base, structures), _all_outputs(grown, structures)):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-10, atol=1e-10, err_msg=key)
    # the base is not modified, and the base's layers were copied exactly
    for name, p in base.named_parameters():
        assert torch.equal(p, dict(grown.named_parameters())[name])


def test_new_layers_learn_from_the_first_steps(molecules):
    base = make_tiny_model()
    grown = grow_layers(base, 1).train()
    new = grown.backbone.layers[-1]
    batch = collate(molecules, dtype=torch.float64, dataset=0, properties=[])
    out = grown(batch, compute_forces=True, compute_stress=False, compute_properties=False)
    loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
    loss.backward()
    assert float(new.res_node[2].grad.abs().sum()) > 0            # the message scale gets a gradient at once
    assert float(new.node_self.weight.grad.abs().sum()) == 0      # the weights behind a zero scale do not yet
    with torch.no_grad():
        for scale in new.res_node:
            scale.fill_(0.1)
    grown.zero_grad()
    out = grown(batch, compute_forces=True, compute_stress=False, compute_properties=False)
    (out["energy"].pow(2).sum() + out["forces"].pow(2).sum()).backward()
    assert float(new.node_self.weight.grad.abs().sum()) > 0


def test_engaged_growth_sets_the_new_scales_and_changes_the_predictions(molecules):
    base = make_tiny_model()
    grown = grow_layers(base, 2, residual_init=0.1).eval()
    for layer in list(grown.backbone.layers)[-2:]:
        for scale in layer.residual_scales():
            assert torch.all(scale == 0.1)
    for layer_base, layer_grown in zip(base.backbone.layers, grown.backbone.layers):
        for (name, p), q in zip(layer_base.named_parameters(), layer_grown.parameters()):
            assert torch.equal(p, q), name                         # the base's layers are copied as they are
    assert grown.metadata["grown_from"]["residual_init"] == 0.1
    e_base = _all_outputs(base, molecules)[0]["energy"]
    e_grown = _all_outputs(grown, molecules)[0]["energy"]
    assert abs(e_grown - e_base) > 1e-6                            # the new layers act from step 0
    batch = collate(molecules, dtype=torch.float64, dataset=0, properties=[])
    grown.train()
    out = grown(batch, compute_forces=True, compute_stress=False, compute_properties=False)
    (out["energy"].pow(2).sum() + out["forces"].pow(2).sum()).backward()
    assert float(grown.backbone.layers[-2].node_self.weight.grad.abs().sum()) > 0


def test_negative_residual_init_is_refused():
    with pytest.raises(ValueError, match="residual_init must be >= 0"):
        grow_layers(make_tiny_model(), 1, residual_init=-0.1)


def test_growing_by_nothing_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        grow_layers(make_tiny_model(), 0)


def test_widened_model_predicts_what_the_base_predicts(molecules, crystal):
    from mftcalc.model.grow import widen_backbone
    base = make_tiny_model()
    bb = base.config.backbone
    wide = widen_backbone(base, bb.n_dim + 8, bb.e_dim + 4, bb.a_dim + 2).eval()
    assert (wide.config.backbone.n_dim, wide.config.backbone.e_dim) == (bb.n_dim + 8, bb.e_dim + 4)
    assert wide.metadata["widened_from"]["n_dim"] == bb.n_dim
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in base.parameters())
    structures = molecules + [crystal]
    for a, b in zip(_all_outputs(base, structures), _all_outputs(wide, structures)):
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-10, atol=1e-10, err_msg=key)


def test_widened_channels_learn_from_the_first_step(molecules):
    from mftcalc.model.grow import widen_backbone
    base = make_tiny_model()
    n0 = base.config.backbone.n_dim
    wide = widen_backbone(base, n0 + 8, base.config.backbone.e_dim, base.config.backbone.a_dim).train()
    first = wide.backbone.layers[0]
    assert float(first.node_self.weight.detach()[n0:].abs().sum()) == 0          # rows producing new channels start at 0
    batch = collate(molecules, dtype=torch.float64, dataset=0, properties=[])
    out = wide(batch, compute_forces=True, compute_stress=False, compute_properties=False)
    (out["energy"].pow(2).sum() + out["forces"].pow(2).sum()).backward()
    assert float(first.node_self.weight.grad[n0:].abs().sum()) > 0      # ... and get gradients at once


def test_widening_refuses_narrower_or_equal_widths():
    from mftcalc.model.grow import widen_backbone
    base = make_tiny_model()
    bb = base.config.backbone
    with pytest.raises(ValueError, match="at least the model's"):
        widen_backbone(base, bb.n_dim - 1, bb.e_dim, bb.a_dim)
    with pytest.raises(ValueError, match="one of them larger"):
        widen_backbone(base, bb.n_dim, bb.e_dim, bb.a_dim)
