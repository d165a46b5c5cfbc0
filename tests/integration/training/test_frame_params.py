"""Frame parameters (mftcalc.data.frame_params): per-structure conditions such as a temperature that a property
head reads beside the structure. They reach the head through every path (batched predict, the ASE calculator,
a TorchScript export, fine-tuning from the command line), leave the force field alone, and are refused by name
when a structure lacks one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from _helpers import cli_environment
from mftcalc.calculators import MFTCalculator
from mftcalc.data.batch import collate
from mftcalc.data.frame_params import frame_param_matrix, frame_stats, model_frame_params
from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.experiments.tasks import file_task
from mftcalc.model.checkpoint import export_torchscript, load_model, model_metadata, read_checkpoint, save_model
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.fitting import fit_property_head
from mftcalc.model.inference import predict_structures
from mftcalc.model.mft_model import MFTModel
from mftcalc.testing import check_model

REPO = Path(__file__).resolve().parents[3]
NAMES = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "HCN", "C2H4", "CH3CH2OH", "HCOOH", "CH3CN"]


def _labelled(n: int, seed: int = 0, slope: float = 0.002) -> list:
    """Molecules at temperatures 200-800 K with y = 1 + 0.05·n_atoms + slope·T (eV)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.02, seed=seed * 1000 + k)
        atoms.info["temperature"] = float(rng.uniform(200.0, 800.0))
        y = 1.0 + 0.05 * len(atoms) + slope * atoms.info["temperature"]
        out.append(Structure.from_ase(atoms).with_labels(properties={"y": y}, property_units={"y": "eV"}))
    return out


def _model() -> MFTModel:
    torch.manual_seed(0)
    heads = {"energy": default_forcefield_head(),
             "y": HeadConfig(kind="scalar", unit="eV", hidden=(16,), frame_params={"temperature": "K"})}
    return MFTModel(ModelConfig(backbone=backbone_preset("cpu", n_layers=1), heads=heads)).double()


def test_the_head_reads_the_parameter_through_every_path_and_forces_do_not(tmp_path):
    model = _model()
    train = _labelled(12)
    fit_property_head(model.property_heads["y"], train, "y", "scalar", False, True)
    temps = frame_param_matrix(train, ["temperature"])
    np.testing.assert_allclose(model.property_heads["y"].frame_mean.numpy(), temps.mean(0))
    np.testing.assert_allclose(model.property_heads["y"].frame_std.numpy(), temps.std(0))
    save_model(model, tmp_path / "m.pt", model_metadata(model, elements=[1, 6, 7, 8]))
    assert read_checkpoint(tmp_path / "m.pt")["metadata"]["heads"]["y"]["frame_params"] == {"temperature": "K"}
    export_torchscript(load_model(tmp_path / "m.pt", torch.float64), tmp_path / "m_ts.pt")

    cold, hot = (train[0].with_labels(info={**train[0].info, "temperature": t}) for t in (250.0, 750.0))
    rows = predict_structures(model, [cold, hot])
    assert abs(float(rows[0]["y"]) - float(rows[1]["y"])) > 1e-4            # the temperature is read
    np.testing.assert_allclose(rows[0]["forces"], rows[1]["forces"], rtol=0, atol=1e-14)   # the force field
    assert float(rows[0]["energy"]) == pytest.approx(float(rows[1]["energy"]), rel=0, abs=1e-12)  # does not
    for path in (tmp_path / "m.pt", tmp_path / "m_ts.pt"):
        atoms = cold.to_ase()
        atoms.calc = MFTCalculator(str(path), dtype=torch.float64)
        assert atoms.calc.get_property("y", atoms) == pytest.approx(float(rows[0]["y"]), abs=1e-9)
        atoms.info["temperature"] = 750.0                                    # a change of the system for ASE
        assert atoms.calc.get_property("y", atoms) == pytest.approx(float(rows[1]["y"]), abs=1e-9)
        del atoms.info["temperature"]                                       # the force field needs none
        assert atoms.get_potential_energy() == pytest.approx(float(rows[0]["energy"]), abs=1e-9)
        with pytest.raises(ValueError, match=r"no frame parameter 'temperature' \(K\).*atoms.info\['temperature'\]"):
            atoms.calc.get_property("y", atoms)
    from mftcalc.analysis.descriptors import compute_descriptors
    from mftcalc.workflows.vibrations import vibrational_analysis
    bare = cold.with_labels(info={})                                         # neither reads a property head
    assert compute_descriptors(str(tmp_path / "m.pt"), [bare], dtype=torch.float64).values.shape == (1, 64)
    assert len(vibrational_analysis([bare], str(tmp_path / "m.pt"))) == 1
    from mftcalc import relax
    relaxed = relax([cold.to_ase(), hot.to_ase()], str(tmp_path / "m.pt"), steps=3, dtype=torch.float64)
    assert relaxed[0].structure.info["temperature"] == 250.0
    assert relaxed[0].properties["y"] != relaxed[1].properties["y"]          # each at its own temperature
    report = check_model(tmp_path / "m.pt", structures=[cold.to_ase()],
                         checks=["forces_fd", "rotation", "translation", "permutation", "batch", "export"])
    assert report.passed, report.failures


