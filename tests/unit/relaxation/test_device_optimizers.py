"""The on-device optimisers (fire-torch, bfgs-torch, bfgs-lindh-torch; mftcalc.relaxation.device_flight, torch_fire,
torch_bfgs, torch_cell): step for step ASE's FIRE and BFGS driven by the same model (molecules of different sizes
in one padded batch, crystals with a fixed cell and with ASE's unit-cell and Fréchet filters), the same results as
the host path when structures join and leave the batch, ASE's filter coordinates and forces, ASE's BFGS step for
definite and indefinite Hessians, and the choice between the device and host paths."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.filters import FrechetCellFilter, UnitCellFilter
from ase.optimize import BFGS, FIRE

from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data import Structure
from mftcalc.geometry.lindh import lindh_hessian
from mftcalc.relaxation import torch_cell
from mftcalc.relaxation.api import relax
from mftcalc.relaxation.bfgs import BFGSParams, abs_newton_step
from mftcalc.relaxation.cell_filters import CELL_FILTERS
from mftcalc.relaxation.flight import InFlight, ModelResults
from mftcalc.relaxation.optimizers import (CPU_BFGS_MAX_PADDING, DEVICE_OPTIMIZERS, ON_DEVICE, make_optimizer,
                                           padding_factor, step_path)
from mftcalc.relaxation.torch_bfgs import abs_newton_steps

ASE_FILTERS = {None: None, "unitcell": UnitCellFilter, "frechet": FrechetCellFilter}


def _molecules():
    """Rattled molecules of 3, 9, 5 and 12 atoms (one padded batch)."""
    out = []
    for k, name in enumerate(["H2O", "CH3CH2OH", "CH4", "C6H6"]):
        atoms = molecule(name)
        atoms.rattle(0.1, seed=k)
        out.append(Structure.from_ase(atoms))
    return out


def _crystals():
    """Rattled, strained Si crystals of 4, 2 and 8 atoms."""
    out = []
    for k, (a, repeat) in enumerate([(5.3, (1, 1, 2)), (5.6, (1, 1, 1)), (5.5, (2, 1, 2))]):
        atoms = bulk("Si", "diamond", a=a) * repeat
        atoms.rattle(0.05, seed=k)
        out.append(Structure.from_ase(atoms))
    return out


def _device_path(name, structures, model_file, cell_filter, steps, bfgs=BFGSParams()):
    """Positions and cells after each of ``steps`` steps of the on-device optimiser ``name``, all structures in one
    batch, through the engine's calls (inputs, receive, step; settle copies the geometries out)."""
    handle = ModelHandle.load(model_file, dtype=torch.float64)
    optimizer = make_optimizer(name, bfgs=bfgs)
    wrap = CELL_FILTERS[cell_filter] if cell_filter else None
    flights = [InFlight.start(k, s, handle.dataset_index(s), None, wrap) for k, s in enumerate(structures)]
    for f in flights:
        optimizer.start(f)
    path = []
    for _ in range(steps):
        res = handle.module(optimizer.inputs(flights, handle), compute_forces=True, compute_stress=wrap is not None,
                            compute_properties=False, features=False)
        optimizer.receive(flights, res["energy"], res["forces"], res["stress"] if wrap else None, None)
        optimizer.step(flights)
        optimizer.settle(flights)
        path.append([(f.atoms.positions.copy(), f.atoms.cell.array.copy()) for f in flights])
    return path


def _ase_path(optimizer, structure, model_file, cell_filter, steps, hessian0=None, **kwargs):
    """Positions and cells after each of ``steps`` steps of ASE's ``optimizer`` class on one structure."""
    atoms = structure.to_ase()
    atoms.calc = MFTCalculator(model_file, dtype=torch.float64)
    target = ASE_FILTERS[cell_filter](atoms) if cell_filter else atoms
    opt = optimizer(target, logfile=None, **kwargs)
    if hessian0 is not None:
        opt.H0 = hessian0
    path = []
    for _ in range(steps):
        opt.step()
        path.append((atoms.positions.copy(), atoms.cell.array.copy()))
    return path


