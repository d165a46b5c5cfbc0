"""Refitting a force-field head's per-element energy shift to the model's residuals (deepmd-kit's change-bias):
it removes a constant per-element offset exactly, leaves forces and other datasets alone, and pretraining
exports the refitted model while its training state keeps the trained shifts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from mftcalc.data.io import write_extxyz
from mftcalc.model.checkpoint import load_model, read_checkpoint
from mftcalc.model.config import ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.fitting import fit_forcefield_shift, refit_forcefield_shift
from mftcalc.model.inference import predict_structures
from mftcalc.model.mft_model import MFTModel
from mftcalc.training.evaluate import validation_metrics
from mftcalc.training.pretrain import PretrainConfig, load_sources, pretrain

from _helpers import emt_structures


def _model() -> MFTModel:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone_preset("tiny"), heads={"forcefield": default_forcefield_head(2, (8,))},
                      datasets=["a", "b"])
    return MFTModel(cfg).double()


def _energies_forces(model, structures, dataset):
    out = predict_structures(model, structures, dataset, compute_stress=False)
    return np.array([float(p["energy"]) for p in out]), np.concatenate([p["forces"] for p in out])


def test_refit_removes_a_per_element_offset_and_keeps_forces():
    structures = emt_structures("Cu", 5, 0) + emt_structures("Al", 7, 1)      # odd counts: unique medians
    model = _model()
    fit_forcefield_shift(model.ff_heads["forcefield"], structures, [1] * len(structures))
    refit_forcefield_shift(model, structures, 1)                              # the per-atom median optimum
    shift = model.ff_heads["forcefield"].shift
    e_opt, f_opt = _energies_forces(model, structures, 1)
    optimum, other = shift[1].clone(), shift[0].clone()

    shift[1, 29] += 0.3                                                       # Cu +0.3 eV/atom, Al −0.2
    shift[1, 13] -= 0.2
    stats = refit_forcefield_shift(model, structures, 1)
    e_new, f_new = _energies_forces(model, structures, 1)
    assert torch.allclose(shift[1], optimum, atol=1e-9)
    assert np.allclose(e_new, e_opt, atol=1e-8)
    assert np.array_equal(f_new, f_opt)                                       # a shift never moves forces
    assert torch.equal(shift[0], other)                                       # other datasets untouched
    assert stats["n"] == 12 and stats["mae_after"] < stats["mae_before"]
    assert stats["mae_before"] - stats["mae_after"] > 0.2                      # offsets of 0.2-0.3 eV/atom gone


def test_refit_is_robust_to_an_outlier():
    """One structure 50 eV/atom off moves the median fit by at most one order statistic of the clean residuals;
    a least-squares fit would move by 50/9 eV/atom."""
    structures = emt_structures("Cu", 9, 0)
    model = _model()
    fit_forcefield_shift(model.ff_heads["forcefield"], structures, [0] * len(structures))
    refit_forcefield_shift(model, structures, 0)
    clean = model.ff_heads["forcefield"].shift[0, 29].item()
    bad = structures[:8] + [structures[8].with_labels(energy=structures[8].energy + 50 * structures[8].n_atoms)]
    refit_forcefield_shift(model, bad, 0)
    assert abs(model.ff_heads["forcefield"].shift[0, 29].item() - clean) < 0.02


def test_refit_refuses_a_dataset_without_energies():
    s = emt_structures("Cu", 2, 0)
    with pytest.raises(ValueError, match="no structure with an energy"):
        refit_forcefield_shift(_model(), [x.with_labels(energy=None) for x in s], 0)


def test_pretraining_exports_the_refitted_model_and_keeps_its_state(tmp_path):
    write_extxyz(emt_structures("Cu", 20, 0), tmp_path / "cu.extxyz")
    write_extxyz(emt_structures("Al", 20, 1), tmp_path / "al.extxyz")
    cfg = {"datasets": [{"name": "cu", "path": str(tmp_path / "cu.extxyz"), "batch_size": 4, "replay": 0},
                        {"name": "al", "path": str(tmp_path / "al.extxyz"), "batch_size": 4, "replay": 0}],
           "preset": "tiny", "ff_hidden": [8], "steps": 8, "decay_steps": 4, "val_every": 8,
           "checkpoint_every": 4, "dtype": "float64", "out_dir": str(tmp_path / "run"),
           "state_path": str(tmp_path / "run/state.pt"), "model_out": str(tmp_path / "pre.pt"), "progress": False}
    (tmp_path / "pre.yaml").write_text(yaml.safe_dump(cfg))
    card = pretrain(PretrainConfig.from_yaml(tmp_path / "pre.yaml"))
    assert set(card["energy_shift_refit"]) == {"cu", "al"}
    exported = read_checkpoint(tmp_path / "pre.pt")["state_dict"]["ff_heads.forcefield.shift"]
    trained = torch.load(tmp_path / "run/state.pt", weights_only=False)["model"]["ff_heads.forcefield.shift"]
    assert not torch.equal(exported, trained)
    # the card's validation is the exported model's, not the trained one's
    _, val_sources, _ = load_sources(PretrainConfig.from_yaml(tmp_path / "pre.yaml"))
    expected = validation_metrics(load_model(tmp_path / "pre.pt", torch.float64), val_sources)
    assert expected and all(card["validation"][k] == pytest.approx(v, rel=1e-9) for k, v in expected.items())
    # off: the exported shifts are the trained ones
    cfg.update(refit_energy_shift=False, model_out=str(tmp_path / "plain.pt"))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(cfg))
    card = pretrain(PretrainConfig.from_yaml(tmp_path / "plain.yaml"))           # resumes at step 8: no steps
    assert card["energy_shift_refit"] == {}
    plain = read_checkpoint(tmp_path / "plain.pt")["state_dict"]["ff_heads.forcefield.shift"]
    assert torch.equal(plain, trained)
