"""Shared fixtures: small structures and a tiny model (float64) for physics tests."""
from __future__ import annotations

import os

import torch

# Triton picks its CPU interpreter at import time: without CUDA, the Triton neighbour-list kernels (the GPU path)
# are tested on CPU tensors through it (tests/kernels), so it is chosen here, before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
from ase.build import bulk, molecule

from _helpers import make_tiny_model
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
