"""``mftcalc change-bias``: re-references one dataset's energies to the user's data, leaves forces and the other
datasets alone, records itself in the card, and refuses what it cannot do with a message naming the fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mftcalc.cli import main
from mftcalc.data.io import write_extxyz
from mftcalc.model.card import model_card
from mftcalc.model.checkpoint import load_model, model_metadata, save_model
from mftcalc.model.config import ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.inference import predict_structures
from mftcalc.model.mft_model import MFTModel

from _helpers import emt_structures


@pytest.fixture()
def model_and_data(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone_preset("tiny"), heads={"forcefield": default_forcefield_head(2, (8,))},
                      datasets=["a", "b"])
    model = MFTModel(cfg)
    save_model(model, tmp_path / "m.pt", model_metadata(model, [29]))
    data = emt_structures("Cu", 9, 0)
    offset = [s.with_labels(energy=s.energy + 2.0 * s.n_atoms) for s in data]     # another DFT reference
    write_extxyz(offset, tmp_path / "mine.extxyz")
    return tmp_path, offset


def test_change_bias_rereferences_one_dataset(model_and_data, capsys):
    tmp, data = model_and_data
    assert main(["change-bias", str(tmp / "m.pt"), str(tmp / "mine.extxyz"), "--dataset", "b",
                 "-o", str(tmp / "out.pt")]) == 0
    assert "9 structures fitted" in capsys.readouterr().out
    before, after = load_model(tmp / "m.pt"), load_model(tmp / "out.pt")
    e = np.array([s.energy for s in data])
    mae = [np.mean(np.abs(e - [float(p["energy"]) for p in predict_structures(m, data, 1, compute_forces=False,
                                                                               compute_stress=False)]))
           for m in (before, after)]
    assert mae[1] < 0.1 * mae[0]
    f0 = np.concatenate([p["forces"] for p in predict_structures(before, data, 1, compute_stress=False)])
    f1 = np.concatenate([p["forces"] for p in predict_structures(after, data, 1, compute_stress=False)])
    assert np.array_equal(f0, f1)
    assert torch.equal(before.ff_heads["forcefield"].shift[0], after.ff_heads["forcefield"].shift[0])
    assert "Energy shift refitted** (`mftcalc change-bias`): dataset `b`" in model_card(tmp / "out.pt")


@pytest.mark.parametrize("case, message", [
    ("same_output", "give -o another path than the input"),
    ("bad_dataset", "has no force-field dataset 'zz'; its datasets: a, b"),
    ("new_element", "elements Al were never in"),
    ("no_energy", "no structure carries an energy"),
])
def test_change_bias_refuses_with_the_fix(model_and_data, capsys, case, message):
    tmp, data = model_and_data
    model, dataset, out, files = str(tmp / "m.pt"), "b", str(tmp / "out.pt"), [str(tmp / "mine.extxyz")]
    if case == "same_output":
        out = model
    elif case == "bad_dataset":
        dataset = "zz"
    elif case == "new_element":
        write_extxyz(emt_structures("Al", 2, 1), tmp / "al.extxyz")
        files = [str(tmp / "al.extxyz")]
    elif case == "no_energy":
        write_extxyz([s.with_labels(energy=None, forces=None, stress=None, properties={"x": 1.0})
                      for s in data[:2]], tmp / "noe.extxyz")
        files = [str(tmp / "noe.extxyz")]
    with pytest.raises(SystemExit) as info:
        main(["change-bias", model, *files, "--dataset", dataset, "-o", out])
    assert message in str(info.value) + capsys.readouterr().err
