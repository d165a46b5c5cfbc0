"""Model deviation of a committee (``mftcalc model-devi``): deepmd-kit's definitions, its model_devi.out layout,
reference-force errors, DP-GEN's trust classes, and the refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from _helpers import TINY_DOMAINS, make_tiny_model, save_property_only_model
from mftcalc.calculators.predict import predict
from mftcalc.cli import main
from mftcalc.data import Structure
from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.model.checkpoint import model_metadata, save_model
from mftcalc.workflows.model_deviation import (OUT_COLUMNS, force_deviation, model_deviation, out_text,
                                               virial_deviation)


def _frames():
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=3)
    water = molecule("H2O")
    water.rattle(0.05, seed=4)
    return [Structure.from_ase(molecule("CH3OH")), Structure.from_ase(si), Structure.from_ase(water)]


def test_force_and_virial_deviation_follow_deepmd_kits_definitions():
    rng = np.random.default_rng(0)
    forces = rng.normal(size=(4, 5, 3))                                  # 4 models, 5 atoms
    mean = forces.mean(0)
    by_hand = np.array([np.sqrt(np.mean([np.sum((forces[k, i] - mean[i]) ** 2) for k in range(4)]))
                        for i in range(5)])
    np.testing.assert_allclose(force_deviation(forces), by_hand, rtol=1e-12)
    np.testing.assert_allclose(force_deviation(forces, relative=0.5),
                               by_hand / (np.linalg.norm(mean, axis=1) + 0.5), rtol=1e-12)
    virials = rng.normal(size=(4, 3, 3))
    flat = virials.reshape(4, 9)
    by_hand_v = np.sqrt(((flat - flat.mean(0)) ** 2).mean(0))            # population std, as numpy's default
    np.testing.assert_allclose(virial_deviation(virials), by_hand_v, rtol=1e-12)
    np.testing.assert_allclose(virial_deviation(virials, relative=2.0),
                               by_hand_v / (np.abs(flat.mean(0)) + 2.0), rtol=1e-12)


def test_committee_statistics_equal_the_models_own_predictions(tiny_committee):
    frames = _frames()
    result = model_deviation(frames, tiny_committee, dtype=torch.float64)
    rows = [predict(frames, path, forces=True, stress=True, dtype=torch.float64) for path in tiny_committee]
    for j, s in enumerate(frames):
        forces = np.stack([r[j]["forces"] for r in rows])
        devi = np.sqrt(((forces - forces.mean(0)) ** 2).sum(-1).mean(0))
        assert result.max_devi_f[j] == pytest.approx(devi.max(), rel=1e-10)
        assert result.min_devi_f[j] == pytest.approx(devi.min(), rel=1e-10, abs=1e-14)
        assert result.avg_devi_f[j] == pytest.approx(devi.mean(), rel=1e-10)
        assert result.devi_e[j] == pytest.approx(np.std([r[j]["energy"] / s.n_atoms for r in rows]), rel=1e-10)
        np.testing.assert_allclose(result.atomic_devi_f[j], devi, rtol=1e-10, atol=1e-14)
        if s.stress_defined:                                            # virial per atom = -stress * V / N
            virials = np.stack([-r[j]["stress"] * abs(np.linalg.det(s.cell)) / s.n_atoms for r in rows]).reshape(3, 9)
            assert result.max_devi_v[j] == pytest.approx(virials.std(0).max(), rel=1e-10)
            assert result.avg_devi_v[j] == pytest.approx(np.linalg.norm(virials.std(0)) / 3, rel=1e-10)
        else:
            assert np.isnan([result.max_devi_v[j], result.min_devi_v[j], result.avg_devi_v[j]]).all()
    assert result.max_devi_f.min() > 1e-6                          # the seeds disagree: the test has teeth
    assert result.datasets == [["a", "b", "a"]] * 3


def test_one_model_twice_deviates_by_nothing_and_rotation_changes_nothing(tiny_committee):
    frames = _frames()
    same = model_deviation(frames, [tiny_committee[0], tiny_committee[0]], dtype=torch.float64)
    assert np.abs(same.table()[np.isfinite(same.table())]).max() == 0.0
    turned = []
    for k, s in enumerate(frames):
        atoms = s.to_ase()
        R = Rotation.random(random_state=k).as_matrix()
        atoms.positions = atoms.positions @ R.T
        if atoms.pbc.any():
            atoms.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
        turned.append(atoms)
    invariant = [2, 3, 4, 5, 6]        # avg_devi_v (a Frobenius norm), the force columns, devi_e; max/min_devi_v
    a = model_deviation(frames, tiny_committee, dtype=torch.float64).table()[:, invariant]   # are components (frame-bound)
    b = model_deviation(turned, tiny_committee, dtype=torch.float64).table()[:, invariant]
    finite = np.isfinite(a)
    np.testing.assert_allclose(b[finite], a[finite], rtol=1e-7, atol=1e-12)
    assert (np.isfinite(b) == finite).all()


def test_reference_forces_give_the_committee_means_error(tiny_committee):
    frames = _frames()
    rng = np.random.default_rng(1)
    labelled = [s.with_labels(forces=rng.normal(size=(s.n_atoms, 3))) if j != 1 else s
                for j, s in enumerate(frames)]
    result = model_deviation(labelled, tiny_committee, dtype=torch.float64)
    rows = [predict(frames, path, forces=True, dtype=torch.float64) for path in tiny_committee]
    for j in (0, 2):
        mean = np.mean([r[j]["forces"] for r in rows], axis=0)
        assert result.max_error_f[j] == pytest.approx(np.linalg.norm(mean - labelled[j].forces, axis=1).max(),
                                                      rel=1e-10)
    assert np.isnan(result.max_error_f[1])                               # no reference forces: no error


def test_the_command_writes_deepmd_kits_model_devi_out_and_the_candidates(tiny_committee, tmp_path, capsys):
    frames = _frames()
    write_extxyz(frames, tmp_path / "traj.extxyz")
    expected = model_deviation(frames, tiny_committee)
    lo = float(np.sort(expected.max_devi_f)[0]) * 1.0001                # the first frame below, the others above
    hi = float(np.sort(expected.max_devi_f)[2]) * 1.0001                # ... all of them below hi
    assert main(["model-devi", str(tmp_path / "traj.extxyz"), "-m", *tiny_committee, "-o", str(tmp_path / "md.out"),
                 "-f", "10", "--trust-lo", str(lo), "--trust-hi", str(hi), "--candidates",
                 str(tmp_path / "cand.extxyz"), "--plot", str(tmp_path / "devi.png")]) == 0
    assert (tmp_path / "devi.png").stat().st_size > 10_000
    text = (tmp_path / "md.out").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")][-1].split()[1:]
    assert header == ["step", *OUT_COLUMNS]
    table = np.loadtxt(tmp_path / "md.out")
    assert table.shape == (3, 8) and list(table[:, 0]) == [0, 10, 20]
    np.testing.assert_allclose(table[:, 1:], expected.table(), rtol=1e-5)
    assert np.isnan(table[0, 1:4]).all() and np.isfinite(table[1, 1:]).all()   # molecules: no virial
    picked = read_structures(tmp_path / "cand.extxyz")
    between = [j for j, d in enumerate(expected.max_devi_f) if lo <= d < hi]
    assert len(between) == 2 and [p.n_atoms for p in picked] == [frames[j].n_atoms for j in between]
    assert "1 accurate, 2 candidates, 0 failed" in capsys.readouterr().out
    assert [p.info["model_devi_index"] for p in picked] == between
    assert main(["model-devi", str(tmp_path / "traj.extxyz"), "-m", *tiny_committee, "-o", str(tmp_path / "md.out"),
                 "--trust-lo", str(lo), "--trust-hi", str(hi), "--candidates", str(tmp_path / "one.extxyz"),
                 "--max-candidates", "1"]) == 0
    one = read_structures(tmp_path / "one.extxyz")
    assert len(one) == 1 and one[0].info["model_devi_index"] in between
    assert one[0].info["max_devi_f"] == pytest.approx(expected.max_devi_f[one[0].info["model_devi_index"]], rel=1e-6)
    assert main(["model-devi", str(tmp_path / "traj.extxyz"), "-m", *tiny_committee[:2], "-o", str(tmp_path / "md.csv"),
                 "--relative", "1.0", "--atomic", str(tmp_path / "atoms.extxyz")]) == 0
    relative = model_deviation(frames, tiny_committee[:2], relative=1.0)
    import ase.io
    for atoms, devi in zip(ase.io.read(tmp_path / "atoms.extxyz", ":"), relative.atomic_devi_f):
        np.testing.assert_allclose(atoms.arrays["devi_f"], devi, atol=1e-8)    # ASE: 8 decimals
    csv_text = (tmp_path / "md.csv").read_text().splitlines()
    assert csv_text[0].split(",")[4:] == ["max_devi_f_rel", "min_devi_f_rel", "avg_devi_f_rel",
                                          "max_devi_v_eV_per_atom", "min_devi_v_eV_per_atom",
                                          "avg_devi_v_eV_per_atom", "devi_e_eV_per_atom", "max_error_f_eV_per_A"]
    assert out_text(expected).count("\n") == 4 and out_text(expected, header="run").startswith("# run\n#")


def test_bad_committees_and_options_are_refused_by_name(tiny_committee, tmp_path, capsys):
    frames = _frames()
    write_extxyz(frames, tmp_path / "traj.extxyz")
    with pytest.raises(ValueError, match="at least two models, got 1"):
        model_deviation(frames, tiny_committee[:1])
    with pytest.raises(ValueError, match="relative=-1.0.*positive number"):
        model_deviation(frames, tiny_committee, relative=-1.0)
    with pytest.raises(ValueError, match="relative_v='1'.*positive number"):
        model_deviation(frames, tiny_committee, relative_v="1")
    save_property_only_model(tmp_path / "gap_only.pt")
    with pytest.raises(ValueError, match="model 1 .*gap_only.pt.* has no force-field head"):
        model_deviation(frames, [tiny_committee[0], tmp_path / "gap_only.pt"])
    with pytest.raises(ValueError, match="model 0 .*m0.pt.*zzz"):           # the member that fails is named
        model_deviation(frames, tiny_committee, dataset="zzz")
    no_si = make_tiny_model(seed=5)
    save_model(no_si, tmp_path / "no_si.pt", model_metadata(no_si, elements=[1, 6, 7, 8],
                                                                dataset_domains=TINY_DOMAINS))
    with pytest.raises(ValueError, match="model 1 .*no_si.pt.*Si"):
        model_deviation(frames, [tiny_committee[0], tmp_path / "no_si.pt"])
    traj = str(tmp_path / "traj.extxyz")
    for extra, message in ((["-o", str(tmp_path / "x.txt")], "ending in .out"),
                           (["-o", str(tmp_path / "x.out"), "--trust-lo", "0.2"], "give both"),
                           (["-o", str(tmp_path / "x.out"), "--trust-lo", "0.2", "--trust-hi", "0.1"], "lo < hi"),
                           (["-o", str(tmp_path / "x.out"), "--candidates", "c.extxyz"], "give both bounds"),
                           (["-o", str(tmp_path / "x.out"), "-f", "0"], "positive integer"),
                           (["-o", str(tmp_path / "x.out"), "--atomic", "a.npy"], "ending in .extxyz"),
                           (["-o", str(tmp_path / "x.out"), "--max-candidates", "3"], "with --candidates")):
        with pytest.raises(SystemExit, match=message):
            main(["model-devi", traj, "-m", *tiny_committee, *extra])
    assert not (tmp_path / "x.out").exists()


def test_float32_default_agrees_with_float64(tiny_committee):
    frames = _frames()
    a = model_deviation(frames, tiny_committee).max_devi_f
    b = model_deviation(frames, tiny_committee, dtype=torch.float64).max_devi_f
    np.testing.assert_allclose(a, b, rtol=2e-3)
