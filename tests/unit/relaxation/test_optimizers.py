"""The optimiser and cell-filter registries of batched relaxation: ASE's optimisers stepped with batched forces take
ASE's own steps (LBFGS here; FIRE, BFGS and the cell filters in tests/unit/calculators/test_calculator.py), the replaced
pieces (Cholesky BFGS solve, one-derivative Fréchet cell forces, forces once per evaluation) equal ASE's, and the
room's modules import in one direction (engine < pool < predict < api)."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.optimize import BFGS, LBFGS

from mftcalc.calculators import MFTCalculator
from mftcalc.data import Structure
from mftcalc.relaxation.api import relax
from mftcalc.relaxation.bfgs import CholeskyBFGS
from mftcalc.relaxation.cell_filters import CELL_FILTERS, Frechet, UnitCell
from mftcalc.relaxation.flight import ModelResults
from mftcalc.relaxation.optimizers import OPTIMIZERS, LBFGSParams, make_optimizer


def test_batched_lbfgs_matches_ase_lbfgs(stiff_model_file):
    structures = []
    for k, name in enumerate(["H2O", "CH4", "NH3"]):
        atoms = molecule(name)
        atoms.rattle(0.1, seed=k)
        structures.append(Structure.from_ase(atoms))
    results = relax(structures, stiff_model_file, fmax=0.01, steps=8, optimizer="lbfgs", dtype=torch.float64,
                    max_atoms=8, lbfgs=LBFGSParams(maxstep=0.04, memory=5))
    for s, r in zip(structures, results):
        atoms = s.to_ase()
        atoms.calc = MFTCalculator(stiff_model_file, dtype=torch.float64)
        opt = LBFGS(atoms, logfile=None, maxstep=0.04, memory=5)
        opt.run(fmax=0.01, steps=8)
        assert r.steps == opt.nsteps
        np.testing.assert_allclose(r.structure.positions, atoms.positions, atol=1e-6)
    assert max(r.steps for r in results) > 5


@pytest.mark.parametrize("cell_filter", ["unitcell", "frechet"])
def test_batched_lbfgs_cell_relax_matches_ase(stiff_model_file, cell_filter):
    ase_filter = {"unitcell": UnitCellFilter, "frechet": FrechetCellFilter}[cell_filter]
    crystals = []
    for k, a in enumerate([5.3, 5.6]):
        atoms = bulk("Si", "diamond", a=a) * (1, 1, 2)
        atoms.rattle(0.05, seed=k)
        crystals.append(Structure.from_ase(atoms))
    results = relax(crystals, stiff_model_file, fmax=0.005, steps=25, cell_filter=cell_filter, optimizer="lbfgs",
                    dtype=torch.float64)
    for s, r in zip(crystals, results):
        atoms = s.to_ase()
        atoms.calc = MFTCalculator(stiff_model_file, dtype=torch.float64)
        opt = LBFGS(ase_filter(atoms), logfile=None)
        opt.run(fmax=0.005, steps=25)
        assert r.steps == opt.nsteps and r.steps > 5
        assert np.abs(r.structure.cell - s.cell).max() > 1e-3
        np.testing.assert_allclose(r.structure.cell, atoms.cell.array, atol=1e-6)
        np.testing.assert_allclose(r.structure.positions, atoms.positions, atol=1e-6)


def test_registry_names_and_unknown_names():
    assert list(OPTIMIZERS) == ["fire", "bfgs", "bfgs-lindh", "bfgs-internal", "lbfgs"]
    assert make_optimizer("bfgs-lindh").params.initial_hessian == "lindh"
    assert set(CELL_FILTERS) == {"unitcell", "frechet"}
    with pytest.raises(ValueError, match="unknown optimizer 'cg'; batched relaxation implements fire, bfgs"):
        make_optimizer("cg")


def test_cholesky_bfgs_takes_ase_bfgs_steps_on_a_cell_filter():
    """EMT copper, rattled, cell and positions together: the Cholesky solve reproduces ASE's eigenvector steps
    (the indefinite-Hessian path: tests/unit/calculators/test_calculator.py)."""
    paths = []
    for cls in (CholeskyBFGS, BFGS):
        atoms = bulk("Cu", "fcc", a=3.7) * (2, 1, 1)
        atoms.rattle(0.05, seed=3)
        atoms.calc = EMT()
        opt = cls(FrechetCellFilter(atoms), logfile=None)
        opt.run(fmax=1e-3, steps=30)
        paths.append((opt.nsteps, atoms.positions.copy(), atoms.cell.array.copy()))
    assert paths[0][0] == paths[1][0] > 5
    np.testing.assert_allclose(paths[0][1], paths[1][1], atol=1e-8)
    np.testing.assert_allclose(paths[0][2], paths[1][2], atol=1e-8)


@pytest.mark.parametrize("ours, theirs", [(UnitCell, UnitCellFilter), (Frechet, FrechetCellFilter)])
def test_cell_filter_forces_are_ase_forces_and_computed_once_per_result(ours, theirs):
    rng = np.random.default_rng(0)
    mine, ref = (bulk("Si", "diamond", a=5.4) * (2, 1, 1) for _ in range(2))
    for atoms in (mine, ref):
        atoms.calc = ModelResults()
    f_mine, f_ref = ours(mine), theirs(ref)
    x = f_mine.get_positions()
    x[-3:] += rng.normal(scale=0.3, size=(3, 3))                     # a sheared, stretched cell
    f_mine.set_positions(x)
    f_ref.set_positions(x)
    np.testing.assert_allclose(mine.cell.array, ref.cell.array, atol=1e-12)
    np.testing.assert_allclose(f_mine.get_positions(), f_ref.get_positions(), atol=1e-12)
    stress = rng.normal(scale=0.01, size=(3, 3))
    forces = rng.normal(size=(len(mine), 3))
    for atoms in (mine, ref):
        atoms.calc.set(0.0, forces, stress + stress.T)
    got = f_mine.get_forces()
    np.testing.assert_allclose(got, f_ref.get_forces(), rtol=1e-10, atol=1e-12)
    assert f_mine.get_forces() is got                                  # cached for these results
    mine.calc.set(0.0, forces, stress)
    assert f_mine.get_forces() is not got                              # new results, new forces


def test_matrix_log_equals_scipy_for_stretch_rotation_and_defective_shear():
    from scipy.linalg import logm
    from mftcalc.relaxation.cell_filters import _logm
    rng = np.random.default_rng(1)
    c, s = np.cos(0.3), np.sin(0.3)
    cases = [np.eye(3), 16.0 * np.eye(3), np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]),
             np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.1]])]
    cases += [np.eye(3) + 0.1 * rng.normal(size=(3, 3)) for _ in range(5)]
    for matrix in cases:
        np.testing.assert_allclose(_logm(matrix), np.real(logm(matrix)), atol=1e-13)


def test_results_calculator_refuses_to_be_read_before_results():
    atoms = molecule("H2O")
    atoms.calc = ModelResults()
    with pytest.raises(RuntimeError, match="no model forces for this geometry yet"):
        atoms.get_forces()


def test_relax_room_imports_in_one_direction():
    """engine < pool < predict < api: the pool never imports predict or api, the engine never the pool."""
    from _helpers import import_graph
    graph = import_graph()
    below = {"mftcalc.relaxation.engine": ["mftcalc.relaxation.pool", "mftcalc.calculators.predict", "mftcalc.relaxation.api"],
             "mftcalc.relaxation.pool": ["mftcalc.calculators.predict", "mftcalc.relaxation.api"],
             "mftcalc.calculators.predict": ["mftcalc.relaxation.api"],
             "mftcalc.relaxation.optimizers": ["mftcalc.relaxation.engine"]}
    for low, highs in below.items():
        for high in highs:
            assert not nx.has_path(graph, low, high), f"{low} reaches {high}"
    assert graph.has_edge("mftcalc.relaxation.pool", "mftcalc.relaxation.engine")
    assert graph.has_edge("mftcalc.calculators.predict", "mftcalc.relaxation.pool")

