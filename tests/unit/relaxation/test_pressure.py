"""Cell relaxation under hydrostatic pressure (``relax(pressure=...)``, ``--pressure`` GPa): every path takes ASE's
filter steps with ``scalar_pressure`` (host and on-device optimisers), a relaxed cell carries stress −p·I and a
smaller volume, and a pressure that cannot act is refused by name."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.optimize import FIRE

from mftcalc.calculators import MFTCalculator
from mftcalc.data.structure import Structure
from mftcalc.geometry.units import GPA
from mftcalc.relaxation.api import relax

MODELS = Path(__file__).resolve().parents[3] / "models"
ASE_FILTERS = {"unitcell": UnitCellFilter, "frechet": FrechetCellFilter}
PRESSURE = 5.0 * GPA                                                   # eV/Å³


def _crystals():
    """Rattled, strained Si crystals of 2 and 4 atoms."""
    out = []
    for k, (a, repeat) in enumerate([(5.6, (1, 1, 1)), (5.3, (1, 1, 2))]):
        atoms = bulk("Si", "diamond", a=a) * repeat
        atoms.rattle(0.05, seed=k)
        out.append(Structure.from_ase(atoms))
    return out


def _ase_fire(structure, model_file, cell_filter, steps):
    atoms = structure.to_ase()
    atoms.calc = MFTCalculator(model_file, dtype=torch.float64)
    opt = FIRE(ASE_FILTERS[cell_filter](atoms, scalar_pressure=PRESSURE), logfile=None)
    for _ in range(steps):
        opt.step()
    return atoms.positions.copy(), atoms.cell.array.copy()


@pytest.mark.parametrize("cell_filter", ["unitcell", "frechet"])
@pytest.mark.parametrize("optimizer", ["fire", "fire-torch"])
def test_steps_under_pressure_are_ase_steps(stiff_model_file, cell_filter, optimizer):
    """6 FIRE steps on the host (ASE's filter classes) and on the device path (batched tensors) land where ASE's
    FIRE with the filter's scalar_pressure does; without the pressure they land elsewhere."""
    structures = _crystals()
    ours = relax(structures, stiff_model_file, fmax=1e-9, steps=6, optimizer=optimizer, cell_filter=cell_filter,
                 pressure=PRESSURE, device_step=optimizer.endswith("torch"), dtype=torch.float64)
    free = relax(structures, stiff_model_file, fmax=1e-9, steps=6, optimizer=optimizer, cell_filter=cell_filter,
                 device_step=optimizer.endswith("torch"), dtype=torch.float64)
    for k, s in enumerate(structures):
        pos, cell = _ase_fire(s, stiff_model_file, cell_filter, 6)
        np.testing.assert_allclose(ours[k].structure.positions, pos, atol=1e-8, rtol=0)
        np.testing.assert_allclose(ours[k].structure.cell, cell, atol=1e-8, rtol=0)
        assert np.abs(free[k].structure.cell - cell).max() > 1e-4          # the pressure changed the path


def test_relaxed_cell_carries_the_pressure_and_shrinks():
    """Si with the shipped prior's Si set: at 5 GPa the relaxed stress is −5 GPa·I and the volume is smaller than
    at zero pressure (by about p·V/B for silicon's bulk modulus, ~100 GPa)."""
    si = Structure.from_ase(bulk("Si", "diamond", a=5.43))
    kwargs = dict(fmax=1e-4, steps=400, cell_filter="frechet", dataset="mlearn_si", dtype=torch.float64)
    (free,), (pressed,) = relax([si], MODELS / "pretrained.pt", **kwargs), relax([si], MODELS / "pretrained.pt",
                                                                                 pressure=PRESSURE, **kwargs)
    assert free.converged and pressed.converged
    np.testing.assert_allclose(free.stress, np.zeros((3, 3)), atol=2e-4 / si.n_atoms)
    np.testing.assert_allclose(pressed.stress, -PRESSURE * np.eye(3), atol=2e-4 / si.n_atoms)
    v0, v = abs(np.linalg.det(free.structure.cell)), abs(np.linalg.det(pressed.structure.cell))
    assert 0.9 < v / v0 < 0.99


def test_a_pressure_that_cannot_act_is_refused(stiff_model_file):
    crystal = _crystals()[:1]
    with pytest.raises(ValueError, match=r"\(5 GPa\) acts on the cell, which stays fixed without a cell filter"):
        relax(crystal, stiff_model_file, pressure=PRESSURE)
    for bad in (float("nan"), "5 GPa", True):
        with pytest.raises(ValueError, match="pressure must be a finite number in eV/Å³"):
            relax(crystal, stiff_model_file, cell_filter="frechet", pressure=bad)


def test_command_line_pressure_in_gpa_and_a_resume_at_another_refused(tmp_path, capsys):
    from ase.io import read, write
    from mftcalc.cli import main
    write(tmp_path / "si.extxyz", [bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.5)])
    common = ["relax", str(MODELS / "pretrained.pt"), str(tmp_path / "si.extxyz"), "--cell-filter", "frechet",
              "--dataset", "mlearn_si", "--fmax", "0.001", "--dtype", "float64"]
    assert main(common + ["--out", str(tmp_path / "p.extxyz"), "--pressure", "5"]) == 0
    for atoms in read(tmp_path / "p.extxyz", ":"):
        np.testing.assert_allclose(atoms.get_stress(voigt=False), -5.0 * GPA * np.eye(3), atol=1e-3 / 2)
    assert main(common + ["--out", str(tmp_path / "p.csv"), "--pressure", "5"]) == 0
    capsys.readouterr()
    assert main(common + ["--out", str(tmp_path / "p.csv"), "--pressure", "6"]) != 0
    assert "holds results of a different run (pressure_eV_per_A3" in capsys.readouterr().err
    assert main(common[:3] + ["--out", str(tmp_path / "q.csv"), "--pressure", "5"]) != 0
    assert "(5 GPa) acts on the cell, which stays fixed without a cell filter" in capsys.readouterr().err