def test_missing_or_bad_parameters_are_refused_by_name(tmp_path):
    good = _labelled(10)
    no_t = good[3].with_labels(info={k: v for k, v in good[3].info.items() if k != "temperature"})
    with pytest.raises(ValueError, match="structure 1 has no frame parameter 'temperature'"):
        collate([good[0], no_t], frame_params=["temperature"])
    word = good[2].with_labels(info={**good[2].info, "temperature": "hot"})
    with pytest.raises(ValueError, match="structure 0: frame parameter 'temperature' is 'hot', not one real number"):
        frame_param_matrix([word], ["temperature"])
    with pytest.raises(ValueError, match="is nan; give a finite value"):
        frame_param_matrix([good[0].with_labels(info={"temperature": float("nan")})], ["temperature"])
    write_extxyz(good[:6] + [no_t] + good[6:], tmp_path / "d.extxyz")
    with pytest.raises(ValueError, match=r"d.extxyz \(training data\): frame 6 has no frame parameter "
                                         r"'temperature' \(K\)"):
        file_task(str(tmp_path / "d.extxyz"), "y", "eV", frame_params={"temperature": "K"})
    (tmp_path / "m.csv").write_text("smiles,y\nCCO,1.0\n")
    with pytest.raises(ValueError, match=r"m.csv: no column 'temperature' \(columns: \['smiles', 'y'\]\)"):
        file_task(str(tmp_path / "m.csv"), "y", "eV", frame_params={"temperature": "K"},
                  model_path=str(REPO / "models" / "pretrained.pt"))
    from mftcalc.experiments.config import TaskSpec
    with pytest.raises(ValueError, match="frame_params are for file tasks"):
        TaskSpec(kind="qm9", property="gap", frame_params={"temperature": "K"})
    with pytest.raises(ValueError, match="read by scalar and group property heads only"):
        HeadConfig(kind="dipole", frame_params={"temperature": "K"})
    with pytest.raises(ValueError, match="two units in one model"):
        model_frame_params({"a": HeadConfig(frame_params={"T": "K"}), "b": HeadConfig(frame_params={"T": "C"})})
    mean, std = frame_stats(np.full((5, 1), 300.0))
    assert std[0] == 1.0                                                     # constant: no division by zero
    model = _model()
    with pytest.warns(UserWarning, match="temperature of property 'y' take one value in all 10 training"):
        fit_property_head(model.property_heads["y"], [s.with_labels(info={"temperature": 300.0}) for s in good],
                          "y", "scalar", False, True)
    with pytest.raises(ValueError, match="read frame parameters temperature"):
        model(collate(good[:2]), compute_forces=False, compute_stress=False)


def test_frozen_ridge_learns_the_temperature_slope(tmp_path):
    """frozen-sklearn regresses on [pooled features, standardised T]: the made-up slope of 0.002 eV/K comes back."""
    from mftcalc.training.finetune import FinetuneSettings, finetune
    write_extxyz(_labelled(60), tmp_path / "d.extxyz")
    task = file_task(str(tmp_path / "d.extxyz"), "y", "eV", val_fraction=0.2, frame_params={"temperature": "K"})
    finetune(task, FinetuneSettings(strategy="frozen-sklearn", progress=False, interval_coverage=0), tmp_path / "run",
             REPO / "models" / "pretrained.pt")
    model = load_model(tmp_path / "run" / "model.pt")
    probe = task.val[0]
    rows = predict_structures(model, [probe.with_labels(info={**probe.info, "temperature": t}) for t in (300., 700.)],
                              compute_forces=False, compute_stress=False)
    slope = (float(rows[1]["y"]) - float(rows[0]["y"])) / 400.0
    assert slope == pytest.approx(0.002, rel=0.05)


