"""ASE constraints in the batched relaxation: applied as ASE applies them (the same steps and end points as ASE's
own optimisers on the MFTCalculator), carried through files (extxyz ``move_mask``) and the command line, and
refused by name where an optimiser would move atoms without applying them."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.constraints import FixAtoms, FixCartesian
from ase.filters import FrechetCellFilter
from ase.io import read, write
from ase.optimize import FIRE, LBFGS

from mftcalc.calculators import MFTCalculator
from mftcalc.cli import main
from mftcalc.data import Structure
from mftcalc.relaxation.api import relax


def _fixed_molecules():
    out = []
    for k, (name, constraint) in enumerate([("CH3CH2OH", FixAtoms([0, 1])), ("CH4", FixCartesian([0, 2], [1, 1, 0]))]):
        atoms = molecule(name)
        atoms.rattle(0.1, seed=k)
        atoms.set_constraint(constraint)
        out.append(atoms)
    return out


@pytest.mark.parametrize("optimizer, ase_optimizer", [("fire", FIRE), ("lbfgs", LBFGS)])
def test_constrained_relaxations_equal_ase_and_hold_the_fixed_coordinates(stiff_model_file, optimizer,
                                                                          ase_optimizer):
    inputs = _fixed_molecules()
    results = relax(inputs, stiff_model_file, fmax=0.01, steps=12, optimizer=optimizer, dtype=torch.float64)
    for atoms, r in zip(inputs, results):
        start = atoms.positions.copy()
        reference = atoms.copy()
        reference.calc = MFTCalculator(stiff_model_file, dtype=torch.float64)
        opt = ase_optimizer(reference, logfile=None)
        opt.run(fmax=0.01, steps=12)
        assert r.steps == opt.nsteps and r.steps > 3
        np.testing.assert_allclose(r.structure.positions, reference.positions, atol=1e-6)
        moved = np.abs(r.structure.positions - start)
        constraint = atoms.constraints[0]
        if isinstance(constraint, FixAtoms):
            assert moved[constraint.index].max() == 0.0 and moved.max() > 1e-3
        else:                                                   # FixCartesian: x and y of atoms 0 and 2 held
            assert moved[[0, 2]][:, :2].max() == 0.0 and moved[[0, 2]][:, 2].max() > 1e-4
        assert type(r.to_ase().constraints[0]) is type(constraint)      # the result keeps its constraint


def test_constraints_with_a_cell_filter_equal_ase(stiff_model_file):
    atoms = bulk("Si", "diamond", a=5.5) * (1, 1, 2)
    atoms.rattle(0.05, seed=3)
    atoms.set_constraint(FixAtoms([0]))
    r = relax([atoms], stiff_model_file, fmax=0.005, steps=15, cell_filter="frechet", optimizer="lbfgs",
              dtype=torch.float64)[0]
    reference = atoms.copy()
    reference.calc = MFTCalculator(stiff_model_file, dtype=torch.float64)
    opt = LBFGS(FrechetCellFilter(reference), logfile=None)
    opt.run(fmax=0.005, steps=15)
    assert r.steps == opt.nsteps and r.steps > 3
    np.testing.assert_allclose(r.structure.cell, reference.cell.array, atol=1e-6)
    np.testing.assert_allclose(r.structure.positions, reference.positions, atol=1e-6)


def test_optimisers_that_would_not_apply_constraints_refuse_them(stiff_model_file):
    fixed = _fixed_molecules()
    for optimizer, kwargs, why in [("bfgs-internal", {}, "steps internal coordinates"),
                                   ("fire-torch", {}, "steps on the device"),
                                   ("fire", {"device_step": True}, "with device_step=True steps on the device")]:
        with pytest.raises(ValueError, match=rf"structures\[0\] carries ASE constraints \(FixAtoms\); "
                                             rf"optimizer='{optimizer}' {why}.*fire, bfgs, bfgs-lindh, lbfgs"):
            relax(fixed, stiff_model_file, steps=2, optimizer=optimizer, **kwargs)
    free = molecule("CH4")
    assert relax([free], stiff_model_file, steps=2, optimizer="fire-torch")[0].steps == 2   # no constraint: fine


def test_the_relax_command_keeps_a_files_move_mask(tmp_path, stiff_model_file):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=5)
    atoms.set_constraint(FixAtoms([0, 3]))
    write(tmp_path / "in.extxyz", atoms)                 # extxyz stores FixAtoms as move_mask
    assert main(["relax", str(stiff_model_file), str(tmp_path / "in.extxyz"), "--out", str(tmp_path / "out.extxyz"),
                 "--steps", "10", "--fmax", "0.01"]) == 0
    out = read(tmp_path / "out.extxyz")
    moved = np.linalg.norm(out.positions - read(tmp_path / "in.extxyz").positions, axis=1)   # as the file has them
    assert moved[[0, 3]].max() == 0.0 and moved.max() > 1e-3
    assert out.constraints and list(out.constraints[0].index) == [0, 3]
    assert Structure.from_ase(out).constraints[0].index.tolist() == [0, 3]


def test_pymatgen_selective_dynamics_are_applied(stiff_model_file):
    """A POSCAR's selective dynamics (pymatgen site property) used to be dropped: every atom moved."""
    from pymatgen.io.ase import AseAtomsAdaptor
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.08, seed=2)
    crystal = AseAtomsAdaptor.get_structure(atoms)
    movable = np.ones((len(atoms), 3), dtype=bool)
    movable[0] = False                     # atom 0 fixed, atom 1 moves in z only
    movable[1, :2] = False
    crystal.add_site_property("selective_dynamics", movable.tolist())
    r = relax([crystal], stiff_model_file, fmax=0.01, steps=10, optimizer="fire", dtype=torch.float64)[0]
    moved = np.abs(r.structure.positions - crystal.cart_coords)
    assert moved[0].max() == 0.0 and moved[1, :2].max() == 0.0
    assert moved[1, 2] > 1e-4 and moved[2:].max() > 1e-3
