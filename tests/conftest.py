"""Shared fixtures: small structures and a tiny model (float64) for physics tests."""
from __future__ import annotations

import os
from pathlib import Path

import torch

# Triton picks its CPU interpreter at import time: without CUDA, the Triton neighbour-list kernels (the GPU path)
# are tested on CPU tensors through it (tests/kernels), so it is chosen here, before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
from ase.build import bulk, molecule

import yaml

from _helpers import emt_structures, make_tiny_model
from mftcalc.data.io import write_extxyz
from mftcalc.data import Structure
from mftcalc.model.mft_model import MFTModel

@pytest.fixture
def tiny_model() -> MFTModel:
    return make_tiny_model()


@pytest.fixture
def molecules() -> list:
    rng = np.random.default_rng(0)
    out = []
    for name in ["CH3CH2OH", "C6H6", "H2O", "CH4"]:
        atoms = molecule(name)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(Structure.from_ase(atoms))
    return out


@pytest.fixture
def crystal() -> Structure:
    atoms = bulk("Si", "diamond", a=5.43, cubic=False)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 1.0, 0.03], [0.01, 0.0, 1.0]]),
                   scale_atoms=True)
    atoms.rattle(0.05, seed=1)
    return Structure.from_ase(atoms)


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration (subprocesses, QM9, shipped weights, process pools) carry the ``integration``
    mark: ``-m "not integration"`` runs the fast unit tests alone."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)


# a tiny labelled force-field set and pretraining config (unit and integration training tests share it)
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


@pytest.fixture
def stiff_model_file(tmp_path):
    """The tiny model with a 40x stiffer force-field head (relaxations take many steps), as a checkpoint."""
    from _helpers import TINY_DOMAINS
    from mftcalc.model.checkpoint import model_metadata, save_model
    model = make_tiny_model()
    with torch.no_grad():
        model.ff_heads["ff"].scale.fill_(40.0)
    path = tmp_path / "stiff.pt"
    save_model(model, path, model_metadata(model, elements=[1, 6, 7, 8, 14], dataset_domains=TINY_DOMAINS))
    return path


@pytest.fixture(scope="module")
def tiny_committee(tmp_path_factory) -> list:
    """Three tiny models of seeds 0, 1, 2 saved as checkpoints (paths): a committee whose members disagree."""
    from _helpers import save_tiny_model
    folder = tmp_path_factory.mktemp("committee")
    return [str(save_tiny_model(folder / f"m{k}.pt", seed=k)) for k in range(3)]


@pytest.fixture(scope="session")
def triton_device() -> str:
    """Where the Triton kernels run: CUDA when present, else CPU through Triton's interpreter (slow: few cases)."""
    from mftcalc.kernels import _triton
    error = _triton.import_error()
    if error is not None:
        pytest.skip(f"triton not installed ({error}); pip install 'mftcalc[gpu]'")
    if torch.cuda.is_available():
        return "cuda"
    if not _triton.interpreting():
        pytest.skip("no CUDA and TRITON_INTERPRET is not set (tests/conftest.py sets it before triton is imported)")
    return "cpu"
