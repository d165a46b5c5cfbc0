"""Vibrational analysis (:mod:`mftcalc.workflows.vibrations`, ``mftcalc vibrations``): the batched Hessian equals ASE's
``Vibrations`` of the same calculator, the normal modes of a known spring, invariance, and bad input."""
import csv
import math

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.vibrations import Vibrations
from scipy.spatial.transform import Rotation

from mftcalc import MFTCalculator
from mftcalc.cli import main
from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.workflows.vibrations import hessians, normal_modes, vibrational_analysis, vibrations_data
from tests._helpers import save_tiny_model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("vib") / "tiny.pt")


def test_batched_hessian_is_ases_finite_difference_hessian(model_path, tmp_path):
    atoms = molecule("CH3OH")
    atoms.rattle(0.02, seed=3)
    ours = hessians([Structure.from_ase(atoms)], model_path, delta=0.004)[0]
    atoms.calc = MFTCalculator(model_path, dtype=torch.float64)
    vib = Vibrations(atoms, delta=0.004, nfree=2, name=str(tmp_path / "vib"))
    vib.run()
    reference = vib.get_vibrations().get_hessian_2d()
    np.testing.assert_allclose(ours, reference, atol=1e-9 * np.abs(reference).max())
    from_calculator = atoms.calc.get_vibrations(atoms, delta=0.004)
    np.testing.assert_allclose(from_calculator.get_hessian_2d(), ours, rtol=1e-12, atol=1e-12)
    from mftcalc.model.checkpoint import export_torchscript, load_model, read_checkpoint
    export_torchscript(load_model(model_path, torch.float64), tmp_path / "tiny.ts", read_checkpoint(model_path)["metadata"])
    scripted = hessians([Structure.from_ase(atoms)], tmp_path / "tiny.ts", delta=0.004)[0]
    np.testing.assert_allclose(scripted, ours, atol=1e-8 * np.abs(ours).max())
    np.testing.assert_array_equal(ours, ours.T)
    # translation invariance: the forces do not change when every atom moves alike, up to O(delta²)
    assert np.abs(ours.reshape(18, 6, 3).sum(1)).max() < 1e-3 * np.abs(ours).max()


def test_a_spring_gives_its_textbook_frequency():
    """H–H along z with force constant k: one mode at ω = sqrt(k/μ), five rigid modes (linear molecule)."""
    from ase.data import atomic_masses
    k = 36.0                                                     # eV/Å²
    structure = Structure(numbers=np.array([1, 1]), positions=np.array([[0, 0, 0], [0, 0, 0.74]]))
    hessian = np.zeros((6, 6))
    hessian[np.ix_([2, 5], [2, 5])] = k * np.array([[1, -1], [-1, 1]])
    modes = normal_modes(structure, hessian)
    mu = atomic_masses[1] / 2 * 1.66053906660e-27                 # kg
    omega = math.sqrt(k * 1.602176634e-19 / 1e-20 / mu)          # rad/s
    wavenumber = omega / (2 * math.pi * 2.99792458e10)           # cm⁻¹
    assert modes.n_rigid == 5 and modes.frequencies.shape == (1,)
    assert modes.frequencies[0] == pytest.approx(wavenumber, rel=1e-6)
    assert modes.zero_point_energy == pytest.approx(0.5 * 1.054571817e-34 * omega / 1.602176634e-19, rel=1e-6)
    assert np.abs(modes.modes[0][:, :2]).max() < 1e-12 and modes.modes[0][0, 2] == pytest.approx(-modes.modes[0][1, 2])
    negative = normal_modes(structure, -hessian)                  # a maximum: one imaginary mode, as a negative number
    assert negative.frequencies[0] == pytest.approx(-wavenumber, rel=1e-6) and negative.n_imaginary() == 1
    assert negative.zero_point_energy == 0.0
    with pytest.raises(ValueError, match=r"shape \(5, 5\); a structure of 2 atoms needs \(6, 6\)"):
        normal_modes(structure, hessian[:5, :5])


def test_frequencies_are_invariant_and_rigid_modes_are_counted(model_path, monkeypatch):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.02, seed=1)
    turned = atoms.copy()
    turned.positions = atoms.positions @ Rotation.random(random_state=2).as_matrix().T + [1.0, -2.0, 0.5]
    crystal = bulk("Si", "diamond", a=5.43)
    crystal.rattle(0.02, seed=4)
    rows = vibrational_analysis([atoms, turned, crystal], model_path, delta=0.003)
    first, second, periodic = (row["modes"] for row in rows)
    assert first.n_rigid == 6 and first.frequencies.shape == (21,)
    np.testing.assert_allclose(second.frequencies, first.frequencies, rtol=1e-4, atol=1e-2)   # O(delta²) of FD
    assert periodic.n_rigid == 3 and periodic.frequencies.shape == (3,)
    assert rows[0]["energy"] == pytest.approx(rows[1]["energy"], abs=1e-9) and rows[0]["fmax"] > 0
    import mftcalc.workflows.vibrations as vibrations
    monkeypatch.setattr(vibrations, "BLOCK_ATOMS", 10)            # one structure per block: the same numbers
    for row, again in zip(rows, vibrational_analysis([atoms, turned, crystal], model_path, delta=0.003)):
        np.testing.assert_allclose(again["hessian"], row["hessian"], rtol=1e-10, atol=1e-10)
    data = vibrations_data(rows[0]["structure"], rows[0]["hessian"])
    np.testing.assert_allclose(data.get_hessian_2d(), rows[0]["hessian"])


