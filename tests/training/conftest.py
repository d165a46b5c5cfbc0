"""Tiny labelled force-field data (ASE's EMT on rattled Cu and Al cells) and a tiny pretraining config."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from _helpers import emt_structures
from mftcalc.data.io import write_extxyz


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    write_extxyz(emt_structures("Cu", 24, 0), tmp_path / "cu.extxyz")
    write_extxyz(emt_structures("Al", 24, 1), tmp_path / "al.extxyz")
    cfg = {
        "datasets": [{"name": "cu", "path": str(tmp_path / "cu.extxyz"), "prob": 0.5, "batch_size": 4, "replay": 5},
                     {"name": "al", "path": str(tmp_path / "al.extxyz"), "prob": 0.5, "batch_size": 4, "replay": 5}],
        "preset": "tiny", "ff_hidden": [8], "steps": 8, "decay_steps": 2, "log_every": 1, "val_every": 4,
        "checkpoint_every": 1, "dtype": "float64", "out_dir": str(tmp_path / "run"),
        "state_path": str(tmp_path / "run" / "state.pt"), "model_out": str(tmp_path / "model.pt"),
        "progress": False,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
