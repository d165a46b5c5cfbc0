"""GFN2-xTB labeller: units against tblite and finite differences, conformer generation, resumable runner,
failure accounting and test-set exclusion (small molecules; the whole file takes well under a minute)."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from ase.build import molecule

from mftcalc.data import Structure
from mftcalc.labelling import xtb
from mftcalc.labelling.conformers import KINDS, MIN_DISTANCE, allocate, generate_conformers, min_distance
from mftcalc.labelling.labeller import (CHUNK_SUFFIX, LABELLER_VERSION, MANIFEST, OLD_CHUNK_SUFFIX, chunk_path,
                                        compact_chunks, label_molecules, read_labelled, select_molecules)

NAMES = ("H2O", "CH4", "C2H6")


def make_molecules(names=NAMES) -> list:
    out = []
    for i, name in enumerate(names):
        s = Structure.from_ase(molecule(name))
        s.info = {"qm9_index": 10 * (i + 1)}
        out.append(s)
    return out


def frames_by_key(frames: list) -> dict:
    return {(int(s.info["qm9_index"]), int(s.info["conformer"])): s for s in frames}


# ----------------------------------------------------------------------------------------------- xTB labels
def test_labels_match_tblite_in_ev_and_angstrom():
    from tblite.interface import Calculator

    s = make_molecules()[2]
    s = s.with_labels(positions=s.positions + np.random.default_rng(0).normal(scale=0.05, size=s.positions.shape))
    calc = Calculator("GFN2-xTB", s.numbers, s.positions / 0.529177210903)
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    labelled = xtb.label(s)
    assert labelled.energy == pytest.approx(res.get("energy") * 27.211386245988, abs=1e-6)
    np.testing.assert_allclose(labelled.forces, -res.get("gradient") * 27.211386245988 / 0.529177210903, atol=1e-6)
    assert labelled.properties["xtb_dipole"] == pytest.approx(np.linalg.norm(res.get("dipole")) * 2.541746473)
    assert labelled.property_units == {"xtb_dipole": "Debye"}
    np.testing.assert_allclose(labelled.info["xtb_charges"], res.get("charges"))
    assert abs(labelled.info["xtb_charges"].sum()) < 1e-6  # neutral


def test_forces_are_minus_energy_gradient():
    s = make_molecules()[1]
    x = s.positions + np.random.default_rng(1).normal(scale=0.05, size=s.positions.shape)
    forces = xtb.singlepoint(s.numbers, x).forces
    h = 1e-3
    for atom, axis in [(0, 0), (1, 2), (3, 1)]:
        d = np.zeros_like(x)
        d[atom, axis] = h
        fd = -(xtb.singlepoint(s.numbers, x + d).energy - xtb.singlepoint(s.numbers, x - d).energy) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, abs=5e-3)


def test_nonfinite_result_raises(monkeypatch):
    def nan_energy(numbers, positions_bohr, method):
        n = len(numbers)
        return {"energy": np.array(np.nan), "gradient": np.zeros((n, 3)), "dipole": np.zeros(3),
                "charges": np.zeros(n)}

    monkeypatch.setattr(xtb, "_run_tblite", nan_energy)
    with pytest.raises(xtb.XTBError, match="non-finite energy"):
        xtb.label(make_molecules()[0])


# ----------------------------------------------------------------------------------------------- conformers
def test_allocate():
    assert allocate(7) == {"equilibrium": 1, "rattle": 2, "normal_mode": 2, "md": 2}
    assert allocate(3) == {"equilibrium": 0, "rattle": 1, "normal_mode": 1, "md": 1}
    assert allocate(9) == {"equilibrium": 1, "rattle": 3, "normal_mode": 3, "md": 2}
    with pytest.raises(ValueError):
        allocate(0)


def test_conformers_all_kinds_deterministic_and_separated():
    s = make_molecules()[2]
    confs, failures = generate_conformers(s, 9, seed=3)
    assert not failures and len(confs) == 9
    assert {c.info["kind"] for c in confs} == set(KINDS)
    assert [c.info["conformer"] for c in confs] == list(range(9))
    assert all(min_distance(c.positions) >= MIN_DISTANCE for c in confs)
    assert len({c.info["amplitude"] for c in confs if c.info["kind"] == "rattle"}) == 3
    assert all(c.info["temperature"] > 0 for c in confs if c.info["kind"] in ("normal_mode", "md"))
    again, _ = generate_conformers(s, 9, seed=3)
    for a, b in zip(confs, again):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.info == b.info
    other, _ = generate_conformers(s, 9, seed=4)
    assert not np.allclose(other[1].positions, confs[1].positions)
    # a kind's stream does not depend on how many conformers the other kinds get
    fewer, _ = generate_conformers(s, 5, seed=3)
    np.testing.assert_array_equal(fewer[1].positions, confs[1].positions)


def test_overlapping_atoms_are_rejected_and_reported():
    s = Structure(positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.3], [0.0, 0.9, 0.0]], numbers=[8, 1, 1],
                  info={"qm9_index": 7})
    confs, failures = generate_conformers(s, 4, seed=0)
    assert all(min_distance(c.positions) >= MIN_DISTANCE for c in confs)
    assert {"qm9_index": 7, "kind": "equilibrium", "conformer": 0, "stage": "generate"}.items() <= \
        failures[0].items()
    assert len(confs) + len(failures) == 4


# ----------------------------------------------------------------------------------------------- runner
def test_resume_recomputes_only_missing_chunk(tmp_path):
    mols = make_molecules()
    summary = label_molecules(mols, tmp_path, conformers_per_molecule=4, workers=1, chunk_size=1, seed=0,
                              progress=False)
    assert summary["n_conformers"] == 12 and summary["failures"] == 0
    assert summary["counts"] == {"equilibrium": 3, "rattle": 3, "normal_mode": 3, "md": 3}
    forces = summary["force_norm_percentiles_eV_per_A"]
    assert forces["equilibrium"]["p50"] < forces["rattle"]["p50"] and forces["all"]["max"] > 1.0
    first = frames_by_key(read_labelled(tmp_path))
    assert len(first) == 12
    mtimes = {c: chunk_path(tmp_path, c).stat().st_mtime_ns for c in range(3)}
    chunk_path(tmp_path, 1).unlink()
    again = label_molecules(mols, tmp_path, conformers_per_molecule=4, workers=1, chunk_size=1, seed=0,
                            progress=False)
    assert again["chunks_computed_this_run"] == 1 and again["conformers_this_run"] == 4
    assert again["n_conformers"] == 12
    assert chunk_path(tmp_path, 0).stat().st_mtime_ns == mtimes[0]
    assert chunk_path(tmp_path, 2).stat().st_mtime_ns == mtimes[2]
    second = frames_by_key(read_labelled(tmp_path))
    assert second.keys() == first.keys()
    for key, a in first.items():
        b = second[key]
        assert a.info["kind"] == b.info["kind"]
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-7)
        assert b.energy == pytest.approx(a.energy, abs=1e-6)
        np.testing.assert_allclose(b.forces, a.forces, atol=1e-6)
    nothing = label_molecules(mols, tmp_path, conformers_per_molecule=4, workers=1, chunk_size=1, seed=0,
                              progress=False)
    assert nothing["chunks_computed_this_run"] == 0 and nothing["conformers_per_s"] is None
    with pytest.raises(ValueError, match="different seed"):
        label_molecules(mols, tmp_path, conformers_per_molecule=4, workers=1, chunk_size=1, seed=1)


def test_chunks_are_compact_and_old_runs_convert(tmp_path):
    """Chunks are xz with positions/forces at 1e-6 and charges at 1e-5; an older run's exact .gz chunks count as done
    (no relabelling) and compact_chunks rewrites them as the same frames within the rounding."""
    from mftcalc.data.io import write_extxyz

    mols = make_molecules(("H2O", "CH4"))
    label_molecules(mols, tmp_path / "new", conformers_per_molecule=3, workers=1, chunk_size=1, progress=False)
    assert chunk_path(tmp_path / "new", 0).name == f"chunk_00000{CHUNK_SUFFIX}"
    assert chunk_path(tmp_path / "new", 0).read_bytes().startswith(b"\xfd7zXZ")
    frames = read_labelled(tmp_path / "new")
    for s in frames:
        for values, decimals in ((s.positions, 6), (s.forces, 6), (s.info["xtb_charges"], 5)):
            np.testing.assert_array_equal(values, np.round(values, decimals))
    # an older run: the same frames written exactly as .extxyz.gz (with jitter below the rounding)
    old = tmp_path / "old"
    old.mkdir()
    for name in (MANIFEST, "chunk_00000.json", "chunk_00001.json"):
        (old / name).write_bytes((tmp_path / "new" / name).read_bytes())
    exact = {}
    for c in (0, 1):
        chunk = [s.with_labels(positions=s.positions + 1e-8, forces=s.forces - 1e-8)
                                       for s in frames if s.info["qm9_index"] == mols[c].info["qm9_index"]]
        write_extxyz(chunk, chunk_path(old, c, OLD_CHUNK_SUFFIX))
        exact[c] = chunk
    again = label_molecules(mols, old, conformers_per_molecule=3, workers=1, chunk_size=1, progress=False)
    assert again["chunks_computed_this_run"] == 0
    counts = compact_chunks(old)
    assert counts["chunks"] == 2 and counts["bytes_after"] < counts["bytes_before"]
    assert not list(old.glob(f"*{OLD_CHUNK_SUFFIX}"))
    converted = read_labelled(old)
    assert len(converted) == len(frames)
    for a, b in zip(exact[0] + exact[1], converted):
        assert a.energy == b.energy and a.info["kind"] == b.info["kind"]
        np.testing.assert_allclose(b.positions, a.positions, atol=0.51e-6, rtol=0)
        np.testing.assert_allclose(b.forces, a.forces, atol=0.51e-6, rtol=0)


def test_frames_and_manifest_carry_the_labeller_version(tmp_path):
    """Version 2 (normal modes of geometry.lindh's Hessian) is written into every frame and the manifest; a version-1
    run (no key in its manifest, like data/xtb) stays readable but is not resumed with the new conformers."""
    mols = make_molecules(("H2O",))
    label_molecules(mols, tmp_path / "new", conformers_per_molecule=2, workers=1, chunk_size=1, progress=False)
    assert LABELLER_VERSION == 2
    assert json.loads((tmp_path / "new" / MANIFEST).read_text())["labeller_version"] == 2
    frames = read_labelled(tmp_path / "new")
    assert len(frames) == 2 and all(s.info["labeller_version"] == 2 for s in frames)
    old = tmp_path / "old"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"format": 1, "method": xtb.METHOD, "seed": 0,
                                            "conformers_per_molecule": 2, "chunk_size": 1, "qm9_indices": [10]}))
    with pytest.raises(ValueError, match="labeller version 1, this is version 2"):
        label_molecules(mols, old, conformers_per_molecule=2, workers=1, chunk_size=1, progress=False)


def test_failures_are_logged_and_counted(tmp_path, monkeypatch):
    real = xtb._run_tblite

    def flaky(numbers, positions_bohr, method):
        if len(numbers) == 3:  # every H2O single point raises
            raise RuntimeError("SCF not converged (injected)")
        out = real(numbers, positions_bohr, method)
        if len(numbers) == 5:  # every CH4 single point returns NaN
            out["energy"] = np.array(np.nan)
        return out

    monkeypatch.setattr(xtb, "_run_tblite", flaky)
    summary = label_molecules(make_molecules(), tmp_path, conformers_per_molecule=3, workers=1, chunk_size=2,
                              progress=False)
    assert summary["n_conformers"] == 3 and summary["failures"] == 6
    assert summary["failures_by_stage"] == {"label": 6}
    lines = (tmp_path / "failures.log").read_text().splitlines()
    assert len(lines) == 6
    assert sum("qm9_index 10 " in line and "injected" in line for line in lines) == 3
    assert sum("qm9_index 20 " in line and "non-finite energy" in line for line in lines) == 3
    assert json.loads((tmp_path / "summary.json").read_text())["failures"] == 6
    assert {int(s.info["qm9_index"]) for s in read_labelled(tmp_path)} == {30}


def test_two_workers_match_one(tmp_path):
    mols = make_molecules()
    one = label_molecules(mols, tmp_path / "one", conformers_per_molecule=3, workers=1, chunk_size=1,
                          progress=False)
    two = label_molecules(mols, tmp_path / "two", conformers_per_molecule=3, workers=2, chunk_size=1,
                          progress=False)
    assert one["counts"] == two["counts"] and two["failures"] == 0
    a, b = frames_by_key(read_labelled(tmp_path / "one")), frames_by_key(read_labelled(tmp_path / "two"))
    assert a.keys() == b.keys()
    for key in a:  # both single-threaded, so identical up to the file precision
        np.testing.assert_allclose(b[key].positions, a[key].positions, atol=1e-7)
        assert b[key].energy == pytest.approx(a[key].energy, abs=1e-6)


# ----------------------------------------------------------------------------------------------- exclusion
def test_select_molecules_never_returns_excluded():
    pool = np.arange(1, 1001)
    excluded = set(range(1, 1001, 3))
    chosen = select_molecules(pool, excluded, 500, seed=0)
    assert len(set(chosen.tolist())) == 500 and not set(chosen.tolist()) & excluded
    np.testing.assert_array_equal(chosen, select_molecules(pool, excluded, 500, seed=0))
    with pytest.raises(ValueError, match="only 666 remain"):
        select_molecules(pool, excluded, 667, seed=0)
    with pytest.raises(ValueError, match="excluded"):
        label_molecules(make_molecules(), "unused", exclude=[20])


def test_cli_excludes_boom_test_sets(tmp_path, monkeypatch):
    from mftcalc import cli_label
    from mftcalc.data import qm9
    from mftcalc.data.boom import BoomSplit, save_splits

    mols = make_molecules(("H2O", "CH4", "NH3", "C2H6", "HCN", "CH3OH"))
    index = np.arange(1, 7)
    dataset = qm9.QM9Dataset(positions=np.concatenate([m.positions for m in mols]),
                             numbers=np.concatenate([m.numbers for m in mols]).astype(np.uint8),
                             offsets=np.concatenate([[0], np.cumsum([m.n_atoms for m in mols])]),
                             properties=np.zeros((6, len(qm9.QM9_PROPERTIES))),
                             property_names=tuple(qm9.QM9_PROPERTIES), qm9_index=index,
                             smiles=np.array(["O", "C", "N", "CC", "C#N", "CO"]))
    monkeypatch.setattr(qm9, "load_qm9", lambda cache_dir=None: dataset)
    empty = np.zeros(0, dtype=np.int64)
    splits = {p: BoomSplit(p, train=empty, val=empty, id_test=np.array([2]), ood_test=np.array([5 if i else 6]))
              for i, p in enumerate(qm9.QM9_PROPERTIES)}
    save_splits(splits, tmp_path / "splits.json")
    parser = argparse.ArgumentParser()
    cli_label.add_label_parser(parser.add_subparsers())
    args = parser.parse_args(["label", "--out", str(tmp_path / "out"), "--n-molecules", "3",
                              "--conformers-per-molecule", "1", "--workers", "1",
                              "--splits", str(tmp_path / "splits.json")])
    assert args.func(args) == 0
    labelled = {int(s.info["qm9_index"]) for s in read_labelled(tmp_path / "out")}
    assert len(labelled) == 3 and labelled <= {1, 3, 4}
    args.n_molecules = 4
    with pytest.raises(SystemExit, match="only 3 remain"):
        args.func(args)
