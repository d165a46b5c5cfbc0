"""The sub-commands no other test runs through ``mftcalc.cli.main``: ``info``, ``screen``, ``analyze`` and
``label`` (small inputs, in-process)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from ase.build import molecule

from _helpers import save_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.cli import main
from mftcalc.data import Structure
from mftcalc.data.io import read_structures
from mftcalc.model.checkpoint import read_checkpoint
from mftcalc.workflows.screening import example_path


@pytest.fixture
def model_file(tmp_path):
    return save_tiny_model(tmp_path / "tiny.pt")


def test_info_prints_the_model_card(model_file, capsys):
    assert main(["info", str(model_file)]) == 0
    card = capsys.readouterr().out
    assert "**Parameters**" in card and "**Elements seen in training**: H C N O Si" in card
    assert "gap" in card and "Hartree" in card and "bohr^2" in card


def _assert_same_predictions(path_a, path_b):
    """Energy, forces and gap of a rattled methanol agree (float64) between two model files."""
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=1)
    results = []
    for path in (path_a, path_b):
        calc = MFTCalculator(path, dtype=torch.float64)
        results.append((calc.get_potential_energy(atoms.copy()), calc.get_forces(atoms.copy()),
                        calc.get_property("gap", atoms.copy())))
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


def test_grow_writes_a_deeper_model_with_the_same_predictions(model_file, tmp_path, capsys):
    out = tmp_path / "grown.pt"
    assert main(["grow", str(model_file), "--layers", "2", "-o", str(out)]) == 0
    assert "-> " in capsys.readouterr().out
    layers = [read_checkpoint(p)["config"]["backbone"]["n_layers"] for p in (model_file, out)]
    assert layers[1] == layers[0] + 2
    _assert_same_predictions(model_file, out)
    assert main(["grow", str(model_file), "--layers", "0", "-o", str(tmp_path / "x.pt")]) != 0
    assert "--layers must be at least 1" in capsys.readouterr().err
    assert main(["grow", str(model_file), "-o", str(tmp_path / "x.pt")]) != 0
    assert "nothing to grow" in capsys.readouterr().err
    assert main(["grow", str(model_file), "--n-dim", "512", "--residual-init", "0.1", "-o",
                 str(tmp_path / "x.pt")]) != 0
    assert "give --layers N with it" in capsys.readouterr().err
    engaged = tmp_path / "engaged.pt"
    assert main(["grow", str(model_file), "--layers", "1", "--residual-init", "0.1", "-o", str(engaged)]) == 0
    assert "residual scales at 0.1" in capsys.readouterr().out
    assert read_checkpoint(engaged)["metadata"]["grown_from"]["residual_init"] == 0.1


def test_grow_wider_and_deeper_keeps_the_predictions(model_file, tmp_path, capsys):
    out = tmp_path / "wide.pt"
    old = read_checkpoint(model_file)["config"]["backbone"]
    assert main(["grow", str(model_file), "--n-dim", str(old["n_dim"] + 8), "--a-dim", str(old["a_dim"] + 4),
                 "--layers", "1", "-o", str(out)]) == 0
    assert "widths" in capsys.readouterr().out
    new = read_checkpoint(out)["config"]["backbone"]
    assert (new["n_dim"], new["e_dim"], new["a_dim"], new["n_layers"]) == (
        old["n_dim"] + 8, old["e_dim"], old["a_dim"] + 4, old["n_layers"] + 1)
    _assert_same_predictions(model_file, out)


def test_screen_predicts_what_the_calculator_gives_and_resumes(model_file, tmp_path, capsys):
    out = tmp_path / "s.csv"
    args = ["screen", str(example_path()), "--model", str(model_file), "--out", str(out), "--dtype", "float64",
            "--threads", "1"]
    assert main(args) == 0
    assert "8 structures" in capsys.readouterr().out
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    structures = read_structures(example_path())
    assert len(rows) == len(structures) == 8
    atoms = structures[0].to_ase()
    atoms.calc = MFTCalculator(model_file, dtype=torch.float64)
    assert float(rows[0]["energy_eV"]) == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    assert float(rows[0]["gap_Hartree"]) == pytest.approx(atoms.calc.get_property("gap", atoms), abs=1e-8)
    assert main(args) == 0                                        # a second run resumes: the file is unchanged
    with open(out, newline="") as fh:
        assert list(csv.DictReader(fh)) == rows


def test_analyze_writes_drift_and_db_tables(model_file, tmp_path, capsys):
    from mftcalc.data.boom import BoomSplit, save_splits
    finetuned = save_tiny_model(tmp_path / "other.pt", seed=1)
    from mftcalc.data.qm9 import load_qm9
    index = load_qm9(progress=False).qm9_index[5000:5030]          # 30 QM9 molecules of about 15 atoms
    save_splits({"gap": BoomSplit("gap", train=index[:10], val=np.zeros(0, dtype=np.int64), id_test=index[10:20],
                                  ood_test=index[20:])}, tmp_path / "splits.json")
    out_dir = tmp_path / "analysis"
    assert main(["analyze", str(model_file), f"ft={finetuned}", "--splits", str(tmp_path / "splits.json"),
                 "--molecules", "10", "--samples", "200", "--no-tsne", "--out-dir", str(out_dir)]) == 0
    assert "| ft | ood |" in capsys.readouterr().out
    results = json.loads((out_dir / "analysis.json").read_text())
    assert set(results) == {"pretrained", "ft"} and set(results["ft"]) == {"train", "id", "ood"}
    assert all(results["pretrained"][s]["w1"] == 0.0 for s in ("train", "id", "ood"))   # itself: no drift
    assert all(results["ft"][s]["w1"] > 0.0 for s in ("train", "id", "ood"))


def test_label_labels_molecules_outside_the_test_sets(tmp_path, monkeypatch, capsys):
    from mftcalc.data import qm9
    from mftcalc.data.boom import BoomSplit, save_splits
    from mftcalc.labelling.labeller import read_labelled
    mols = [Structure.from_ase(molecule(name)) for name in ("H2O", "CH4", "NH3")]
    index = np.arange(1, 4)
    dataset = qm9.QM9Dataset(positions=np.concatenate([m.positions for m in mols]),
                             numbers=np.concatenate([m.numbers for m in mols]).astype(np.uint8),
                             offsets=np.concatenate([[0], np.cumsum([m.n_atoms for m in mols])]),
                             properties=np.zeros((3, len(qm9.QM9_PROPERTIES))),
                             property_names=tuple(qm9.QM9_PROPERTIES), qm9_index=index,
                             smiles=np.array(["O", "C", "N"]))
    monkeypatch.setattr(qm9, "load_qm9", lambda cache_dir=None: dataset)
    empty = np.zeros(0, dtype=np.int64)
    save_splits({p: BoomSplit(p, train=empty, val=empty, id_test=np.array([3]), ood_test=empty)
                 for p in qm9.QM9_PROPERTIES}, tmp_path / "splits.json")
    assert main(["label", "--out", str(tmp_path / "out"), "--n-molecules", "2", "--conformers-per-molecule", "1",
                 "--workers", "1", "--splits", str(tmp_path / "splits.json")]) == 0
    assert "1 in an ID/OOD test set" in capsys.readouterr().out
    labelled = read_labelled(tmp_path / "out")
    assert sorted(int(s.info["qm9_index"]) for s in labelled) == [1, 2]          # NH3 (index 3) is a test molecule
    assert all(s.energy is not None and s.forces.shape == (s.n_atoms, 3) for s in labelled)