@pytest.mark.parametrize("cell_filter", [None, "unitcell", "frechet"])
@pytest.mark.parametrize("name, ase_optimizer, steps", [("fire-torch", FIRE, 10), ("bfgs-torch", BFGS, 8)])
def test_on_device_steps_are_ase_steps(stiff_model_file, name, ase_optimizer, steps, cell_filter):
    batches = [_crystals()] if cell_filter else [_molecules(), _crystals()]
    maxstep = 0.2 if name == "fire-torch" else 0.04              # (BFGS's 0.2 Å steps squash the stiff molecules)
    for structures in batches:
        ours = _device_path(name, structures, stiff_model_file, cell_filter, steps, bfgs=BFGSParams(maxstep=maxstep))
        for k, s in enumerate(structures):
            theirs = _ase_path(ase_optimizer, s, stiff_model_file, cell_filter, steps, maxstep=maxstep)
            for step, ((pos, cell), (ase_pos, ase_cell)) in enumerate(zip([p[k] for p in ours], theirs)):
                np.testing.assert_allclose(pos, ase_pos, atol=1e-8, rtol=0, err_msg=f"structure {k} step {step + 1}")
                np.testing.assert_allclose(cell, ase_cell, atol=1e-8, rtol=0, err_msg=f"structure {k} step {step + 1}")
            assert np.abs(theirs[-1][0] - s.positions).max() > 1e-3                # they did move
            if cell_filter:
                assert np.abs(theirs[-1][1] - s.cell).max() > 1e-3


def test_on_device_bfgs_from_lindh_hessian_is_ase_bfgs_with_that_start(stiff_model_file):
    structures = _molecules()
    params = BFGSParams(maxstep=0.04, lindh_shift=5.0)
    ours = _device_path("bfgs-lindh-torch", structures, stiff_model_file, None, 8, bfgs=params)
    for k, s in enumerate(structures):
        h0 = lindh_hessian(s.numbers, s.positions) + 5.0 * np.eye(3 * s.n_atoms)
        theirs = _ase_path(BFGS, s, stiff_model_file, None, 8, hessian0=h0, maxstep=0.04)
        for (pos, _), (ase_pos, _) in zip([p[k] for p in ours], theirs):
            np.testing.assert_allclose(pos, ase_pos, atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="Lindh model Hessian is for molecules"):
        make_optimizer("bfgs-lindh-torch").check(_crystals(), None)


@pytest.mark.parametrize("optimizer, cell_filter, fmax, steps", [
    ("fire", None, 0.075, 12), ("bfgs", None, 0.06, 12), ("bfgs-lindh", None, 0.06, 12),
    ("fire", "unitcell", 0.005, 25), ("bfgs", "frechet", 0.005, 13)])
def test_joining_and_leaving_structures_give_the_host_results(stiff_model_file, optimizer, cell_filter, fmax, steps):
    """A small in-flight batch: structures join as others leave (converged or out of steps), so the padding grows
    and shrinks; every result equals the host path's (ASE's objects)."""
    structures = _crystals() + _crystals()[::-1] if cell_filter else _molecules() + _molecules()[::-1]
    kwargs = dict(fmax=fmax, steps=steps, optimizer=optimizer, cell_filter=cell_filter,
                  dtype=torch.float64, max_atoms=10, bfgs=BFGSParams(maxstep=0.04, lindh_shift=5.0))
    host = relax(structures, stiff_model_file, device_step=False, **kwargs)
    device = relax(structures, stiff_model_file, device_step=True, **kwargs)
    for a, b in zip(host, device):
        assert (a.steps, a.converged) == (b.steps, b.converged)
        np.testing.assert_allclose(b.structure.positions, a.structure.positions, atol=1e-8, rtol=0)
        np.testing.assert_allclose(b.structure.cell, a.structure.cell, atol=1e-8, rtol=0)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-6, rtol=0)
        assert b.energy == pytest.approx(a.energy, abs=1e-8)
        assert b.fmax == pytest.approx(a.fmax, abs=1e-6)
        assert b.properties == pytest.approx(a.properties, abs=1e-8)
        if cell_filter:
            np.testing.assert_allclose(b.stress, a.stress, atol=1e-8)
    assert sum(s.n_atoms for s in structures) > 2 * kwargs["max_atoms"]          # they had to wait for places
    assert any(r.converged for r in host) and not all(r.converged for r in host)