def test_finetune_and_predict_commands_take_frame_params(tmp_path):
    write_extxyz(_labelled(24), tmp_path / "train.extxyz")
    write_extxyz(_labelled(4, seed=1), tmp_path / "new.extxyz")
    env = cli_environment()
    done = subprocess.run([sys.executable, "-m", "mftcalc.cli", "finetune", "--data", str(tmp_path / "train.extxyz"),
                           "--property", "y", "--unit", "eV", "--frame-param", "temperature:K", "--steps", "4",
                           "--strategy", "mft", "--set", "val_every=2", "head_hidden=[16]", "interval_coverage=0",
                           "-o", str(tmp_path / "mine.pt")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_checkpoint(tmp_path / "mine.pt")["metadata"]["heads"]["y"]["frame_params"] == {"temperature": "K"}
    from mftcalc.model.card import model_card
    assert "**Frame parameters** of `y`: `temperature` (K)" in model_card(tmp_path / "mine.pt")
    from mftcalc.cli import main                                             # the same command, in process
    assert main(["predict", str(tmp_path / "mine.pt"), str(tmp_path / "new.extxyz"), "--out",
                 str(tmp_path / "pred.csv"), "--dataset", "xtb_qm9"]) == 0
    import csv
    table = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert len(table) == 4 and all(np.isfinite(float(r["y_eV"])) and not r["error"] for r in table)
    assert [float(r["temperature_K"]) for r in table] == pytest.approx(
        [s.info["temperature"] for s in _labelled(4, seed=1)])
    from mftcalc.calculators.model_handle import DomainWarning
    hot = _labelled(1, seed=1)[0]
    hot.info["temperature"] = 2000.0                                         # training range: 200-800 K
    atoms = hot.to_ase()
    atoms.calc = MFTCalculator(str(tmp_path / "mine.pt"), dataset="xtb_qm9")
    with pytest.warns(DomainWarning, match="its temperature 2000 lies outside the training range"):
        atoms.calc.get_property("y", atoms)
    write_extxyz([s.with_labels(info={}) for s in _labelled(2, seed=2)], tmp_path / "bare.extxyz")
    main(["predict", str(tmp_path / "mine.pt"), str(tmp_path / "bare.extxyz"), "--out", str(tmp_path / "bare.csv"),
          "--dataset", "xtb_qm9"])
    table = list(csv.DictReader(open(tmp_path / "bare.csv")))
    assert [r["y_eV"] for r in table] == ["", ""]                          # no number without the temperature
    assert all("structure" in r["error"] and "no frame parameter 'temperature' (K)" in r["error"] for r in table)


def test_a_resume_states_changed_conditions_and_refuses_a_changed_head(tmp_path):
    """The conditions live in info, outside the structures' digest: a resume on changed values is stated, and a
    resume with another set of frame parameters (another head input) is refused by name, not a shape error."""
    from dataclasses import replace
    from mftcalc.training.finetune import FinetuneSettings, finetune
    write_extxyz(_labelled(20), tmp_path / "d.extxyz")
    settings = FinetuneSettings(strategy="ft", steps=2, val_every=2, checkpoint_every=1, head_hidden=(8,),
                                interval_coverage=0, progress=False)
    pretrained = REPO / "models" / "pretrained.pt"
    task = file_task(str(tmp_path / "d.extxyz"), "y", "eV", frame_params={"temperature": "K"})
    finetune(task, settings, tmp_path / "run", pretrained)
    warmer = [s.with_labels(info={**s.info, "temperature": s.info["temperature"] + 10.0}) for s in task.train]
    finetune(replace(task, train=warmer), replace(settings, steps=3), tmp_path / "run", pretrained)
    assert "frame_data/" in (tmp_path / "run" / "resume.log").read_text()
    for k, s in enumerate(task.train + task.val):
        s.info["pressure"] = 0.1 * k
    two = replace(task, frame_params={"temperature": "K", "pressure": "GPa"})
    with pytest.raises(ValueError, match="shaped unlike this run's.*frame parameters"):
        finetune(two, replace(settings, steps=4), tmp_path / "run", pretrained)
