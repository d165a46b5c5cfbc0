"""Stress of slabs (periodic in two directions, a cell vector across the vacuum): σ = (1/V) ∂E/∂ε over the cell's
volume, as plane-wave DFT codes give it. It passes the finite-strain and rotation checks, equals the stress of the
same slab made periodic across a vacuum wider than the cutoff, lets ASE's masked FrechetCellFilter relax the
in-plane cell, and a cell without a volume gets a message naming the fix, not a number."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import fcc111
from ase.calculators.calculator import PropertyNotImplementedError
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from mftcalc.calculators import MFTCalculator
from mftcalc.data.structure import Structure
from mftcalc.testing import check_model

MODELS = Path(__file__).resolve().parents[3] / "models"


def _slab(a: float = 3.6, layers: int = 3):
    slab = fcc111("Cu", (1, 1, layers), a=a, vacuum=6.0)    # 12 Å of vacuum across z, the cutoff is 6 Å
    slab.rattle(0.02, seed=1)
    slab.info["dataset"] = "cu_ace21"
    return slab


def test_slab_stress_passes_finite_strain_rotation_and_export(tiny_model):
    slab = fcc111("C", (1, 1, 2), a=2.6, vacuum=3.0)
    slab.rattle(0.05, seed=0)
    assert Structure.from_ase(slab).stress_defined
    report = check_model(tiny_model, structures=[slab], checks=["stress_fd", "rotation", "translation", "export"],
                          dataset="a")
    assert report.passed, report.failures
    assert any(r.check == "stress_fd" and r.status == "pass" for r in report.results)
    slab.calc = MFTCalculator(tiny_model, dataset="a", dtype=torch.float64)
    assert np.abs(slab.get_stress()).max() > 1e-5                 # a stress worth checking (the fd error: ~1e-12)


def test_slab_stress_equals_the_fully_periodic_slab_across_wide_vacuum():
    calc = MFTCalculator(MODELS / "pretrained.pt", dtype=torch.float64)
    slab = _slab()
    closed = slab.copy()
    closed.pbc = True                                          # no interaction crosses 12 Å of vacuum
    slab.calc, closed.calc = calc, MFTCalculator(MODELS / "pretrained.pt", dtype=torch.float64)
    assert slab.get_potential_energy() == pytest.approx(closed.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(slab.get_stress(), closed.get_stress(), atol=1e-10)
    assert np.abs(slab.get_stress()[:2]).max() > 1e-4                        # a strained slab: in-plane stress


def test_masked_cell_filter_relaxes_the_in_plane_lattice():
    slab = _slab(a=3.75)                                       # stretched in plane
    slab.calc = MFTCalculator(MODELS / "pretrained.pt", dtype=torch.float64)
    c = slab.cell[2].copy()
    opt = FIRE(FrechetCellFilter(slab, mask=[1, 1, 0, 0, 0, 1]), logfile=None)
    assert opt.run(fmax=0.01, steps=300)
    assert np.abs(slab.get_stress()[[0, 1, 5]]).max() < 0.01 / slab.get_volume() * len(slab) + 1e-4
    assert np.linalg.norm(slab.cell[0]) < 3.75 / np.sqrt(2) - 0.02           # the stretched lattice shrank
    np.testing.assert_allclose(slab.cell[2], c)                               # the vacuum axis stayed


def test_a_slab_without_a_cell_volume_gets_no_stress_but_a_fix():
    slab = _slab()
    slab.cell[2] = 0.0                                          # ASE's slab builders without vacuum do this
    slab.calc = MFTCalculator(MODELS / "pretrained.pt", dtype=torch.float64)
    assert np.isfinite(slab.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError, match=r"cell has a volume; .*atoms.center\(vacuum=10.0, axis=2\)"):
        slab.get_stress()
