"""Trust defects (issue 18): corrupt or non-finite model files are refused with the file named, float32 models keep
float64 totals and are translation invariant far from the origin, and user errors say what to fix."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from _helpers import make_tiny_model
from mftcalc.data import Structure, collate
from mftcalc.model.checkpoint import (HASH_KEY, CheckpointError, export_torchscript, load_any, load_model,
                                      load_training_state, save_model)

REPO = Path(__file__).resolve().parents[3]


def _flip_weight_bytes(path: Path, weight: torch.Tensor) -> None:
    """Flip a few bytes inside the stored data of ``weight`` (found by its raw bytes in the file)."""
    data = bytearray(path.read_bytes())
    raw = weight.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    start = data.find(raw)
    assert start >= 0, "weight bytes not found in the file"
    for k in (3, 11, 20):
        data[start + k] ^= 0x5A
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------- checkpoints
def test_flipped_bytes_in_a_checkpoint_are_refused(tmp_path):
    model = make_tiny_model(dtype=torch.float32)
    path = tmp_path / "m.pt"
    save_model(model, path)
    _flip_weight_bytes(path, model.ff_heads["ff"].mlp.net[0].weight)
    with pytest.raises(CheckpointError, match=r"m\.pt is corrupt or modified.*re-download.*re-export"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"m\.pt is corrupt or modified"):
        load_any(path)


def test_modified_weights_are_refused_by_the_content_hash(tmp_path):
    model = make_tiny_model(dtype=torch.float32)
    path = tmp_path / "m.pt"
    save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["backbone.layers.0.node_self.weight"][0, 0] += 1e-3
    torch.save(payload, path)                          # a valid zip again: only the hash can tell
    with pytest.raises(CheckpointError, match=r"m\.pt is corrupt or modified: its content hash.*re-download"):
        load_model(path)


def test_checkpoints_without_a_hash_still_load(tmp_path, molecules):
    model = make_tiny_model()
    path = tmp_path / "m.pt"
    save_model(model, path)
    payload = torch.load(path, weights_only=True)
    assert len(payload.pop(HASH_KEY)) == 64
    legacy = tmp_path / "legacy.pt"
    torch.save(payload, legacy)                        # as written before the hash existed
    batch = collate(molecules, torch.float64)
    torch.testing.assert_close(load_model(legacy, torch.float64)(batch)["energy"], model(batch)["energy"],
                               rtol=0, atol=0)
    for shipped in sorted((REPO / "models").glob("*.pt")):
        load_model(shipped)                            # shipped models load, with or without a hash
    _flip_weight_bytes(legacy, model.backbone.layers[0].node_self.weight)
    with pytest.raises(CheckpointError, match=r"legacy\.pt is corrupt or modified: .* CRC-32"):
        load_model(legacy)                             # old files: flipped bytes are still caught


@pytest.mark.parametrize("with_hash", [True, False])
def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path, with_hash):
    model = make_tiny_model(dtype=torch.float32)
    with torch.no_grad():
        model.backbone.layers[1].node_self.weight[2, 3] = float("nan")
        model.property_heads["gap"].scale.fill_(float("inf"))
    path = tmp_path / "nan.pt"
    save_model(model, path)
    if not with_hash:
        payload = torch.load(path, weights_only=True)
        payload.pop(HASH_KEY)
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"nan\.pt: tensor 'backbone\.layers\.1\.node_self\.weight' holds 1 "
                                              r"non-finite"):
        load_model(path)


def test_torchscript_exports_are_checked_too(tmp_path):
    model = make_tiny_model(dtype=torch.float32)
    path = tmp_path / "export.pt"
    export_torchscript(model, path)
    load_any(path)                                     # a good export loads
    _flip_weight_bytes(path, model.backbone.layers[0].node_self.weight)
    with pytest.raises(CheckpointError, match=r"export\.pt is corrupt or modified.*mftcalc export"):
        load_any(path)
    export_torchscript(model, path)
    extra = {"metadata.json": "", "config.json": "", "weights.sha256": ""}
    module = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        dict(module.named_parameters())["backbone.layers.0.node_self.weight"][0, 0] += 1e-3
    torch.jit.save(module, str(path), _extra_files=extra)       # re-saved with the old hash
    with pytest.raises(CheckpointError, match=r"export\.pt is corrupt or modified: its content hash"):
        load_any(path)
    with torch.no_grad():
        model.backbone.type_embedding.weight[6, 0] = float("nan")
    export_torchscript(model, path)
    with pytest.raises(CheckpointError, match=r"export\.pt: tensor 'backbone\.type_embedding\.weight'"):
        load_any(path)


def test_truncated_training_state_names_the_file_and_the_fix(tmp_path):
    from mftcalc.training.loop import Trainer
    model = make_tiny_model(dtype=torch.float32)
    good = tmp_path / "good.pt"
    torch.save({"format": "x", "model": model.state_dict()}, good)
    state = tmp_path / "state.pt"
    state.write_bytes(good.read_bytes()[:-300])
    with pytest.raises(CheckpointError, match=r"training state .*state\.pt cannot be read.*delete it to restart"
                                              r".*restore .* from git"):
        Trainer._load_state(SimpleNamespace(state_path=state))    # the loop's resume goes through the same check
    state.write_bytes(good.read_bytes())
    _flip_weight_bytes(state, model.backbone.layers[0].node_self.weight)
    with pytest.raises(CheckpointError, match=r"state\.pt is corrupt or modified.*delete it to restart"):
        load_training_state(state)
    with torch.no_grad():
        model.backbone.edge_embedding.bias.fill_(float("nan"))
    torch.save({"format": "x", "model": model.state_dict()}, state)
    with pytest.raises(CheckpointError, match=r"state\.pt: tensor 'backbone\.edge_embedding\.bias'"):
        load_training_state(state)


# ---------------------------------------------------------------------------------------------- float64 totals
def test_big_crystal_energy_is_the_float64_sum_of_its_atomic_energies():
    model = make_tiny_model(dtype=torch.float32)
    with torch.no_grad():
        model.ff_heads["ff"].shift[0, 6] = -1030.5     # atomic energies of ~-1 keV (a DFT-like reference)
    atoms = bulk("C", "diamond", a=3.567, cubic=True).repeat((8, 8, 10))   # 5,120 atoms, periodic
    atoms.rattle(0.02, seed=1)
    out = model(collate([Structure.from_ase(atoms)], torch.float32))
    assert out["energy"].dtype == torch.float64
    assert out["virial"].dtype == torch.float64 and out["stress"].dtype == torch.float64
    assert out["forces"].dtype == torch.float32
    reference = out["energies"].detach().double().sum()
    assert abs(float(out["energy"][0].detach()) - float(reference)) < 1e-6      # eV, of -5.3e6 eV


def test_float32_model_is_translation_invariant_far_from_the_origin(tmp_path):
    model = load_model(REPO / "models" / "pretrained.pt")   # float32, trained: forces change fast with geometry
    export_torchscript(model, tmp_path / "m.ts")
    scripted, _ = load_any(tmp_path / "m.ts", torch.float32)
    near = Structure.from_ase(molecule("CH3CH2OH"))
    far = near.with_labels(positions=near.positions + 1e6)
    for m in (model, scripted):
        ref = m(collate([near], torch.float64))        # float64 positions into the float32 model
        out = m(collate([far], torch.float64))
        assert out["forces"].dtype == torch.float32
        torch.testing.assert_close(out["forces"], ref["forces"], rtol=0, atol=1e-4)    # was 1.9 eV/Å off
        torch.testing.assert_close(out["energy"], ref["energy"], rtol=0, atol=1e-3)


def test_calculator_is_translation_invariant_far_from_the_origin():
    """Through the user path (MFTCalculator -> collate, float64 positions) ethanol at +1e6 Å gets the same forces."""
    from mftcalc.calculators import MFTCalculator
    calc = MFTCalculator(str(REPO / "models" / "pretrained.pt"), dataset="xtb_qm9")
    near = molecule("CH3CH2OH")
    far = near.copy()
    far.positions += 1e6
    f_near = calc.get_forces(near)
    f_far = calc.get_forces(far)
    np.testing.assert_allclose(f_far, f_near, rtol=0, atol=1e-4)             # was 1.9 eV/Å off


# ---------------------------------------------------------------------------------------------- user errors
def test_evaluate_refuses_files_without_labels_or_with_a_bad_header(tmp_path, capsys):
    from mftcalc.cli import main
    model = make_tiny_model(dtype=torch.float32)
    save_model(model, tmp_path / "m.pt")
    unlabelled = tmp_path / "unlabelled.extxyz"
    unlabelled.write_text('2\nProperties=species:S:1:pos:R:3 pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n')
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tmp_path / "m.pt"), str(unlabelled), "--plot", str(tmp_path / "p.png")])
    assert exc.value.code not in (0, None)
    assert "unlabelled.extxyz" in str(exc.value.code) and "missing labels: energy, forces, properties" in str(exc.value.code)
    bad = tmp_path / "bad.extxyz"
    bad.write_text('2\nProperties=species:S:1:pos:R:two energy=-1.0 pbc="F F F"\nH 0 0 0\nH 0 0 0.74\n')
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(tmp_path / "m.pt"), str(bad), "--plot", str(tmp_path / "p.png")])
    assert exc.value.code not in (0, None)
    assert "bad.extxyz: cannot read" in str(exc.value.code) and "Properties=" in str(exc.value.code)


def test_evaluate_scores_property_labels_in_the_heads_unit(tmp_path, capsys):
    """A file labelled only with a property is scored (MAE/RMSE against the model's own predictions shifted by
    known offsets) and plotted; a label in another unit, or only properties the model lacks, is refused."""
    from mftcalc.cli import main
    from mftcalc.data.io import write_extxyz
    from mftcalc.model.inference import predict_structures
    from _helpers import save_tiny_model
    model_path = save_tiny_model(tmp_path / "m.pt", dtype=torch.float32)
    model = load_model(model_path, torch.float32)
    rng = np.random.default_rng(3)
    molecules = [Structure(positions=rng.normal(scale=1.2, size=(4, 3)) + np.arange(4)[:, None] * 1.1,
                           numbers=np.array([6, 1, 1, 8]), info={"dataset": "a"}) for _ in range(6)]
    predicted = [float(p["gap"]) for p in predict_structures(model, molecules, 0, compute_forces=False,
                                                             compute_stress=False)]
    other_dataset = [float(p["gap"]) for p in predict_structures(model, molecules, 1, compute_forces=False,
                                                                 compute_stress=False)]
    assert other_dataset == predicted       # why evaluate skips the dataset rule for property-only files
    offsets = np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3])
    labelled = [m.with_labels(properties={"gap": g + d}, property_units={"gap": "Hartree"})
                for m, g, d in zip(molecules, predicted, offsets)]
    write_extxyz(labelled, tmp_path / "gap.extxyz")
    from mftcalc.cli_evaluate import evaluate_files
    table = evaluate_files(str(model_path), [str(tmp_path / "gap.extxyz")], plot=str(tmp_path / "p.png"))
    err = table[str(tmp_path / "gap.extxyz")]["properties"]["gap"]
    assert err["n"] == 6 and err["unit"] == "Hartree"
    assert err["mae"] == pytest.approx(np.abs(offsets).mean(), abs=1e-5)
    assert err["rmse"] == pytest.approx(np.sqrt((offsets ** 2).mean()), abs=1e-5)
    assert (tmp_path / "p_gap.png").is_file() and "gap" in capsys.readouterr().out
    wrong_unit = [m.with_labels(property_units={"gap": "eV"}) for m in labelled]
    write_extxyz(wrong_unit, tmp_path / "ev.extxyz")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model_path), str(tmp_path / "ev.extxyz"), "--dataset", "a"])
    assert "labelled in ['eV']" in str(exc.value.code) and "ev.extxyz" in str(exc.value.code)
    other = [m.with_labels(properties={"band_gap": 1.0}, property_units={"band_gap": "eV"}) for m in molecules]
    write_extxyz(other, tmp_path / "other.extxyz")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model_path), str(tmp_path / "other.extxyz"), "--dataset", "a"])
    assert "band_gap" in str(exc.value.code) and "nothing to compare" in str(exc.value.code)


def test_evaluate_runs_the_structure_check_and_the_dataset_rule(tmp_path):
    """Overlapping atoms are refused by evaluate as on every other path, naming the file; an ambiguous dataset
    choice is refused too, and --dataset settles it."""
    from mftcalc.cli import main
    from _helpers import save_tiny_model
    model = save_tiny_model(tmp_path / "m.pt", dtype=torch.float32)
    overlap = tmp_path / "overlap.extxyz"
    overlap.write_text('2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc="F F F"\n'
                       'H 0 0 0 0 0 0\nH 0 0 0.1 0 0 0\n')
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(model), str(overlap), "--plot", str(tmp_path / "p.png")])
    assert "overlap.extxyz" in str(exc.value.code) and "0.1" in str(exc.value.code)
    water = tmp_path / "water.extxyz"
    water.write_text('3\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc="F F F"\n'
                     'O 0 0 0 0 0 0\nH 0.96 0 0 0 0 0\nH -0.24 0.93 0 0 0 0\n')
    assert main(["evaluate", str(model), str(water), "--plot", str(tmp_path / "p.png"), "--dataset", "a"]) == 0


def test_calculator_without_atoms_says_atoms_are_needed():
    from mftcalc.calculators import MFTCalculator
    calc = MFTCalculator(make_tiny_model(dtype=torch.float32), dataset="a")
    with pytest.raises(ValueError, match="has no atoms.*get_property\\('energy', atoms\\)"):
        calc.get_property("energy")
    assert calc.get_property("energy", allow_calculation=False) is None     # ASE: nothing computed, nothing asked
    atoms = molecule("H2O")
    assert np.isfinite(calc.get_property("energy", atoms))
    assert calc.get_property("energy") == calc.get_property("energy", atoms)  # now it has atoms


def test_evaluate_group_by_gives_errors_per_info_value(tmp_path, capsys):
    """--group-by KEY: energy and force errors per value of info[KEY] under the file row, here against labels that
    are the model's own predictions plus known force offsets per group; structures without the key form (none)."""
    from mftcalc.cli import main
    from mftcalc.cli_evaluate import evaluate_files
    from mftcalc.data.io import write_extxyz
    from mftcalc.model.inference import predict_structures
    from _helpers import save_tiny_model
    model_path = save_tiny_model(tmp_path / "m.pt", dtype=torch.float64)
    model = load_model(model_path, torch.float64)
    rng = np.random.default_rng(5)
    kinds = ["rattle", "md", "rattle", "md", None]
    molecules = [Structure(positions=rng.normal(scale=1.2, size=(4, 3)) + np.arange(4)[:, None] * 1.1,
                           numbers=np.array([6, 1, 1, 8]), info={"dataset": "a", **({"kind": k} if k else {})})
                 for k in kinds]
    preds = predict_structures(model, molecules, 0, compute_stress=False)
    offset = {"rattle": 0.1, "md": 0.3, None: 0.2}
    labelled = [m.with_labels(energy=float(p["energy"]), forces=p["forces"] + offset[k])
                for m, p, k in zip(molecules, preds, kinds)]
    write_extxyz(labelled, tmp_path / "ff.extxyz")
    table = evaluate_files(str(model_path), [str(tmp_path / "ff.extxyz")], plot=None, group_by="kind")
    row = table[str(tmp_path / "ff.extxyz")]
    assert list(row["groups"]) == ["rattle", "md", "(none)"]
    for name, value in (("rattle", 100.0), ("md", 300.0), ("(none)", 200.0)):
        assert row["groups"][name]["f_mae_mev_A"] == pytest.approx(value, abs=1e-3)
        assert row["groups"][name]["e_mae_mev_atom"] == pytest.approx(0.0, abs=1e-3)   # extxyz round trip
    assert row["groups"]["md"]["n"] == 2 and row["f_mae_mev_A"] == pytest.approx(200.0, abs=1e-3)
    assert "  kind=md" in capsys.readouterr().out
    assert main(["evaluate", str(model_path), str(tmp_path / "ff.extxyz"), "--plot", str(tmp_path / "p.png"),
                 "--group-by", "kind"]) == 0


