"""The exponential moving average of the weights (``ema_decay``): validated beside the raw weights, exported,
carried through a resume, and stated when switched on mid-run."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from mftcalc.model.checkpoint import load_model
from mftcalc.training.pretrain import PretrainConfig, pretrain


def _ema_weights(state_path: Path) -> dict:
    state = torch.load(state_path, weights_only=False)
    return {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}


def test_ema_is_validated_beside_the_raw_weights_and_exported(tiny_config):
    cfg = PretrainConfig.from_yaml(tiny_config, {"ema_decay": 0.5, "refit_energy_shift": False})
    pretrain(cfg)
    with open(Path(cfg.out_dir) / "val.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["step"]) for r in rows] == [4.0, 8.0]
    raw, avg = float(rows[-1]["val/cu/f_mae"]), float(rows[-1]["ema/val/cu/f_mae"])
    assert raw > 0 and avg > 0 and raw != avg                    # two sets of weights, both validated
    ema = _ema_weights(Path(cfg.state_path))
    trained = torch.load(cfg.state_path, weights_only=False)["model"]
    exported = load_model(cfg.model_out, dtype=torch.float64).state_dict()
    differs = [k for k in ema if not torch.equal(ema[k], trained[k])]
    assert differs, "the average should differ from the last weights after 8 steps"
    for k in ema:                                                 # model_out holds the average
        assert torch.allclose(exported[k], ema[k]), k
    # and its card states the average's validation errors, not the trained weights'
    card = load_model(cfg.model_out).metadata["pretraining"]["validation"]
    assert card["val/cu/f_mae"] == pytest.approx(avg, rel=1e-12) and not any(k.startswith("ema/") for k in card)


def test_ema_resumes_to_the_same_average(tiny_config, tmp_path):
    whole = PretrainConfig.from_yaml(tiny_config, {"ema_decay": 0.5})
    pretrain(whole)
    split = PretrainConfig.from_yaml(tiny_config, {"ema_decay": 0.5, "out_dir": str(tmp_path / "b"),
                                                   "state_path": str(tmp_path / "b" / "state.pt"),
                                                   "model_out": str(tmp_path / "b.pt")})
    pretrain(split, stop_at=4)
    pretrain(split)
    a, b = _ema_weights(Path(whole.state_path)), _ema_weights(Path(split.state_path))
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=0, atol=1e-12), k


def test_ema_switched_on_at_a_resume_is_stated_and_averages_from_there(tiny_config):
    """The average starts at the resume: after its first step it is those weights, after the second
    d · w₁ + (1 − d) · w₂ (torch's AveragedModel with get_ema_multi_avg_fn)."""
    cfg = PretrainConfig.from_yaml(tiny_config, {"steps": 4})
    pretrain(cfg)
    pretrain(PretrainConfig.from_yaml(tiny_config, {"steps": 5, "ema_decay": 0.9}))
    log = (Path(cfg.out_dir) / "resume.log").read_text()
    assert "ema_decay: 0.0 -> 0.9" in log and "the weight average starts at this resume" in log
    first = torch.load(cfg.state_path, weights_only=False)["model"]
    ema = _ema_weights(Path(cfg.state_path))
    assert all(torch.equal(ema[k], first[k]) for k in ema)
    pretrain(PretrainConfig.from_yaml(tiny_config, {"steps": 6, "ema_decay": 0.9}))
    second = torch.load(cfg.state_path, weights_only=False)["model"]
    ema = _ema_weights(Path(cfg.state_path))
    moved = [k for k in ema if not torch.equal(first[k], second[k])]
    assert moved
    for k in moved:
        assert torch.allclose(ema[k], 0.9 * first[k] + 0.1 * second[k], rtol=0, atol=1e-12), k


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_outside_0_1_is_refused(tiny_config, decay):
    with pytest.raises(ValueError, match="ema_decay must be in"):
        PretrainConfig.from_yaml(tiny_config, {"ema_decay": decay})
