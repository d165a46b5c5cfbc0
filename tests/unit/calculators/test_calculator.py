"""MFTCalculator: ASE's numerical checks, one-pass properties and caching, errors, exports, batched relax."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces as numeric_forces
from ase.calculators.fd import calculate_numerical_stress as numeric_stress
from ase.optimize import BFGS, FIRE

from _helpers import save_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.predict import predict
from mftcalc.relaxation.api import relax
from mftcalc.data import Structure
from mftcalc.model.checkpoint import export_torchscript
from mftcalc.model.inference import predict_structures




@pytest.fixture
def model_file(tmp_path):
    return save_tiny_model(tmp_path / "tiny.pt")


def _calc(path, **kw):
    return MFTCalculator(path, dtype=torch.float64, **kw)


def test_forces_and_stress_match_numerical_derivatives(model_file):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    atoms.calc = _calc(model_file)
    np.testing.assert_allclose(atoms.get_forces(), numeric_forces(atoms, eps=1e-5), atol=1e-6)
    crystal = bulk("Si", "diamond", a=5.43) * (1, 1, 2)
    crystal.rattle(0.05, seed=3)
    crystal.calc = _calc(model_file)
    np.testing.assert_allclose(crystal.get_stress(), numeric_stress(crystal, eps=1e-5), atol=1e-7)
    np.testing.assert_allclose(crystal.get_forces(), numeric_forces(crystal, eps=1e-5), atol=1e-6)


def test_one_pass_gives_all_properties_and_is_cached(model_file):
    atoms = molecule("C6H6")
    calc = _calc(model_file)
    atoms.calc = calc
    calls = []
    original = calc.handle.module.forward
    calc.handle.module.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    gap = atoms.calc.get_property("gap", atoms)
    mu = atoms.calc.get_property("mu", atoms)
    assert len(calls) == 1 and np.isfinite([e, gap, mu]).all() and f.shape == (12, 3)
    assert abs(atoms.get_potential_energies().sum() - e) < 1e-9
    atoms.positions[0, 0] += 0.1
    atoms.get_potential_energy()
    assert len(calls) == 2
    reference = predict_structures(calc.handle.module, [Structure.from_ase(atoms)], compute_forces=False,
                                   compute_stress=False)[0]
    assert abs(atoms.calc.get_property("gap", atoms) - float(reference["gap"])) < 1e-12


def test_clear_errors(model_file):
    atoms = molecule("H2O")
    atoms.calc = _calc(model_file)
    with pytest.raises(PropertyNotImplementedError, match="gap"):
        atoms.calc.get_property("homo", atoms)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()
    with pytest.raises(KeyError, match="datasets"):
        _calc(model_file, dataset="nope")
    with pytest.raises(KeyError, match="force-field heads"):
        _calc(model_file, head="nope")
    cl = molecule("CH3Cl")
    cl.calc = _calc(model_file)
    with pytest.raises(ValueError, match="Cl"):
        cl.get_potential_energy()
    cl.calc = _calc(model_file, allow_untrained_elements=True, dataset="a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cl.get_potential_energy()
    assert any("untrained" in str(w.message) for w in caught)
    bad = molecule("H2O")
    bad.positions[1] = bad.positions[0] + [0.1, 0, 0]
    bad.calc = _calc(model_file)
    with pytest.raises(ValueError, match="overlapping"):
        bad.get_potential_energy()
    nan = molecule("H2O")
    nan.positions[0, 0] = np.nan
    nan.calc = _calc(model_file)
    with pytest.raises(ValueError, match="NaN"):
        nan.get_potential_energy()


def test_torchscript_export_matches_checkpoint(model_file, tmp_path):
    from mftcalc.model.checkpoint import load_model
    export = tmp_path / "tiny_script.pt"
    export_torchscript(load_model(model_file, torch.float64), export)
    scripted = torch.jit.load(str(export))            # plain torch, no mftcalc needed
    from mftcalc.data import collate
    si = collate([Structure.from_ase(bulk("Si", "diamond", a=5.43))], torch.float64, dataset=1)
    torch.testing.assert_close(scripted.double()(si)["stress"], load_model(model_file, torch.float64)(si)["stress"],
                               rtol=1e-9, atol=1e-12)
    for atoms in [molecule("CH3CH2OH"), bulk("Si", "diamond", a=5.43)]:
        a = atoms.copy()
        a.calc = _calc(model_file)
        b = atoms.copy()
        b.calc = _calc(export)
        assert abs(a.get_potential_energy() - b.get_potential_energy()) <= 1e-6 * abs(a.get_potential_energy())
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=1e-6, atol=1e-9)
        assert abs(a.calc.get_property("gap", a) - b.calc.get_property("gap", b)) < 1e-9


def _rattled_molecules(names):
    """ASE molecules rattled by 0.1 Å (seed = position in ``names``), as Structures."""
    structures = []
    for k, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.1, seed=k)
        structures.append(Structure.from_ase(atoms))
    return structures


@pytest.mark.parametrize("max_atoms, max_angles", [(4096, None), (5, None), (4096, 30)])  # small: queued molecules
def test_batched_relax_matches_ase_fire(stiff_model_file, max_atoms, max_angles):           # join as others leave
    model_file = stiff_model_file
    structures = _rattled_molecules(["H2O", "CH4", "NH3"])
    results = relax(structures, model_file, fmax=0.01, steps=10, dtype=torch.float64, max_atoms=max_atoms,
                    max_angles=max_angles)
    for s, r in zip(structures, results):
        atoms = s.to_ase()
        atoms.calc = _calc(model_file)
        opt = FIRE(atoms, logfile=None)
        opt.run(fmax=0.01, steps=10)
        assert r.converged == (np.sqrt((atoms.get_forces() ** 2).sum(1)).max() < 0.01)
        assert r.steps == opt.nsteps
        np.testing.assert_allclose(r.structure.positions, atoms.positions, atol=1e-6)
        assert set(r.properties) == {"gap", "mu", "r2"}
    assert max(r.steps for r in results) > 5
    preds = predict([r.structure for r in results], model_file, dtype=torch.float64)
    assert [p["gap"] for p in preds] == pytest.approx([r.properties["gap"] for r in results])


def test_batched_bfgs_matches_ase_bfgs(stiff_model_file):
    structures = _rattled_molecules(["H2O", "CH4", "NH3"])
    from mftcalc.relaxation.bfgs import BFGSParams
    results = relax(structures, stiff_model_file, fmax=0.01, steps=8, optimizer="bfgs", dtype=torch.float64,
                    max_atoms=8, bfgs=BFGSParams(maxstep=0.04))
    for s, r in zip(structures, results):
        atoms = s.to_ase()
        atoms.calc = _calc(stiff_model_file)
        opt = BFGS(atoms, logfile=None, maxstep=0.04)
        opt.run(fmax=0.01, steps=8)
        assert r.steps == opt.nsteps
        np.testing.assert_allclose(r.structure.positions, atoms.positions, atol=1e-6)
    assert max(r.steps for r in results) > 3
    with pytest.raises(ValueError, match="unknown optimizer 'cg'.*bfgs-lindh"):
        relax(structures, stiff_model_file, optimizer="cg")


def test_bfgs_step_is_ase_step_for_definite_and_indefinite_hessians():
    """The Cholesky shortcut for positive-definite Hessians gives ASE's eigenvector step; indefinite ones take
    ASE's eigenvalue path (|eigenvalues|)."""
    from mftcalc.relaxation.bfgs import abs_newton_step as _abs_newton_step
    rng = np.random.default_rng(3)
    a = rng.normal(size=(12, 12))
    forces = rng.normal(size=12)
    for hessian in (a @ a.T + 0.5 * np.eye(12), a + a.T):                  # definite, indefinite
        omega, vectors = np.linalg.eigh(hessian)
        np.testing.assert_allclose(_abs_newton_step(hessian, forces), vectors @ (forces @ vectors / np.abs(omega)),
                                   rtol=1e-9, atol=1e-12)
    assert np.linalg.eigvalsh(a + a.T).min() < 0


