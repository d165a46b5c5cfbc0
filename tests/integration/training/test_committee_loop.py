"""The README's committee recipe end to end: one config trained from a prior with two seeds (``mftcalc train
--init ... --set seed=k ...``), then ``mftcalc model-devi`` over held-out frames with reference forces."""
from __future__ import annotations

import numpy as np
import yaml

from _helpers import emt_structures
from mftcalc.cli import main
from mftcalc.data.io import write_extxyz


def test_members_trained_with_two_seeds_give_a_model_deviation(tiny_config, tmp_path, capsys):
    cfg = yaml.safe_load(tiny_config.read_text())
    cfg["datasets"] = cfg["datasets"][:1]                                  # the prior: Cu only
    cfg.update(steps=4, val_every=4, replay=False)
    prior_cfg = tmp_path / "prior.yaml"
    prior_cfg.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(prior_cfg), "--device", "cpu"]) == 0
    prior = cfg["model_out"]
    write_extxyz(emt_structures("Cu", 12, 7), tmp_path / "mine.extxyz")
    mine = {**cfg, "datasets": [{"name": "cu_mine", "path": str(tmp_path / "mine.extxyz"), "prob": 1.0,
                                 "batch_size": 4, "init_from": "cu"}]}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(mine))
    for k in (0, 1):
        assert main(["train", str(tmp_path / "mine.yaml"), "--init", prior, "--device", "cpu", "--set", f"seed={k}",
                     f"out_dir={tmp_path}/runs/m{k}", f"state_path={tmp_path}/runs/m{k}/state.pt",
                     f"model_out={tmp_path}/m{k}.pt"]) == 0
    held = emt_structures("Cu", 4, 9)                                       # EMT forces as the reference
    write_extxyz(held, tmp_path / "held.extxyz")
    capsys.readouterr()
    assert main(["model-devi", str(tmp_path / "held.extxyz"), "-m", f"{tmp_path}/m0.pt", f"{tmp_path}/m1.pt",
                 "-o", str(tmp_path / "md.out"), "--dataset", "cu_mine"]) == 0
    table = np.loadtxt(tmp_path / "md.out")
    assert table.shape == (4, 8) and (table[:, 4] > 0).all()               # the seeds disagree on every frame
    assert "reference forces on 4 structures" in capsys.readouterr().out
