"""Checkpoint format: round trip, clear errors for corrupt/foreign files, weights-only loading, exports."""
from __future__ import annotations

import pickle

import pytest
import torch

from _helpers import make_tiny_model
from mftcalc.data import collate
from mftcalc.model.checkpoint import (CheckpointError, export_torchscript, load_any, load_model, model_metadata,
                                      save_model)


def test_round_trip_keeps_weights_config_and_metadata(tmp_path, molecules):
    model = make_tiny_model()
    path = tmp_path / "m.pt"
    save_model(model, path, model_metadata(model, elements=[1, 6, 8], note="x"))
    loaded = load_model(path, torch.float64)
    assert loaded.metadata["elements"] == [1, 6, 8] and loaded.metadata["note"] == "x"
    assert loaded.metadata["heads"]["gap"] == {"kind": "scalar", "unit": "Hartree", "extensive": False}
    batch = collate(molecules, torch.float64)
    torch.testing.assert_close(loaded(batch)["energy"], model(batch)["energy"], rtol=0, atol=0)


def test_corrupt_and_foreign_files_raise_clear_errors(tmp_path):
    model = make_tiny_model()
    path = tmp_path / "m.pt"
    save_model(model, path)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable mftcalc checkpoint"):
        load_model(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an mftcalc checkpoint"):
        load_model(foreign)
    wrong_version = tmp_path / "v99.pt"
    payload = torch.load(path, weights_only=True)
    payload["version"] = 99
    torch.save(payload, wrong_version)
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(wrong_version)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")


def test_untrusted_pickles_are_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed!",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "mftcalc-model", "payload": Evil()}, fh)
    with pytest.raises(CheckpointError):
        load_model(path)


@pytest.mark.parametrize("fused", [False, True])
def test_exports_match_eager_in_float64(tmp_path, molecules, crystal, fused):
    from mftcalc.kernels.angle import fused_available
    if fused and not fused_available():
        pytest.skip("the fused angle operator did not build here")
    model = make_tiny_model()
    path = tmp_path / "export.pt"
    export_torchscript(model, path, fused=fused)
    scripted, meta = load_any(path, torch.float64)
    batch = collate(molecules + [crystal], torch.float64)
    eager = model(batch)
    out = scripted(batch)
    for key in ("energy", "forces", "stress", "gap", "mu", "r2"):
        torch.testing.assert_close(out[key], eager[key], rtol=1e-6, atol=1e-10)
    assert meta["heads"]["gap"]["unit"] == "Hartree"


def test_model_card_reports_metadata_and_validation(tmp_path):
    from mftcalc.model.card import model_card
    from mftcalc.model.mft_model import count_parameters
    model = make_tiny_model()
    card = {"steps": 12, "train_wall_s": 60.0, "config": {"steps": 12, "lr0": 1e-3, "lr_end": 1e-5},
            "datasets": {"emt": {"train": 7, "batch_size": 2}},
            "validation": {"step": 12.0, "val/emt/e_mae_per_atom": 0.0123, "val/emt/f_mae": 0.0456,
                           "val/emt/f_rmse": 0.0789}}
    save_model(model, tmp_path / "m.pt", model_metadata(model, [1, 8], pretraining=card))
    text = model_card(tmp_path / "m.pt")
    assert f"**Parameters**: {count_parameters(model):,}" in text
    assert "| emt | 7 | 2 | 12.3 | 46 | 79 |" in text
    assert "**Elements seen in training**: H O" in text


def test_angle_counts_match_the_graph_and_chunks_respect_the_budget(molecules, crystal, tmp_path):
    from mftcalc.data.batch import split_sizes_by_atoms
    from mftcalc.model.graph import angle_counts, build_graph
    from mftcalc.model.inference import chunk_groups
    structures = list(molecules) + [crystal]
    counts = angle_counts(structures, 3.0)
    for s, n in zip(structures, counts):
        b = collate([s], torch.float64)
        graph = build_graph(b["positions"], b["cell"], b["pbc"], b["batch"], 4.0, 3.0)
        assert graph["a_ij"].shape[0] == n
    budget = int(counts.max())
    groups = split_sizes_by_atoms([s.n_atoms for s in structures], 10 ** 6, counts, budget)
    assert [i for g in groups for i in g] == list(range(len(structures)))
    assert all(counts[g].sum() <= budget for g in groups)
    model = make_tiny_model()
    export_torchscript(model, tmp_path / "m.ts")
    scripted, _ = load_any(tmp_path / "m.ts")
    assert chunk_groups(scripted, structures, 10 ** 6, budget) == chunk_groups(model, structures, 10 ** 6, budget)
