"""Issue 18: the batched API (``predict``: :mod:`mftcalc.calculators.predict`, ``relax``: :mod:`mftcalc.relaxation.api`;
both also ``mftcalc.predict``/``mftcalc.relaxation``) takes lists of mftcalc ``Structure``, ``ase.Atoms`` and pymatgen ``Structure``/``Molecule``, refuses anything else by
index and type, and hands back the model's energy, forces and stress at the relaxed geometry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.constraints import FixAtoms
from pymatgen.core import Lattice, Molecule
from pymatgen.core import Structure as PmgStructure

from _helpers import save_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.predict import predict
from mftcalc.relaxation.api import relax
from mftcalc.relaxation.engine import RelaxResult
from mftcalc.data import Structure
from mftcalc.data.io import from_pymatgen



@pytest.fixture
def model_file(tmp_path):
    return save_tiny_model(tmp_path / "tiny.pt")


@pytest.fixture
def mixed():
    """One input of each kind: mftcalc Structure, ase.Atoms, pymatgen Molecule, pymatgen Structure (Si crystal)."""
    water = Structure.from_ase(molecule("H2O"))
    methane = molecule("CH4")
    methane.rattle(0.05, seed=0)
    co2 = molecule("CO2")
    pmg_molecule = Molecule(co2.get_chemical_symbols(), co2.positions + [0.05, -0.03, 0.0] * np.arange(3)[:, None])
    silicon = PmgStructure.from_spacegroup("Fd-3m", Lattice.cubic(5.5), ["Si"], [[0.0, 0.0, 0.0]])
    silicon.perturb(0.05, min_distance=0.0)
    return [water, methane, pmg_molecule, silicon]


def test_predict_takes_structures_ase_atoms_and_pymatgen(model_file, mixed):
    water, methane, pmg_molecule, silicon = mixed
    rows = predict(mixed, model_file, dtype=torch.float64, forces=True, stress=True)
    same = predict([water, Structure.from_ase(methane), from_pymatgen(pmg_molecule), from_pymatgen(silicon)],
                   model_file, dtype=torch.float64, forces=True, stress=True)
    assert [r["energy"] for r in rows] == pytest.approx([r["energy"] for r in same], abs=1e-10)
    assert [r["forces"].shape for r in rows] == [(3, 3), (5, 3), (3, 3), (8, 3)]
    assert [("stress" in r) for r in rows] == [False, False, False, True]           # periodic ones only
    atoms = from_pymatgen(silicon).to_ase()
    atoms.calc = MFTCalculator(model_file, dtype=torch.float64)
    assert np.allclose(rows[3]["stress"][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], atoms.get_stress(), atol=1e-10)
    assert rows[3]["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)


def test_relax_takes_every_kind_and_returns_ase_results(model_file, mixed):
    results = relax(mixed, model_file, steps=3, dtype=torch.float64)
    assert len(results) == 4 and all(isinstance(r, RelaxResult) for r in results)
    for r in results:
        atoms = r.to_ase()                                  # results as ASE's: energy, forces, stress, properties
        assert atoms.get_potential_energy() == r.energy and atoms.get_forces().shape == (r.structure.n_atoms, 3)
        assert {"gap", "mu", "r2"} <= set(atoms.info)
    assert [r.stress is None for r in results] == [True, True, True, False]
    calc = MFTCalculator(model_file, dtype=torch.float64)    # the same numbers as the calculator at the minimum
    atoms = results[3].structure.to_ase()
    atoms.calc = calc
    assert np.allclose(results[3].to_ase().get_stress(), atoms.get_stress(), atol=1e-10)
    assert np.allclose(results[3].forces, atoms.get_forces(), atol=1e-8)
    assert mixed[1].calc is None and len(mixed[1]) == 5                        # inputs untouched


def test_anything_else_is_refused_by_index_and_type(model_file, mixed):
    with pytest.raises(TypeError, match=r"structures\[2\] is a dict; predict takes a list of mftcalc.data.Structure, "
                                        r"ase.Atoms or pymatgen"):
        predict([mixed[0], mixed[1], {"positions": [[0, 0, 0]]}], model_file)
    with pytest.raises(TypeError, match=r"structures\[0\] is a numpy.ndarray; relax takes"):
        relax([np.zeros((3, 3))], model_file)
    with pytest.raises(TypeError, match=r"got a single ase.atoms.Atoms: pass \[structure\]"):
        predict(mixed[1], model_file)
    with pytest.raises(TypeError, match=r"not the path 'in.extxyz': read the file first"):
        relax("in.extxyz", model_file)
    fixed = molecule("CH4")
    fixed.set_constraint(FixAtoms([0]))
    with pytest.raises(ValueError, match=r"structures\[1\] carries ASE constraints \(FixAtoms\)"):
        relax([mixed[0], fixed], model_file, steps=2, optimizer="bfgs-internal")
    assert len(predict([fixed], model_file)) == 1                              # prediction moves nothing


def test_ase_atoms_keep_their_dataset_choice(model_file):
    """``atoms.info["dataset"]`` goes through the conversion: a Si crystal forced onto dataset "a" gets its energy."""
    si = bulk("Si", "diamond", a=5.43)
    tagged = si.copy()
    tagged.info["dataset"] = "a"
    default, forced = predict([si, tagged], model_file, dtype=torch.float64)
    assert default["energy"] != pytest.approx(forced["energy"])
    assert forced["energy"] == pytest.approx(predict([si], model_file, dtype=torch.float64, dataset="a")[0]["energy"])