def test_evaluate_detail_gives_each_structures_errors(tmp_path, capsys):
    """--detail FILE.csv: one row per structure of every file, against labels that are the model's own predictions
    plus known offsets: the energy error per atom, force MAE and largest force error, the property's reference and
    prediction; the worst structure is named; a name that is not .csv is refused."""
    import csv

    from mftcalc.cli import main
    from mftcalc.data.io import write_extxyz
    from mftcalc.model.inference import predict_structures
    from _helpers import save_tiny_model
    model_path = save_tiny_model(tmp_path / "m.pt", dtype=torch.float64)
    model = load_model(model_path, torch.float64)
    rng = np.random.default_rng(6)
    molecules = [Structure(positions=rng.normal(scale=1.2, size=(4, 3)) + np.arange(4)[:, None] * 1.1,
                           numbers=np.array([6, 1, 1, 8]), info={"dataset": "a"}) for _ in range(3)]
    preds = predict_structures(model, molecules, 0, compute_stress=False)
    shifts = [0.4, 0.0, -0.8]                                     # eV on the energy, eV/Å on one force component
    labelled = []
    for m, p, d in zip(molecules, preds, shifts):
        forces = p["forces"].copy()
        forces[2, 1] += d
        labelled.append(m.with_labels(energy=float(p["energy"]) + d, forces=forces,
                                      properties={"gap": float(p["gap"]) + d}, property_units={"gap": "Hartree"}))
    write_extxyz(labelled, tmp_path / "ff.extxyz")
    assert main(["evaluate", str(model_path), str(tmp_path / "ff.extxyz"), "--plot", str(tmp_path / "p.png"),
                 "--detail", str(tmp_path / "detail.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "detail.csv")))
    assert [int(r["index"]) for r in rows] == [0, 1, 2] and rows[0]["formula"] == "CH2O"
    for r, d in zip(rows, shifts):
        assert float(r["energy_error_eV_per_atom"]) == pytest.approx(-d / 4, abs=1e-6)
        assert float(r["force_max_error_eV_per_A"]) == pytest.approx(abs(d), abs=1e-6)
        assert float(r["force_mae_eV_per_A"]) == pytest.approx(abs(d) / 12, abs=1e-6)
        assert float(r["gap_ref_Hartree"]) - float(r["gap_pred_Hartree"]) == pytest.approx(d, abs=1e-6)
    assert "largest force errors: ff.extxyz:2 (CH2O, 0.8 eV/Å)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="ending in .csv"):
        main(["evaluate", str(model_path), str(tmp_path / "ff.extxyz"), "--detail", str(tmp_path / "d.txt")])