def test_batched_bfgs_from_lindh_hessian_matches_ase_bfgs_with_that_start(stiff_model_file):
    from mftcalc.relaxation.bfgs import BFGSParams
    from mftcalc.geometry.lindh import lindh_hessian
    structures = _rattled_molecules(["CH3CH2OH", "CH4", "HCOOH"])
    results = relax(structures, stiff_model_file, fmax=0.01, steps=8, optimizer="bfgs-lindh", dtype=torch.float64,
                    max_atoms=12, bfgs=BFGSParams(maxstep=0.04, lindh_shift=5.0))
    for s, r in zip(structures, results):
        atoms = s.to_ase()
        atoms.calc = _calc(stiff_model_file)
        opt = BFGS(atoms, logfile=None, maxstep=0.04)
        opt.H0 = lindh_hessian(atoms.numbers, atoms.positions) + 5.0 * np.eye(3 * len(atoms))
        opt.run(fmax=0.01, steps=8)
        assert r.steps == opt.nsteps
        np.testing.assert_allclose(r.structure.positions, atoms.positions, atol=1e-6)
    assert max(r.steps for r in results) > 3
    with pytest.raises(ValueError, match="Lindh model Hessian is for molecules"):
        relax([Structure.from_ase(bulk("Si", "diamond", a=5.43))], stiff_model_file, optimizer="bfgs-lindh")
    with pytest.raises(ValueError, match="initial_hessian 'exact'"):
        BFGSParams(initial_hessian="exact")


