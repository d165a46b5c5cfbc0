"""On a CUDA device the calculator, batched prediction and batched relaxation agree with the CPU (float64).

Skipped without CUDA (CI has none); run on a GPU machine with ``python -m pytest tests/unit/calculators/test_cuda.py``.
On CUDA the neighbour list takes the Triton backend (when triton is installed) and the angle block the plain-torch
reference, so these tests cover the GPU path end to end.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from _helpers import make_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.predict import predict
from mftcalc.relaxation.api import relax
from mftcalc.data import Structure

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _atoms(kind: str):
    atoms = molecule("CH3CH2OH") if kind == "molecule" else bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.mark.parametrize("kind", ["molecule", "crystal"])
def test_calculator_on_cuda_matches_cpu(kind: str) -> None:
    model = make_tiny_model()
    out = {}
    for device in ("cpu", "cuda"):
        atoms = _atoms(kind)
        atoms.calc = MFTCalculator(copy.deepcopy(model), device=device, dtype=torch.float64, dataset="a")
        out[device] = (atoms.get_potential_energy(), atoms.get_forces(),
                       atoms.get_stress() if kind == "crystal" else np.zeros(6), atoms.calc.get_property("gap", atoms))
    for cpu, cuda in zip(out["cpu"], out["cuda"]):
        np.testing.assert_allclose(cuda, cpu, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("optimizer", ["bfgs", "bfgs-internal"])
def test_batched_predict_and_relax_on_cuda_match_cpu(optimizer: str) -> None:
    model = make_tiny_model()
    structures = [Structure.from_ase(_atoms("molecule")), Structure.from_ase(molecule("CH4")),
                  Structure.from_ase(_atoms("crystal"))]
    preds = {d: predict(structures, copy.deepcopy(model), device=d, dtype=torch.float64, dataset="a")
             for d in ("cpu", "cuda")}
    for cpu, cuda in zip(preds["cpu"], preds["cuda"]):
        assert cpu.keys() == cuda.keys()
        for key in cpu:
            np.testing.assert_allclose(cuda[key], cpu[key], rtol=1e-9, atol=1e-9)
    molecules = structures[:2]
    relaxed = {d: relax(molecules, copy.deepcopy(model), fmax=0.05, steps=200, optimizer=optimizer, device=d,
                        dtype=torch.float64, dataset="a") for d in ("cpu", "cuda")}
    for cpu, cuda in zip(relaxed["cpu"], relaxed["cuda"]):
        assert cpu.converged and cuda.converged
        assert abs(cpu.steps - cuda.steps) <= 2          # the same path up to round-off in the last digits
        assert abs(cpu.energy - cuda.energy) < 1e-5
        np.testing.assert_allclose(cuda.properties["gap"], cpu.properties["gap"], atol=1e-5)
