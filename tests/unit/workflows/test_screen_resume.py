"""Issue 18: the resumable screen CSV (torn rows, provenance, lock), per-structure failures in a screen, and
output columns with units."""
from __future__ import annotations

import csv

import pytest
import torch
from ase.build import molecule

from _helpers import save_tiny_model
from mftcalc.data import Structure
from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.workflows.results_store import OutputLockedError, ResumeError, acquire_lock
from mftcalc.workflows.screening import example_path, screen, summary, unit_tag


def _save(path, seed=0):
    return save_tiny_model(path, seed=seed)


@pytest.fixture
def model_file(tmp_path):
    return _save(tmp_path / "tiny.pt")


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _predict(model, out, **kw):
    return screen(example_path(), model, out, do_relax=False, chunk=3, progress=False, dtype=torch.float64, **kw)


def test_torn_row_is_redone_and_the_next_structure_is_kept(model_file, tmp_path):
    out = tmp_path / "p.csv"
    first = _predict(model_file, out)
    text = out.read_text()
    lines = text.splitlines(keepends=True)
    out.write_text("".join(lines[:5]) + lines[5][:12])            # killed while writing structure 4's row
    with pytest.warns(UserWarning, match="dropped 1 torn or invalid row.*torn last line"):
        again = _predict(model_file, out)
    written = _rows(out)
    assert sorted(int(r["index"]) for r in written) == list(range(8))   # every structure once, none lost
    assert out.read_text().endswith("\n")
    by_index = {int(r["index"]): r for r in written}
    for r in first:
        assert float(by_index[int(r["index"])]["energy_eV"]) == pytest.approx(float(r["energy_eV"]))
    assert [float(r["gap_Hartree"]) for r in again] == pytest.approx([float(r["gap_Hartree"]) for r in first])
    broken = out.read_text().replace(lines[2].split(",")[5], "1.2.3", 1)      # a value that is not a number
    out.write_text(broken)
    with pytest.warns(UserWarning, match="energy_eV = '1.2.3' is not a number"):
        _predict(model_file, out)
    assert sorted(int(r["index"]) for r in _rows(out)) == list(range(8))


def test_resume_with_another_model_or_options_is_refused(model_file, tmp_path):
    out = tmp_path / "r.csv"
    screen(example_path(), model_file, out, do_relax=True, steps=2, chunk=3, progress=False)
    other = _save(tmp_path / "other.pt", seed=1)
    cases = [(dict(model=model_file, do_relax=True, steps=2, fmax=0.01), "fmax 0.05 -> 0.01"),
             (dict(model=model_file, do_relax=True, steps=2, optimizer="bfgs"), "optimizer 'fire' -> 'bfgs'"),
             (dict(model=model_file, do_relax=False), "relax True -> False"),
             (dict(model=other, do_relax=True, steps=2), "model file .*other.pt")]
    for kwargs, change in cases:
        model = kwargs.pop("model")
        with pytest.raises(ResumeError, match=f"different run .*{change}.*new --out, or delete r.csv"):
            screen(example_path(), model, out, chunk=3, progress=False, **kwargs)
    assert len(_rows(out)) == 8                                     # the refused runs left the results alone
    legacy = tmp_path / "legacy.csv"
    legacy.write_text(out.read_text())                              # an older mftcalc's file: no provenance
    with pytest.raises(ResumeError, match="no provenance record"):
        screen(example_path(), model_file, legacy, do_relax=True, steps=2, progress=False)


def test_second_concurrent_run_is_refused(model_file, tmp_path):
    out = tmp_path / "p.csv"
    fd = acquire_lock(tmp_path / "p.csv.lock", out)                 # as a first run holds it
    try:
        with pytest.raises(OutputLockedError, match="another mftcalc run is writing .*p.csv"):
            _predict(model_file, out)
    finally:
        import os
        os.close(fd)
    assert len(_predict(model_file, out)) == 8                      # free again once the first run ends


def test_screen_records_failures_per_structure_and_carries_on(model_file, tmp_path):
    structures = read_structures(example_path())[:3]
    atoms = molecule("H2O")
    atoms.positions[1] = atoms.positions[0] + [0.1, 0.0, 0.0]
    overlapping = Structure.from_ase(atoms).with_labels(info={"name": "overlap"})
    chlorine = Structure.from_ase(molecule("CH3Cl")).with_labels(info={"name": "chloro"})
    inputs = tmp_path / "in.extxyz"
    write_extxyz([structures[0], overlapping, structures[1], chlorine, structures[2]], inputs)
    out = tmp_path / "s.csv"
    rows = screen(inputs, model_file, out, do_relax=True, steps=3, progress=False)
    assert [bool(r["error"]) for r in rows] == [False, True, False, True, False]
    assert "overlapping atoms" in rows[1]["error"] and "Cl" in rows[3]["error"]
    assert rows[1]["gap_Hartree"] == "" and rows[1]["energy_eV"] == ""          # no numbers for bad input
    assert all(r["gap_Hartree"] != "" and r["dataset"] == "a" for r in rows if not r["error"])
    assert [bool(r["error"]) for r in _rows(out)] == [False, True, False, True, False]
    text = summary(rows, relaxed=True)
    assert text.startswith("5 structures: ") and "2 failed" in text and "overlapping atoms" in text
    xyz = tmp_path / "s.extxyz"                                     # extxyz: the failures keep their error
    screen(inputs, model_file, xyz, do_relax=False, progress=False)
    assert [("error" in s.info) for s in read_structures(xyz)] == [False, True, False, True, False]


def test_columns_carry_units(model_file, tmp_path):
    rows = _predict(model_file, tmp_path / "p.csv")
    assert list(rows[0])[:9] == ["index", "name", "formula", "n_atoms", "dataset", "energy_eV", "fmax_eV_per_A",
                                 "steps", "converged"]
    assert {"gap_Hartree", "mu_Debye", "r2_bohr2", "error"} <= set(rows[0])
    assert [unit_tag(u) for u in ("eV/Å", "eV/Å^3", "cal/mol/K", "unitless", "")] == [
        "eV_per_A", "eV_per_A3", "cal_per_mol_per_K", "unitless", "unitless"]


def test_a_prediction_is_not_called_unconverged(model_file, tmp_path):
    """``converged`` is empty for a structure that was predicted, not relaxed (False read as a failed relaxation);
    a prediction written with False before that change still resumes; a relaxation needs True or False."""
    out = tmp_path / "p.csv"
    _predict(model_file, out)
    assert {r["converged"] for r in _rows(out)} == {""} and {r["steps"] for r in _rows(out)} == {"0"}
    out.write_text(out.read_text().replace(",0,,", ",0,False,"))         # as predictions were written before
    _predict(model_file, out)                                           # every row kept: no torn-row warning
    assert {r["converged"] for r in _rows(out)} == {"False"}
    relaxed = tmp_path / "r.csv"
    screen(example_path(), model_file, relaxed, do_relax=True, steps=2, chunk=3, progress=False,
           dtype=torch.float64)
    assert {r["converged"] for r in _rows(relaxed)} <= {"True", "False"}
    relaxed.write_text(relaxed.read_text().replace(",True,", ",,").replace(",False,", ",,"))
    with pytest.warns(UserWarning, match="converged = '' is not 'True' or 'False'"):
        screen(example_path(), model_file, relaxed, do_relax=True, steps=2, chunk=3, progress=False,
               dtype=torch.float64)
