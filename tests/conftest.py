"""Shared fixtures: small structures and a tiny model (float64) for physics tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mftcalc.data import Structure
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.mft_model import MFTModel

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skips the test when the shared folder is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is only beside the repo in the dev/CI layout)")
    return path


def make_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, **backbone) -> MFTModel:
    """A tiny random model with a force-field head (2 datasets) and one scalar, dipole and ⟨R²⟩ head each."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone_preset("tiny", **backbone),
                      heads={"ff": default_forcefield_head(2, hidden=(16, 16)),
                             "gap": HeadConfig(kind="scalar", unit="Hartree", hidden=(16,)),
                             "mu": HeadConfig(kind="dipole", unit="Debye", hidden=(16,)),
                             "r2": HeadConfig(kind="r2", unit="bohr^2", hidden=(16,))},
                      datasets=["a", "b"])
    model = MFTModel(cfg)
    # non-trivial residual scales so every block matters in the tests (drawn before the dtype cast)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "res_" in name:
                p.uniform_(0.3, 0.7)
    return model.to(dtype).eval()


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
