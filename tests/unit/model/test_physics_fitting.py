"""Fitting of the dipole and ⟨R²⟩ heads (mftcalc.model.fitting) against values computed by hand, with ASE's unit
constants (an independent source of the bohr and the debye)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule

from mftcalc import keys as K
from mftcalc.data import Structure, collate
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset
from mftcalc.model.fitting import fit_heads
from mftcalc.model.mft_model import MFTModel

TRAIN = ["H2O", "CH4", "NH3", "C2H6", "HCN", "CH3OH", "CO2", "N2", "H2CO", "C2H4"]
#: per-element ⟨R²⟩ offsets (bohr²) of the synthetic labels with an element bias
OFFSETS = {1: 0.5, 6: 3.0, 7: 2.0, 8: 1.0}


def _model(head: HeadConfig) -> MFTModel:
    torch.manual_seed(0)
    return MFTModel(ModelConfig(backbone=backbone_preset("tiny"), heads={"p": head})).double().eval()


def _spread_bohr2(positions: np.ndarray) -> float:
    """Σ_i |r_i − r̄|² in bohr² (positions in Å), written out."""
    centred = positions - positions.mean(axis=0)
    return float((centred ** 2).sum()) / units.Bohr ** 2


def _labelled(value) -> list:
    rng = np.random.default_rng(0)
    out = []
    for name in TRAIN:
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.03, size=atoms.positions.shape)
        s = Structure.from_ase(atoms)
        out.append(s.with_labels(properties={"p": value(s)}))
    return out


def _predict(model: MFTModel, structure: Structure) -> float:
    return float(model(collate([structure], torch.float64), compute_forces=False, compute_stress=False)["p"][0].detach())


def test_fitted_r2_head_reproduces_the_spatial_extent_of_h2_in_bohr2():
    model = _model(HeadConfig(kind="r2", hidden=(8,), element_bias=False))
    with torch.no_grad():                              # per-atom weights w = 1 + 0.1·MLP = 1: the plain spread
        model.property_heads["p"].mlp.net[-1].weight.zero_()
        model.property_heads["p"].mlp.net[-1].bias.zero_()
    fit_heads(model, _labelled(lambda s: _spread_bohr2(s.positions)))
    assert float(model.property_heads["p"].scale) == pytest.approx(1.0, rel=1e-8)   # ASE: CODATA 2014 bohr
    h2 = Structure(positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]], numbers=[1, 1])
    expected = 2 * 0.37 ** 2 / units.Bohr ** 2             # 0.2738 Å² = 0.9778 bohr²
    assert _predict(model, h2) == pytest.approx(expected, rel=1e-7)
    assert expected == pytest.approx(0.97776, abs=1e-5)


def test_fitted_r2_head_with_element_bias_recovers_scale_and_offsets():
    model = _model(HeadConfig(kind="r2", hidden=(8,), element_bias=True))
    with torch.no_grad():
        model.property_heads["p"].mlp.net[-1].weight.zero_()
        model.property_heads["p"].mlp.net[-1].bias.zero_()

    def label(s: Structure) -> float:
        return 2.0 * _spread_bohr2(s.positions) + sum(OFFSETS[int(z)] for z in s.numbers)

    fit_heads(model, _labelled(label))
    head = model.property_heads["p"]
    assert float(head.scale) == pytest.approx(2.0, rel=1e-8)
    np.testing.assert_allclose([float(head.bias[z]) for z in OFFSETS], list(OFFSETS.values()), atol=1e-8)
    fresh = Structure.from_ase(molecule("CH3CH2OH"))                # not in the training set
    assert _predict(model, fresh) == pytest.approx(label(fresh), rel=1e-9)


def test_fitted_dipole_head_gives_the_dipole_of_its_neutralised_charges_in_debye():
    model = _model(HeadConfig(kind="dipole", unit="Debye", hidden=(8,)))
    fit_heads(model, _labelled(lambda s: 1.5))
    head = model.property_heads["p"]
    assert float(head.scale) == pytest.approx(0.1)                      # charges start small (0.1 e per unit)
    water = Structure.from_ase(molecule("H2O"))
    batch = collate([water], torch.float64)
    out = model(batch, compute_forces=False, compute_stress=False, features=True)
    charges = (head.mlp(out[K.NODE_FEATURES]).squeeze(1) * head.scale).detach().numpy()
    charges -= charges.mean()                                           # made neutral
    moment = np.abs(np.linalg.norm(charges @ water.positions)) / units.Debye     # e·Å -> debye
    assert float(out["p"][0].detach()) == pytest.approx(moment, rel=1e-6)
    moved = water.with_labels(positions=water.positions + [10.0, -3.0, 2.0])   # neutral: no origin dependence
    assert _predict(model, moved) == pytest.approx(moment, rel=1e-6)


def test_fitting_a_head_without_labels_says_so():
    from mftcalc.model.fitting import fit_property_head
    model = _model(HeadConfig(kind="dipole", hidden=(8,)))
    with pytest.raises(ValueError, match="no structure carries a label for property 'p'"):
        fit_property_head(model.property_heads["p"], [Structure.from_ase(molecule("H2O"))], "p", "dipole", False,
                          False)
