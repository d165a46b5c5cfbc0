"""Issue 18: screen/relax/predict outputs an ASE user can read back (energy, forces, stress as calculator results in
extxyz and ASE db), unknown ``--out`` suffixes refused, and lists of ASE/pymatgen/mftcalc structures as input."""
from __future__ import annotations

import ase.db
import ase.io
import ase.utils
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from pymatgen.core import Molecule

from _helpers import save_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.cli import main
from mftcalc.data import Structure, read_structures, write_extxyz
from mftcalc.workflows.results_store import ResumeError
from mftcalc.workflows.screening import example_path, screen



@pytest.fixture
def model_file(tmp_path):
    return save_tiny_model(tmp_path / "tiny.pt")


@pytest.fixture
def inputs(tmp_path):
    """Two molecules, a Si crystal and an overlapping (failing) molecule; the first carries a made-up DFT label."""
    molecules = read_structures(example_path())[:2]
    silicon = bulk("Si", "diamond", a=5.45)
    silicon.rattle(0.03, seed=0)
    bad = molecule("H2O")
    bad.positions[1] = bad.positions[0] + [0.1, 0.0, 0.0]
    path = tmp_path / "in.extxyz"
    write_extxyz([molecules[0].with_labels(energy=123.0), molecules[1], Structure.from_ase(silicon),
                  Structure.from_ase(bad)], path)
    return path


@pytest.fixture
def ase_db_gives_up(monkeypatch):
    """ASE's database waits for ever on a taken lock file; here it gives up after ~6 s, so a clash fails the test."""
    monkeypatch.setattr(ase.utils.Lock.__init__, "__defaults__", ("lock", None, 5.0))


def _check_results(frames, n_ok=3):
    for atoms in frames[:n_ok]:
        assert atoms.get_potential_energy() == pytest.approx(atoms.info["energy_eV"], abs=1e-9)
        assert atoms.get_forces().shape == (len(atoms), 3) and "gap_Hartree" in atoms.info
    assert frames[0].get_potential_energy() != pytest.approx(123.0)          # the model's, not the input's label
    assert frames[2].get_stress().shape == (6,) and frames[2].info["dataset"] == "b"
    assert frames[3].calc is None and "overlapping" in frames[3].info["error"]   # a failure has no results


@pytest.mark.parametrize("command, name", [("relax", "r.extxyz"), ("relax", "r.xyz.gz"), ("predict", "p.extxyz")])
def test_extxyz_outputs_hold_energy_forces_stress_as_ase_results(model_file, inputs, tmp_path, command, name):
    out = tmp_path / name
    extra = ["--steps", "3"] if command == "relax" else []
    assert main([command, str(model_file), str(inputs), "--out", str(out), "--dtype", "float64"] + extra) == 0
    _check_results(ase.io.read(out, ":"))
    crystal = ase.io.read(out, "2")
    written = crystal.get_forces(), crystal.get_stress()
    crystal.calc = MFTCalculator(model_file, dtype=torch.float64)          # the calculator's at the written geometry
    assert np.allclose(written[0], crystal.get_forces(), atol=1e-6)
    assert np.allclose(written[1], crystal.get_stress(), atol=1e-6)


def test_screen_db_output_holds_ase_results(model_file, inputs, tmp_path, ase_db_gives_up):
    out = tmp_path / "s.db"
    screen(inputs, model_file, out, do_relax=True, steps=3, progress=False, dtype=torch.float64)
    with ase.db.connect(out) as db:
        rows = list(db.select())
    frames = []
    for row in rows:
        frames.append(row.toatoms())
        frames[-1].info.update(row.key_value_pairs)
    _check_results(frames)
    assert rows[0].key_value_pairs["energy_eV"] == pytest.approx(rows[0].energy)


@pytest.mark.parametrize("name", ["r.json", "r.cif", "r.csv.gz", "results"])
def test_unknown_output_suffixes_are_refused(model_file, inputs, tmp_path, capsys, name):
    out = tmp_path / name
    assert main(["relax", str(model_file), str(inputs), "--out", str(out), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "which mftcalc does not write" in err
    for suffix in (".csv", ".extxyz", ".xyz", ".extxyz.gz", ".xyz.gz", ".db"):
        assert suffix in err
    assert not out.exists()
    with pytest.raises(ValueError, match="does not write"):
        screen(inputs, model_file, out, progress=False)


def test_screen_takes_a_list_of_ase_pymatgen_and_mftcalc_structures(model_file, tmp_path):
    co = Molecule(["C", "O"], [[0.0, 0.0, 0.0], [0.0, 0.0, 1.15]])
    items = [molecule("CH4"), co, Structure.from_ase(molecule("H2O")), bulk("Si", "diamond", a=5.45)]
    out = tmp_path / "s.csv"
    rows = screen(items, model_file, out, do_relax=True, steps=3, progress=False, dtype=torch.float64)
    assert [r["formula"] for r in rows] == ["CH4", "CO", "H2O", "Si2"] and not any(r["error"] for r in rows)
    again = screen(items, model_file, out, do_relax=True, steps=3, progress=False, dtype=torch.float64)
    assert [r["energy_eV"] for r in again] == [str(r["energy_eV"]) for r in rows]     # resumed: read back
    with pytest.raises(ResumeError, match="input"):
        screen(items[:3] + [bulk("Si", "diamond", a=5.5)], model_file, out, do_relax=True, steps=3, progress=False,
               dtype=torch.float64)
    with pytest.raises(TypeError, match=r"structures\[1\] is a str; screen takes"):
        screen([items[0], "CH4"], model_file, tmp_path / "t.csv", progress=False)