def test_relax_on_worker_processes_matches_one_process(stiff_model_file):
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.relaxation.api import ModelWorkers
    from mftcalc.model.checkpoint import load_model
    structures = _rattled_molecules(["H2O", "CH4", "NH3", "CH3CH2OH", "HCOOH"])
    # 6 steps: the stiff tiny model's surface is rough enough that round-off from a different batch composition
    # grows over tens of steps (a molecule relaxed alone drifts from the same molecule relaxed in a batch)
    kwargs = dict(fmax=0.01, steps=6, optimizer="bfgs-lindh")
    one = relax(structures, stiff_model_file, dtype=torch.float64, **kwargs)
    handle = ModelHandle.load(stiff_model_file, dtype=torch.float64)
    finished = []
    with ModelWorkers(handle, workers=2) as pool:                      # reloads the file in each worker
        spread = pool.relax(structures, **kwargs)
        items = [(k, s, None) for k, s in enumerate(structures)]
        from mftcalc.relaxation.optimizers import FireParams
        pool.relax_stream(items, lambda key, r: finished.append(key),
                          dict(fmax=0.01, max_steps=6, fire=FireParams(), max_atoms=4096))
    from_object = relax(structures, load_model(stiff_model_file, torch.float64), dtype=torch.float64, workers=2,
                        **kwargs)                                      # a model object: via a temporary file
    assert sorted(finished) == [0, 1, 2, 3, 4]                         # every key once, from a shared queue
    for results in (spread, from_object):
        assert [r.steps for r in results] == [r.steps for r in one]
        for a, b in zip(results, one):
            np.testing.assert_allclose(a.structure.positions, b.structure.positions, atol=1e-7)
            assert a.properties == pytest.approx(b.properties, abs=1e-7)
    assert [r.steps for r in one] == [6] * 5
    single = predict(structures, stiff_model_file, dtype=torch.float64, forces=True)
    spread_predict = predict(structures, stiff_model_file, dtype=torch.float64, forces=True, workers=2)
    for a, b in zip(spread_predict, single):
        assert a.keys() == b.keys()
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-9)
        assert a["gap"] == pytest.approx(b["gap"], abs=1e-9)
    with pytest.raises(ValueError, match="workers >= 2"):
        ModelWorkers(handle, workers=1)


@pytest.mark.parametrize("cell_filter", ["unitcell", "frechet"])
@pytest.mark.parametrize("optimizer", ["fire", "bfgs"])
def test_batched_cell_relax_matches_ase_cell_filters(stiff_model_file, optimizer, cell_filter):
    from ase.filters import FrechetCellFilter, UnitCellFilter
    ase_filter = {"unitcell": UnitCellFilter, "frechet": FrechetCellFilter}[cell_filter]
    model_file = stiff_model_file
    crystals = []
    for k, a in enumerate([5.3, 5.6]):
        atoms = bulk("Si", "diamond", a=a) * (1, 1, 2)
        atoms.rattle(0.05, seed=k)
        crystals.append(Structure.from_ase(atoms))
    results = relax(crystals, model_file, fmax=0.005, steps=40, cell_filter=cell_filter, dtype=torch.float64,
                    optimizer=optimizer)
    for s, r in zip(crystals, results):
        atoms = s.to_ase()
        atoms.calc = _calc(model_file)
        opt = (FIRE if optimizer == "fire" else BFGS)(ase_filter(atoms), logfile=None)
        opt.run(fmax=0.005, steps=40)
        assert r.steps == opt.nsteps and r.steps > 5
        assert np.abs(r.structure.cell - s.cell).max() > 1e-3
        np.testing.assert_allclose(r.structure.cell, atoms.cell.array, atol=1e-6)
        np.testing.assert_allclose(r.structure.positions, atoms.positions, atol=1e-6)
    with pytest.raises(ValueError, match="periodic"):
        relax([Structure.from_ase(molecule("H2O"))], model_file, cell_filter="unitcell")
