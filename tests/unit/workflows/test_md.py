"""``mftcalc md``: ASE's integrators on the model, energy conservation (NVE), resume from the last complete frame
(equal to an uninterrupted run), the committee's deviation per frame and its stop, and the refusals."""
from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import molecule

from _helpers import save_tiny_model
from mftcalc.cli import main
from mftcalc.workflows.md import MDSettings


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return str(save_tiny_model(tmp_path_factory.mktemp("md") / "m.pt"))


@pytest.fixture
def start(tmp_path):
    atoms = molecule("CH3OH")
    atoms.info["dataset"] = "a"
    ase.io.write(tmp_path / "start.extxyz", atoms)
    return str(tmp_path / "start.extxyz")


def _md(model, start, out, *extra):
    return main(["md", model, start, "--out", str(out), *extra])


def test_nve_conserves_the_total_energy(model_file, start, tmp_path):
    assert _md(model_file, start, tmp_path / "nve.extxyz", "--ensemble", "nve", "--temperature", "300",
               "--timestep", "0.25", "--steps", "200", "--interval", "10", "--dtype", "float64") == 0
    frames = ase.io.read(tmp_path / "nve.extxyz", ":")
    total = np.array([f.info["energy_eV"] + f.info["kinetic_eV"] for f in frames])
    kinetic = np.array([f.info["kinetic_eV"] for f in frames])
    assert len(frames) == 21 and [f.info["md_step"] for f in frames[:3]] == [0, 10, 20]
    assert np.ptp(kinetic) > 1e-3                                    # energy flows between kinetic and potential
    assert np.ptp(total) < 0.01 * np.ptp(kinetic)                    # ... and the sum stays


def test_a_resumed_run_continues_as_an_uninterrupted_one(model_file, start, tmp_path, capsys):
    whole, split = tmp_path / "whole.extxyz", tmp_path / "split.extxyz"
    assert _md(model_file, start, whole, "--steps", "40", "--interval", "10", "--dtype", "float64") == 0
    assert _md(model_file, start, split, "--steps", "20", "--interval", "10", "--dtype", "float64") == 0
    with open(split, "a") as fh:                                     # a frame cut short by a killed run
        fh.write("6\nProperties=species:S:1:pos:R:3 md_step=30\nC 0.0 0.0\n")
    assert _md(model_file, start, split, "--steps", "40", "--interval", "10", "--dtype", "float64") == 0
    assert "last frame was cut short" in capsys.readouterr().out
    a, b = ase.io.read(whole, ":"), ase.io.read(split, ":")
    assert [f.info["md_step"] for f in b] == [0, 10, 20, 30, 40]
    np.testing.assert_allclose(b[-1].positions, a[-1].positions, atol=1e-5)     # frames keep 8 decimals
    np.testing.assert_allclose(b[-1].get_momenta(), a[-1].get_momenta(), atol=1e-4)
    capsys.readouterr()
    assert _md(model_file, start, split, "--steps", "60", "--temperature", "500") == 1
    assert "temperature differ" in capsys.readouterr().err
    lines = whole.read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.extxyz"                              # frame 1 of 5 broken, later ones whole
    n = int(lines[0])
    damaged.write_text("".join(lines[:n + 4] + ["C x y z\n"] * n + lines[2 * n + 4:]))
    (tmp_path / "damaged.extxyz.provenance.json").write_text((tmp_path / "whole.extxyz.provenance.json").read_text())
    assert _md(model_file, start, damaged, "--steps", "40", "--interval", "10", "--dtype", "float64") == 1
    assert "frame 1 of 5 cannot be read" in capsys.readouterr().err
    (tmp_path / "stray.extxyz").write_text(whole.read_text())
    assert _md(model_file, start, tmp_path / "stray.extxyz") == 1
    assert "without its run record" in capsys.readouterr().err


def test_a_committee_marks_each_frame_and_stops_past_the_bound(model_file, start, tmp_path, capsys):
    others = [str(save_tiny_model(tmp_path / f"m{k}.pt", seed=k)) for k in (1, 2)]
    assert _md(model_file, start, tmp_path / "c.extxyz", "--steps", "30", "--committee", *others) == 0
    frames = ase.io.read(tmp_path / "c.extxyz", ":")
    devi = [f.info["max_devi_f"] for f in frames]
    assert len(frames) == 4 and min(devi) > 0
    assert _md(model_file, start, tmp_path / "stop.extxyz", "--steps", "30", "--committee", *others,
               "--stop-devi", f"{min(devi) / 2:g}") == 0
    assert len(ase.io.read(tmp_path / "stop.extxyz", ":")) == 1 and "stopped at step 0" in capsys.readouterr().out


def test_bad_options_are_refused_by_name(model_file, start, tmp_path, capsys):
    two = tmp_path / "two.extxyz"
    ase.io.write(two, [molecule("CH4"), molecule("H2O")])
    with pytest.raises(SystemExit, match="holds 2 structures; choose one with --index"):
        _md(model_file, str(two), tmp_path / "o.extxyz")
    with pytest.raises(SystemExit, match="--index 5: .* holds 2 structures"):
        _md(model_file, str(two), tmp_path / "o.extxyz", "--index", "5")
    with pytest.raises(SystemExit, match="ending in .extxyz"):
        _md(model_file, start, tmp_path / "o.traj")
    for extra, message in ((["--temperature", "-5"], "temperature"), (["--timestep", "0"], "timestep"),
                           (["--steps", "0"], "steps=0"), (["--stop-devi", "0.3"], "needs a committee")):
        assert _md(model_file, start, tmp_path / "o.extxyz", *extra) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.extxyz").exists()
    with pytest.raises(ValueError, match="ensemble='npt'"):
        MDSettings(ensemble="npt").check(committee=False)
