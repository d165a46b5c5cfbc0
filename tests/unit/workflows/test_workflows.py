"""Workflows and model commands: screening (resumable), phonons, export/predict/relax/demo CLI."""
from __future__ import annotations

import csv
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk

from _helpers import make_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.cli import main
from mftcalc.data.io import read_structures
from mftcalc.model.checkpoint import model_metadata, save_model
from mftcalc.analysis.plots import plot_phonons
from mftcalc.workflows.phonons import band_path, phonons, zero_point_energy
from mftcalc.workflows.screening import example_path, screen


EXAMPLES = Path(__file__).resolve().parents[3] / "examples"

# the tiny model's two datasets: "a" for molecules of H, C, N, O, "b" for Si crystals (inferred per structure)
TINY_DOMAINS = {"a": {"elements": [1, 6, 7, 8], "periodic": False}, "b": {"elements": [14], "periodic": True}}


@pytest.fixture
def model_file(tmp_path):
    model = make_tiny_model()
    path = tmp_path / "tiny.pt"
    save_model(model, path, model_metadata(model, elements=[1, 6, 7, 8, 14], dataset_domains=TINY_DOMAINS))
    return path


def test_screen_resumes_without_redoing_rows(model_file, tmp_path):
    out = tmp_path / "results.csv"
    rows = screen(example_path(), model_file, out, do_relax=True, steps=5, chunk=3, progress=False)
    assert len(rows) == 8 and {"gap_Hartree", "mu_Debye", "r2_bohr2", "energy_eV", "converged"} <= set(rows[0])
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:4]) + "\n")           # as if killed after the first chunk
    again = screen(example_path(), model_file, out, do_relax=True, steps=5, chunk=3, progress=False)
    with open(out, newline="") as fh:
        written = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in written] == list(range(8))
    assert [float(r["gap_Hartree"]) for r in again] == pytest.approx([float(r["gap_Hartree"]) for r in rows])


def test_screen_writes_extxyz_with_results(model_file, tmp_path):
    out = tmp_path / "relaxed.extxyz"
    screen(example_path(), model_file, out, do_relax=True, steps=3, progress=False)
    relaxed = read_structures(out, properties=["gap_Hartree"])
    assert len(relaxed) == 8 and "gap_Hartree" in relaxed[0].properties


@pytest.fixture
def no_seekpath(monkeypatch):
    """A fresh install: seekpath (phonopy's and pymatgen's optional band-path helper) cannot be imported."""
    monkeypatch.setitem(sys.modules, "seekpath", None)


def test_phonons_of_silicon(model_file, tmp_path, no_seekpath):
    atoms = bulk("Si", "diamond", a=5.43)
    ph = phonons(atoms, MFTCalculator(model_file, dtype=torch.float64), supercell=(2, 2, 2), mesh=(4, 4, 4))
    fc = ph.force_constants
    assert fc.shape[0] == 16 and np.isfinite(fc).all()
    assert np.isfinite(zero_point_energy(ph))
    assert np.abs(ph.mesh.qpoints).sum(axis=1).min() == 0.0          # a Γ-centred mesh (Γ is one of its points)
    qpoints, connections, labels = band_path(ph, npoints=11)         # fcc: ASE's GXWKGLUWLK,UX
    assert labels[0] == r"$\Gamma$" and len(labels) == 12 and connections.count(False) == 2
    assert np.allclose(qpoints[0][0], 0.0) and np.allclose(qpoints[0][-1], [0.5, 0.0, 0.5])   # Γ -> X
    plot = tmp_path / "si_phonons.png"
    plot_phonons(ph, str(plot), npoints=11)
    assert plot.stat().st_size > 10_000


def test_phonons_batched_through_the_model_equal_the_calculator_one_by_one(model_file, no_seekpath):
    from ase.calculators.mixing import LinearCombinationCalculator
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.03, seed=0)                                    # no symmetry left: six or more displacements
    calc = MFTCalculator(model_file, dtype=torch.float64)
    batched = phonons(atoms, calc, supercell=(2, 2, 2), mesh=(2, 2, 2))
    one_by_one = phonons(atoms, LinearCombinationCalculator([calc], [1.0]), supercell=(2, 2, 2), mesh=(2, 2, 2))
    assert len(batched.supercells_with_displacements) > 1
    np.testing.assert_allclose(batched.force_constants, one_by_one.force_constants, rtol=1e-9, atol=1e-10)


def test_crystal_phonons_example_runs_without_seekpath(model_file, tmp_path, monkeypatch, no_seekpath, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["crystal_phonons.py", str(model_file)])
    runpy.run_path(str(EXAMPLES / "crystal_phonons.py"), run_name="__main__")
    assert "wrote si_phonons.png" in capsys.readouterr().out
    assert (tmp_path / "si_phonons.png").stat().st_size > 10_000


def test_cli_export_predict_relax(model_file, tmp_path):
    export = tmp_path / "tiny_script.pt"
    assert main(["export", str(model_file), "-o", str(export), "--dtype", "float64"]) == 0
    from mftcalc.data import Structure, collate
    from mftcalc.model.checkpoint import load_model
    scripted = torch.jit.load(str(export))          # plain torch loads it, in the dtype asked for, same results
    assert next(scripted.parameters()).dtype == torch.float64
    si = collate([Structure.from_ase(bulk("Si", "diamond", a=5.43))], torch.float64, dataset=1)
    torch.testing.assert_close(scripted(si)["energy"], load_model(model_file, torch.float64)(si)["energy"],
                               rtol=1e-12, atol=1e-12)
    assert main(["predict", str(export), str(example_path()), "--out", str(tmp_path / "p.csv"),
                 "--dtype", "float64"]) == 0
    assert main(["relax", str(model_file), str(example_path()), "--out", str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 8
    # the TorchScript export on two worker processes: the same relaxations as in this process
    for workers, name in ((1, "r1.csv"), (2, "r2.csv")):
        assert main(["relax", str(export), str(example_path()), "--out", str(tmp_path / name), "--dtype", "float64",
                     "--steps", "4", "--optimizer", "bfgs", "--workers", str(workers)]) == 0
    rows = []
    for name in ("r1.csv", "r2.csv"):
        with open(tmp_path / name, newline="") as fh:
            rows.append(list(csv.DictReader(fh)))
    assert len(rows[0]) == 8
    for a, b in zip(*rows):
        assert a["steps"] == b["steps"]
        assert float(a["energy_eV"]) == pytest.approx(float(b["energy_eV"]), abs=1e-8)


def test_demo_runs_on_a_given_model(model_file, tmp_path, capsys):
    assert main(["demo", "--model", str(model_file), "--out-dir", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    assert "CH3CH2OH" in printed and (tmp_path / "demo" / "demo.png").exists()

