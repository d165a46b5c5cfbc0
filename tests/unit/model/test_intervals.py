"""Prediction intervals (mftcalc.model.intervals): the split-conformal rank, its coverage on exchangeable data,
the interval head in the model (q × ood_score, through save/load, TorchScript and the ASE calculator) and the
errors that name what is missing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import molecule

from _helpers import scored_gap_model
from mftcalc.calculators import MFTCalculator
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import export_torchscript, load_model, model_metadata, read_checkpoint, save_model
from mftcalc.model.config import HeadConfig
from mftcalc.model.intervals import (calibrate_interval, calibrate_on_validation, conformal_quantile,
                                     interval_coverage, interval_name)
from mftcalc.model.mft_model import MFTModel
from mftcalc.testing import check_model

NAMES = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "HCN", "C2H4", "HCOOH", "CH3CN", "C2H2"]


def test_rank_is_the_finite_sample_one():
    values = np.arange(1.0, 20.0)[::-1]                        # n = 19: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(values, 0.9) == 18.0
    assert conformal_quantile(np.arange(1.0, 10.0), 0.9) == 9.0  # n = 9: the largest
    with pytest.raises(ValueError, match="at least 9 labelled calibration structures; got 8"):
        conformal_quantile(np.arange(8.0), 0.9)
    with pytest.raises(ValueError, match=r"coverage must lie in \(0, 1\)"):
        conformal_quantile(np.arange(50.0), 1.0)


def test_coverage_holds_on_exchangeable_draws():
    """n = 9 calibration points and one new point, 20,000 times: covered 9/10 of the time. A plain 0.9 quantile
    (numpy's default interpolation) would cover about 0.82 here."""
    rng = np.random.default_rng(0)
    draws = np.abs(rng.standard_t(3, size=(20000, 10)))
    covered = [d[9] <= conformal_quantile(d[:9], 0.9) for d in draws]
    assert abs(np.mean(covered) - 0.9) < 0.007
    assert np.mean([d[9] <= np.quantile(d[:9], 0.9) for d in draws]) < 0.85


def _structures(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.05, seed=seed * 1000 + k)
        gap = 0.3 + 0.01 * len(atoms) + 0.02 * rng.normal()
        out.append(Structure.from_ase(atoms).with_labels(properties={"gap": gap}, property_units={"gap": "Hartree"}))
    return out


def _model_with_score() -> MFTModel:
    return scored_gap_model(_structures(30, seed=1))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    model = _model_with_score()
    metadata = model_metadata(model, elements=[1, 6, 7, 8, 14])
    record = calibrate_interval(model, _structures(40, seed=2), "gap", 0.9, source="unit test", metadata=metadata)
    path = tmp_path_factory.mktemp("iv") / "gap_pi.pt"
    save_model(model, path, metadata)
    return model, record, path


def test_head_is_q_times_score_and_is_recorded(calibrated):
    model, record, path = calibrated
    assert record["name"] == "gap_pi90" == interval_name("gap", 0.9) and record["n_calibration"] == 40
    probe = _structures(6, seed=3)
    from mftcalc.model.inference import predict_structures
    rows = predict_structures(model, probe, compute_forces=False, compute_stress=False)
    for row in rows:
        assert float(row["gap_pi90"]) == pytest.approx(record["q"] * float(row["ood_score"]), rel=1e-12)
    head = read_checkpoint(path)["metadata"]["heads"]["gap_pi90"]
    assert head["kind"] == "interval" and head["unit"] == "Hartree" and head["interval"]["q"] == record["q"]
    # 40 calibration structures at 0.9: the 37th smallest nonconformity, so exactly 37 of them are covered
    cal = _structures(40, seed=2)
    rows = predict_structures(model, cal, compute_forces=False, compute_stress=False)
    truth = np.array([s.properties["gap"] for s in cal])
    pred = np.array([float(r["gap"]) for r in rows])
    width = np.array([float(r["gap_pi90"]) for r in rows])
    assert interval_coverage(truth, pred, width) == pytest.approx(math.ceil(41 * 0.9) / 40)


def test_head_survives_load_export_and_the_calculator(calibrated, tmp_path):
    model, record, path = calibrated
    loaded = load_model(path, torch.float64)
    assert "gap_pi90" in loaded.head_names() and float(loaded.interval_heads["gap_pi90"].q) == record["q"]
    atoms = molecule("CH3OH")
    atoms.calc = MFTCalculator(path, dtype=torch.float64)
    eager = atoms.calc.get_property("gap_pi90", atoms)
    assert atoms.calc.property_units["gap_pi90"] == "Hartree"
    assert eager == pytest.approx(record["q"] * atoms.calc.get_property("ood_score", atoms), rel=1e-12)
    export_torchscript(loaded, tmp_path / "gap_pi.ts", read_checkpoint(path)["metadata"])
    atoms.calc = MFTCalculator(tmp_path / "gap_pi.ts", dtype=torch.float64)
    assert atoms.calc.get_property("gap_pi90", atoms) == pytest.approx(eager, rel=1e-9)


def test_given_predictions_calibrate_the_same_head_without_a_second_pass(calibrated, monkeypatch):
    model, record, _ = calibrated
    from mftcalc.model.inference import predict_structures
    cal = _structures(40, seed=2)
    rows = predict_structures(model, cal, compute_forces=False, compute_stress=False)
    given = (np.array([float(r["gap"]) for r in rows]), np.array([float(r["ood_score"]) for r in rows]))
    import mftcalc.model.inference as inference
    monkeypatch.setattr(inference, "predict_structures", lambda *a, **k: pytest.fail("predicted a second time"))
    again = calibrate_interval(model, cal, "gap", 0.9, name="gap_again", predictions=given)
    assert again["q"] == pytest.approx(record["q"], rel=1e-12)
    assert again["median_half_width"] == pytest.approx(record["median_half_width"], rel=1e-12)
    with pytest.raises(ValueError, match=r"shape \(40,\), one value per labelled calibration structure"):
        calibrate_interval(model, cal, "gap", 0.9, name="gap_bad", predictions=(given[0][:39], given[1][:39]))
    del model.interval_heads["gap_again"], model.config.heads["gap_again"]


def test_physics_checks_treat_the_interval_as_pooled(calibrated):
    _, _, path = calibrated
    report = check_model(path, checks=["rotation", "translation", "permutation", "supercell", "batch", "export"])
    assert report.passed, report.failures
    assert any("gap_pi90" in str(r) for r in report.results), "the checks should have covered the interval head"


def test_errors_name_what_is_missing():
    model = _model_with_score()
    few = _structures(5)
    with pytest.raises(ValueError, match="at least 9 labelled calibration structures; got 5"):
        calibrate_interval(model, few, "gap", 0.9)
    with pytest.raises(KeyError, match="no property head 'homo'.*'gap'"):
        calibrate_interval(model, few, "homo")
    with pytest.raises(KeyError, match="no applicability head 'knn'"):
        calibrate_interval(model, few, "gap", score="knn")
    unlabelled = [Structure.from_ase(molecule("CH4"))] * 20
    with pytest.raises(ValueError, match="none of the 20 calibration structures carries a 'gap' label"):
        calibrate_interval(model, unlabelled, "gap")
    with pytest.warns(UserWarning, match="no prediction interval for 'gap'.*lower interval_coverage"):
        assert calibrate_on_validation(model, few, "gap", 0.9, {}) is None
    assert calibrate_on_validation(model, few, "gap", 0.0, {}) is None
    enough = _structures(12)
    with pytest.raises(ValueError, match=r"predictions must be two arrays of shape \(12,\)"):
        calibrate_on_validation(model, enough, "gap", 0.9, {}, predictions=(np.zeros(11), np.ones(11)))
    with pytest.raises(ValueError, match=r"a coverage in \(0, 1\); got .*coverage=-0.5"):
        calibrate_on_validation(model, enough, "gap", -0.5, {})
    with pytest.raises(ValueError, match="an interval head needs the property it bounds"):
        HeadConfig(kind="interval", of="gap", score="ood_score", coverage=1.5)


def test_calibrate_command_writes_the_head_and_refuses_bad_input(tmp_path, capsys):
    from mftcalc.cli import main
    from mftcalc.data.io import write_extxyz
    model = _model_with_score()
    save_model(model, tmp_path / "m.pt", model_metadata(model, elements=[1, 6, 7, 8]))
    write_extxyz(_structures(30, seed=4), tmp_path / "cal.extxyz")
    assert main(["calibrate", str(tmp_path / "m.pt"), str(tmp_path / "cal.extxyz"), "--property", "gap",
                 "--coverage", "0.8", "-o", str(tmp_path / "m_pi.pt")]) == 0
    assert "gap_pi80: gap ± gap_pi80 holds the true value with probability 0.8" in capsys.readouterr().out
    payload = read_checkpoint(tmp_path / "m_pi.pt")
    assert payload["metadata"]["heads"]["gap_pi80"]["interval"]["n_calibration"] == 30
    assert payload["state_dict"]["interval_heads.gap_pi80.q"].dtype == torch.float64     # stored dtype kept
    for argv, message in [
            (["-o", str(tmp_path / "m.pt")], "give -o another path than the input"),
            (["--coverage", "1.2", "-o", str(tmp_path / "x.pt")], "--coverage must lie in"),
            (["--property", "homo", "-o", str(tmp_path / "x.pt")], "no structure carries a 'homo' label")]:
        args = ["calibrate", str(tmp_path / "m.pt"), str(tmp_path / "cal.extxyz"), *argv]
        if "--property" not in argv:
            args += ["--property", "gap"]
        with pytest.raises(SystemExit, match=message):
            main(args)
    assert not (tmp_path / "x.pt").exists()


def test_demo_prints_the_interval_and_draws_it_as_error_bars(calibrated, tmp_path, monkeypatch, capsys):
    import mftcalc.analysis.plots as plots
    from mftcalc.workflows.demo import run_demo
    _, _, path = calibrated
    drawn = {}
    monkeypatch.setattr(plots, "plot_bars", lambda names, panels, out, errors=None: drawn.update(
        panels=panels, errors=errors))
    rows = run_demo(str(path), tmp_path / "demo", dataset="default")
    assert "gap_pi90 (Hartree)" in capsys.readouterr().out
    assert list(drawn["errors"]) == ["gap (Hartree) ± gap_pi90"] and "gap (Hartree) ± gap_pi90" in drawn["panels"]
    assert not any(label.startswith("gap_pi90") for label in drawn["panels"])
    done = [r for r in rows if not r["error"]]
    assert drawn["errors"]["gap (Hartree) ± gap_pi90"] == [float(r["gap_pi90_Hartree"]) for r in done]


def test_evaluate_reports_the_interval_coverage(calibrated, tmp_path, capsys):
    from mftcalc.cli_evaluate import evaluate_files
    from mftcalc.data.io import write_extxyz
    _, record, path = calibrated
    write_extxyz(_structures(40, seed=2), tmp_path / "cal.extxyz")      # the calibration set itself
    table = evaluate_files(str(path), [str(tmp_path / "cal.extxyz")], plot=None)
    interval = table[str(tmp_path / "cal.extxyz")]["properties"]["gap"]["interval"]
    assert interval["head"] == "gap_pi90" and interval["nominal"] == 0.9
    # the calibrated rank holds 37 of 40 in float64; evaluate runs float32, which may move a point on the edge
    assert abs(interval["coverage"] - 37 / 40) <= 2 / 40 + 1e-12
    assert f"gap_pi90 holds {interval['coverage']:.3f} (nominal 0.9" in capsys.readouterr().out


def test_bench_summary_shows_the_measured_coverage():
    from mftcalc.experiments.bench_summary import summary_markdown
    cell = {"id_test": {"rmse": 0.01, "interval_coverage": 0.9}, "ood_test": {"rmse": 0.03, "interval_coverage": 0.6}}
    old = {"id_test": {"rmse": 0.01}, "ood_test": {"rmse": 0.03}}             # fine-tuned before intervals existed
    text = summary_markdown({"qm9:gap|mft|seed0|frac0.5": cell, "qm9:gap|mft|seed1|frac0.5": dict(
        cell, ood_test={"rmse": 0.03, "interval_coverage": 0.7}), "qm9:gap|ft|seed0|frac0.5": old}, {}, [0, 1])
    rows = {line.split("|")[3].strip(): line for line in text.splitlines() if line.startswith("| qm9:gap")}
    assert rows["mft"].endswith("| ID 0.900, OOD 0.650 |") and rows["ft"].endswith("| – |")