@pytest.mark.parametrize("kind, ase_filter", [("unitcell", UnitCellFilter), ("frechet", FrechetCellFilter)])
def test_filter_coordinates_and_forces_are_ase_filters(kind, ase_filter):
    rng = np.random.default_rng(0)
    atoms = bulk("Si", "diamond", a=5.4) * (2, 1, 1)
    atoms.calc = ModelResults()
    filt = ase_filter(atoms)
    x = filt.get_positions()
    x[-3:] += rng.normal(scale=0.3, size=(3, 3))                            # a sheared, stretched cell
    filt.set_positions(x)
    general = filt.get_positions()
    n = torch.tensor([float(len(atoms))], dtype=torch.float64)
    rows = torch.from_numpy(general[-3:])[None]
    grad = torch_cell.deformation(kind, rows, n)
    np.testing.assert_allclose(grad[0].numpy(), filt.deform_grad(), atol=1e-12)
    np.testing.assert_allclose((torch.from_numpy(general[:-3]) @ grad[0].T).numpy(), atoms.positions, atol=1e-12)
    stress = rng.normal(scale=0.01, size=(3, 3))                              # not symmetric: ASE symmetrises
    forces = rng.normal(size=(len(atoms), 3))
    atoms.calc.set(0.0, forces, stress)
    atom_f, cell_f = torch_cell.generalised_forces(kind, torch.from_numpy(forces)[None], torch.from_numpy(stress)[None],
                                                   torch.from_numpy(atoms.cell.array)[None], grad, rows, n)
    expected = ase_filter.get_forces(filt)
    np.testing.assert_allclose(np.concatenate([atom_f[0].numpy(), cell_f[0].numpy()]), expected, rtol=1e-10,
                               atol=1e-12)
    start = torch_cell.start_rows(kind, n)
    np.testing.assert_allclose(start[0].numpy(), ase_filter(bulk("Si", "diamond", a=5.4) * (2, 1, 1))
                               .get_positions()[-3:], atol=1e-12)


def test_batched_bfgs_step_is_ase_step_for_definite_and_indefinite_hessians():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 12, 12))
    hessians = np.stack([a[0] @ a[0].T + 0.5 * np.eye(12), a[1] + a[1].T, a[2] @ a[2].T + np.eye(12)])
    forces = rng.normal(size=(3, 12))
    got = abs_newton_steps(torch.from_numpy(hessians), torch.from_numpy(forces)).numpy()
    for h, f, step in zip(hessians, forces, got):
        omega, vectors = np.linalg.eigh(h)
        np.testing.assert_allclose(step, vectors @ (f @ vectors / np.abs(omega)), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(step, abs_newton_step(h, f), rtol=1e-9, atol=1e-12)
    assert np.linalg.eigvalsh(hessians[1]).min() < 0


def test_step_path_chooses_the_device_or_host_rule():
    assert set(DEVICE_OPTIMIZERS) == {"fire-torch", "bfgs-torch", "bfgs-lindh-torch"}
    assert {h: c.name for h, c in ON_DEVICE.items()} == {"fire": "fire-torch", "bfgs": "bfgs-torch",
                                                         "bfgs-lindh": "bfgs-lindh-torch"}
    mols = _molecules()
    big = Structure.from_ase(bulk("Si", "diamond", a=5.43, cubic=True) * (3, 3, 3))         # 216 atoms
    assert padding_factor(mols, None) == pytest.approx(4 * 36.0 ** 3 / sum((3.0 * s.n_atoms) ** 3 for s in mols))
    assert padding_factor(mols + [big], None) > CPU_BFGS_MAX_PADDING >= padding_factor(mols, None)
    assert step_path("fire", True, "cpu", mols, None) == "fire-torch"
    assert step_path("bfgs", False, "cpu", mols, None) == "bfgs"
    assert step_path("fire", "auto", "cpu", mols + [big], None) == "fire-torch"           # CPU: FIRE always
    assert step_path("bfgs", "auto", "cpu", mols, None) == "bfgs-torch"                   # CPU: BFGS unless padded
    assert step_path("bfgs-lindh", "auto", "cpu", mols + [big], None) == "bfgs-lindh"
    assert step_path("bfgs", "auto", "cuda", mols + [big], None) == "bfgs-torch"          # CUDA: always
    assert step_path("lbfgs", "auto", "cuda", mols, None) == "lbfgs"                      # no device variant
    assert step_path("fire-torch", "auto", "cpu", mols, None) == "fire-torch"
    with pytest.raises(ValueError, match="no on-device variant"):
        step_path("bfgs-internal", True, "cpu", mols, None)
    with pytest.raises(ValueError, match="use optimizer='fire'"):
        step_path("fire-torch", False, "cpu", mols, None)
    with pytest.raises(ValueError, match="device_step='yes'"):
        step_path("fire", "yes", "cpu", mols, None)
    with pytest.raises(ValueError, match="unknown optimizer 'cg'.*fire-torch"):
        make_optimizer("cg")