def test_command_writes_the_table_and_the_modes_and_refuses_bad_input(model_path, tmp_path, capsys):
    data = tmp_path / "mols.extxyz"
    write_extxyz([Structure.from_ase(molecule(n)) for n in ("H2O", "NH3")], data)
    out, modes = tmp_path / "vib.csv", tmp_path / "vib.npz"
    assert main(["vibrations", str(model_path), str(data), "--out", str(out), "--modes", str(modes),
                 "--device", "cpu", "--fmax", "1e-6"]) == 0
    said = capsys.readouterr().out
    assert said.startswith("2 structures: ") and "not at a stationary point" in said and "mftcalc relax" in said
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["formula"] for r in rows] == ["H2O", "H3N"] and [r["n_rigid"] for r in rows] == ["6", "6"]
    saved = np.load(modes)
    assert saved["frequencies_0"].shape == (3,) and saved["modes_1"].shape == (6, 4, 3)
    assert saved["hessian_1"].shape == (12, 12)
    assert float(rows[0]["lowest_frequency_cm-1"]) == pytest.approx(saved["frequencies_0"][0], abs=0.01)
    # resumable: a killed run (one row kept) redoes only the rest, to the same file; changed options are refused
    full = out.read_text()
    out.write_text("".join(full.splitlines(keepends=True)[:2]))
    assert main(["vibrations", str(model_path), str(data), "--out", str(out), "--device", "cpu", "--fmax", "1e-6"]) == 0
    assert "(1 done by an earlier run)" in capsys.readouterr().out and out.read_text() == full
    assert main(["vibrations", str(model_path), str(data), "--out", str(out), "--delta", "0.01"]) == 1
    assert "holds results of a different run (delta 0.005 -> 0.01)" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="already holds 2 rows of an earlier run"):
        main(["vibrations", str(model_path), str(data), "--out", str(out), "--modes", str(modes)])
    with pytest.raises(SystemExit, match="written as .csv"):
        main(["vibrations", str(model_path), str(data), "--out", str(tmp_path / "v.txt")])
    with pytest.raises(SystemExit, match="--modes v.json: give a name ending in .npz"):
        main(["vibrations", str(model_path), str(data), "--out", str(out), "--modes", "v.json"])
    with pytest.raises(ValueError, match="delta must be a positive displacement"):
        hessians([molecule("H2O")], model_path, delta=0.0)
    from mftcalc.model.checkpoint import model_metadata, save_model
    from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset
    from mftcalc.model.mft_model import MFTModel
    property_only = MFTModel(ModelConfig(backbone=backbone_preset("tiny"),
                                         heads={"gap": HeadConfig(kind="scalar", unit="Hartree", hidden=(8,))}))
    save_model(property_only, tmp_path / "gap_only.pt", model_metadata(property_only, elements=[1, 8]))
    with pytest.raises(ValueError, match="no force-field head, so no forces to differentiate"):
        hessians([molecule("H2O")], tmp_path / "gap_only.pt")


def test_fixed_atoms_do_not_vibrate_as_in_ases_vibrations(model_path, tmp_path):
    """FixAtoms (extxyz move_mask) removes atoms from the Hessian as ASE's Vibrations does by default; no rigid-body
    projection then. Before, the fixed atoms vibrated and the modes were those of the free molecule."""
    from ase.constraints import FixAtoms
    atoms = molecule("CH3OH")
    atoms.rattle(0.02, seed=4)
    atoms.set_constraint(FixAtoms([0, 2]))
    structure = Structure.from_ase(atoms)
    ours = hessians([structure], model_path, delta=0.004)[0]
    assert ours.shape == (12, 12)                                          # 4 free atoms of 6
    atoms.calc = MFTCalculator(model_path, dtype=torch.float64)
    vib = Vibrations(atoms, delta=0.004, nfree=2, name=str(tmp_path / "vib"))
    vib.run()
    reference = vib.get_vibrations()
    assert list(reference.get_indices()) == [1, 3, 4, 5]
    np.testing.assert_allclose(ours, reference.get_hessian_2d(), atol=1e-9 * np.abs(ours).max())
    data = atoms.calc.get_vibrations(atoms, delta=0.004)
    assert list(data.get_indices()) == [1, 3, 4, 5]
    modes = normal_modes(structure, ours)
    assert modes.n_rigid == 0 and modes.frequencies.shape == (12,)
    ase_energies = reference.get_energies()                                # eV, imaginary as complex
    signed = np.where(np.abs(ase_energies.imag) > 0, -np.abs(ase_energies.imag), ase_energies.real)
    from ase.units import invcm
    np.testing.assert_allclose(np.sort(modes.frequencies), np.sort(signed) / invcm, rtol=1e-6, atol=1e-3)
    assert np.abs(modes.modes[:, [0, 2]]).max() == 0.0
    from ase.io import write
    write(tmp_path / "fixed.extxyz", atoms)
    assert main(["vibrations", str(model_path), str(tmp_path / "fixed.extxyz"), "--out", str(tmp_path / "v.csv"),
                 "--modes", str(tmp_path / "v.npz")]) == 0
    row = next(csv.DictReader(open(tmp_path / "v.csv")))
    assert row["n_rigid"] == "0" and np.load(tmp_path / "v.npz")["hessian_0"].shape == (12, 12)
