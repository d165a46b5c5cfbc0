"""Fine-tuning on the user's own labelled structures: `mftcalc finetune --data FILE --property NAME -o OUT.pt`
gives one model that relaxes and predicts; bad data is refused naming the problem."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule

from _helpers import cli_environment
from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.experiments.tasks import file_task

REPO = Path(__file__).resolve().parents[3]


def _molecules(n: int, prop: str = "my_gap") -> list:
    names = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "HCN", "C2H4", "CH3CH2OH", "HCOOH", "CH3CN"]
    out = []
    for k in range(n):
        atoms = molecule(names[k % len(names)])
        atoms.rattle(0.02, seed=k)
        s = Structure.from_ase(atoms)
        value = 5.0 + 0.1 * len(atoms) + 0.01 * k            # a smooth made-up property, eV
        out.append(s.with_labels(properties={prop: value}, property_units={prop: "eV"}))
    return out


def test_file_task_reads_splits_and_refuses_bad_data(tmp_path):
    write_extxyz(_molecules(30), tmp_path / "d.extxyz")
    task = file_task(str(tmp_path / "d.extxyz"), "my_gap", "eV", val_fraction=0.2)
    assert (len(task.train), len(task.val)) == (24, 6) and task.unit == "eV" and not task.recipe["extensive"]
    with pytest.raises(ValueError, match="frame 0: property 'gap' is missing.*available keys: .*my_gap"):
        file_task(str(tmp_path / "d.extxyz"), "gap", "eV")
    si = Structure.from_ase(bulk("Si", "diamond", 5.43)).with_labels(properties={"my_gap": 1.1})
    write_extxyz(_molecules(5) + [si], tmp_path / "mixed.extxyz")
    with pytest.raises(ValueError, match="1 periodic and 5 non-periodic structures in one task"):
        file_task(str(tmp_path / "mixed.extxyz"), "my_gap", "eV")


def test_finetune_cli_on_own_data_gives_a_relax_and_predict_model(tmp_path):
    write_extxyz(_molecules(30), tmp_path / "train.extxyz")
    write_extxyz(_molecules(6), tmp_path / "test.extxyz")
    out = tmp_path / "mine.pt"
    done = subprocess.run([sys.executable, "-m", "mftcalc.cli", "finetune", "--data", str(tmp_path / "train.extxyz"),
                           "--property", "my_gap", "--unit", "eV", "--test", str(tmp_path / "test.extxyz"),
                           "--steps", "4", "--strategy", "mft", "--set", "val_every=2", "head_hidden=[16]",
                           "-o", str(out)], capture_output=True, text=True, timeout=600,
                          env=cli_environment())
    assert done.returncode == 0, done.stderr[-3000:]
    from mftcalc.calculators import MFTCalculator
    atoms = molecule("CH3CH2OH")
    atoms.calc = MFTCalculator(str(out), dataset="xtb_qm9")
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (9, 3)
    assert np.isfinite(atoms.calc.get_property("my_gap", atoms))
    from mftcalc.model.checkpoint import read_checkpoint
    meta = read_checkpoint(out)["metadata"]
    assert meta["heads"]["my_gap"]["unit"] == "eV" and meta["heads"]["my_gap"]["extensive"] is False


def test_unknown_elements_are_refused_before_training(tmp_path):
    from ase import Atoms
    odd = [Structure.from_ase(Atoms("UO2", positions=[[0, 0, 0], [1.8, 0, 0], [-1.8, 0, 0]])).with_labels(
        properties={"my_gap": 1.0})] * 12
    write_extxyz(odd, tmp_path / "u.extxyz")
    done = subprocess.run([sys.executable, "-m", "mftcalc.cli", "finetune", "--data", str(tmp_path / "u.extxyz"),
                           "--property", "my_gap", "--steps", "2", "-o", str(tmp_path / "u.pt")],
                          capture_output=True, text=True, timeout=300,
                          env=cli_environment())
    assert done.returncode != 0
    assert "elements the pretrained model" in done.stderr and "U" in done.stderr


def test_frozen_sklearn_is_a_ridge_fit_served_as_a_linear_head(tmp_path):
    """The frozen-sklearn head reproduces scikit-learn's ridge predictions on pooled features, keeps the pretrained
    force field bit for bit, and takes no optimiser step."""
    import torch
    from mftcalc.model.checkpoint import load_model
    from mftcalc.training.finetune import FinetuneSettings, finetune
    from mftcalc.model.applicability import pooled_features
    write_extxyz(_molecules(40), tmp_path / "d.extxyz")
    task = file_task(str(tmp_path / "d.extxyz"), "my_gap", "eV", val_fraction=0.25)
    result = finetune(task, FinetuneSettings(strategy="frozen-sklearn", progress=False), tmp_path / "run",
                      REPO / "models" / "pretrained.pt")
    assert result["steps"] == 0 and result["val"]["rmse"] < 0.2
    model = load_model(tmp_path / "run" / "model.pt")
    pretrained = load_model(REPO / "models" / "pretrained.pt")
    for key, value in pretrained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    x = pooled_features(model, task.val, extensive=False)
    head = model.property_heads["my_gap"]
    w = head.mlp.net[0].weight.detach().double().numpy()[0]
    b = float(head.mlp.net[0].bias.detach())
    bias = head.bias.detach().double().numpy()
    expected = x @ w + b + np.array([bias[s.numbers].mean() for s in task.val])
    from mftcalc.training.evaluate import property_predictions
    np.testing.assert_allclose(property_predictions(model, task.val, "my_gap"), expected, rtol=1e-4, atol=1e-4)


def test_smiles_csv_becomes_relaxed_labelled_molecules(tmp_path):
    """SMILES rows are embedded (RDKit), relaxed with the model's force field, labelled; a bad row is skipped and
    counted; the geometries are reused when the CSV and model come again; a missing column names the columns."""
    csv_path = tmp_path / "mols.csv"
    csv_path.write_text("smiles,my_prop\nCCO,1.0\nC1CC1N,1.5\nnot_a_smiles,3.0\nCC(=O)O,0.7\nCC#N,0.9\nOCCO,1.2\n")
    task = file_task(str(csv_path), "my_prop", "eV", val_fraction=0.2, model_path=str(REPO / "models" /
                                                                                       "pretrained.pt"))
    molecules = task.train + task.val
    assert len(molecules) == 5 and {m.info["smiles"] for m in molecules} == {"CCO", "C1CC1N", "CC(=O)O", "CC#N",
                                                                              "OCCO"}
    ethanol = next(m for m in molecules if m.info["smiles"] == "CCO")
    assert ethanol.n_atoms == 9 and ethanol.properties["my_prop"] == 1.0 and ethanol.info["converged"]
    relaxed = tmp_path / "mols_relaxed.extxyz"
    stamp = relaxed.stat().st_mtime_ns
    file_task(str(csv_path), "my_prop", "eV", model_path=str(REPO / "models" / "pretrained.pt"))
    assert relaxed.stat().st_mtime_ns == stamp                                 # reused, not recomputed
    hot = tmp_path / "hot.csv"                                # a column read as a frame parameter
    hot.write_text("smiles,my_prop,temperature\nCCO,1.0,300\nCC#N,0.9,450.5\nOCCO,1.2,600\n")
    task = file_task(str(hot), "my_prop", "eV", val_fraction=0.34, model_path=str(REPO / "models" /
                                                                                  "pretrained.pt"),
                     frame_params={"temperature": "K"})
    assert {m.info["smiles"]: float(m.info["temperature"]) for m in task.train + task.val} == {
        "CCO": 300.0, "CC#N": 450.5, "OCCO": 600.0}
    hot.write_text("smiles,my_prop,temperature\nCCO,1.0,warm\n")
    with pytest.raises(ValueError, match="hot.csv, row 2: temperature = 'warm' is not a number"):
        file_task(str(hot), "my_prop", "eV", model_path=str(REPO / "models" / "pretrained.pt"),
                  frame_params={"temperature": "K"})
    (tmp_path / "bad.csv").write_text("SMILES,my_prop\nCCO,1.0\n")
    with pytest.raises(ValueError, match="no column 'smiles'.*columns: \\['SMILES', 'my_prop'\\]"):
        file_task(str(tmp_path / "bad.csv"), "my_prop", model_path=str(REPO / "models" / "pretrained.pt"))


def test_cross_validation_groups_and_reports(tmp_path):
    from mftcalc.experiments.cv import fold_indices, group_keys
    molecules = _molecules(30)
    keys = group_keys(molecules, "formula")
    tests = fold_indices(len(molecules), 3, keys, seed=0)
    assert sorted(np.concatenate(tests).tolist()) == list(range(30))
    for test in tests:                                    # a formula never straddles two folds
        inside = {keys[i] for i in test}
        assert not inside & {keys[i] for i in np.setdiff1d(np.arange(30), test)}
    write_extxyz(molecules, tmp_path / "d.extxyz")
    done = subprocess.run([sys.executable, "-m", "mftcalc.cli", "cv", "--data", str(tmp_path / "d.extxyz"),
                           "--property", "my_gap", "--unit", "eV", "--folds", "3", "--group-by", "formula",
                           "--strategy", "frozen-sklearn", "--out-dir", str(tmp_path / "cv")],
                          capture_output=True, text=True, timeout=600,
                          env=cli_environment())
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "cv" / "report.md").read_text()
    assert "3-fold cross-validation of my_gap (frozen-sklearn, grouped by formula)" in report
    assert (tmp_path / "cv" / "parity.png").exists()
    with pytest.raises(ValueError, match="needs info\\['smiles'\\]"):
        group_keys(molecules, "scaffold")


def test_mft_model_records_its_domains_and_default_dataset(tmp_path):
    """The MFT model remembers the dataset that dominated its auxiliary task as its default for molecules, so the
    calculator needs no dataset= for the molecules it was made for; the head's domain is the task's."""
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.training.finetune import FinetuneSettings, finetune
    write_extxyz(_molecules(20), tmp_path / "d.extxyz")
    task = file_task(str(tmp_path / "d.extxyz"), "my_gap", "eV", val_fraction=0.2)
    with pytest.warns(UserWarning, match="no prediction interval for 'my_gap'.*at least 9.*got 4"):   # 4 val
        finetune(task, FinetuneSettings(strategy="mft", steps=2, val_every=2, head_hidden=(8,), progress=False),
                 tmp_path / "run", REPO / "models" / "pretrained.pt")
    handle = ModelHandle.load(tmp_path / "run" / "model.pt")
    assert "my_gap_pi90" not in handle.heads
    assert handle.metadata["default_datasets"] == {"molecule": "xtb_qm9"}
    assert handle.metadata["heads"]["my_gap"]["domain"] == {"elements": [1, 6, 7, 8], "periodic": False}
    ethanol = Structure.from_ase(molecule("CH3CH2OH"))
    assert handle.dataset_names[handle.check_structure(ethanol, 0)] == "xtb_qm9"


def test_pymatgen_json_list_is_a_data_file(tmp_path):
    """A JSON list of pymatgen Structure/Molecule dicts with the property in their properties is read like any file."""
    import json
    from pymatgen.core import Lattice, Molecule
    from pymatgen.core import Structure as PmgStructure
    items = []
    for k in range(6):
        si = PmgStructure(Lattice.cubic(5.43 + 0.01 * k), ["Si"] * 2, [[0, 0, 0], [0.25, 0.25, 0.25]])
        si.properties = {"band_gap": 1.1 + 0.01 * k}
        items.append(si.as_dict())
    (tmp_path / "si.json").write_text(json.dumps(items))
    task = file_task(str(tmp_path / "si.json"), "band_gap", "eV", val_fraction=0.34)
    assert len(task.train) == 4 and task.train[0].pbc.all() and task.train[0].properties["band_gap"] > 1.0
    water = Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    (tmp_path / "bad.json").write_text(json.dumps([water.as_dict()]))
    with pytest.raises(ValueError, match="item 0: property 'band_gap' is missing"):
        file_task(str(tmp_path / "bad.json"), "band_gap", "eV")
