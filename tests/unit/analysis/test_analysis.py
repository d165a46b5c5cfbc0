"""Representation analysis: DB index, W1 drift, covalent labels, and the analyze report on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from _helpers import make_tiny_model
from mftcalc.analysis.features import atom_features, covalent_neighbour_counts, edge_features
from mftcalc.analysis.metrics import davies_bouldin, wasserstein_drift
from mftcalc.analysis.report import analyze, ratio_lines
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import model_metadata, save_model


def test_davies_bouldin_is_lower_for_separated_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(["a", "b"], 100)
    tight = np.concatenate([rng.normal(0, 0.1, (100, 3)), rng.normal(5, 0.1, (100, 3))])
    loose = np.concatenate([rng.normal(0, 2.0, (100, 3)), rng.normal(1, 2.0, (100, 3))])
    assert davies_bouldin(tight, labels) < 0.1 < davies_bouldin(loose, labels)
    with pytest.raises(ValueError, match="two clusters"):
        davies_bouldin(tight, np.repeat(["a"], 200))


def test_wasserstein_drift_is_zero_for_same_cloud_and_equals_a_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    assert wasserstein_drift(x, x, n_samples=300) == pytest.approx(0.0, abs=1e-9)
    shift = np.array([0.5, 0.0, 0.0, 0.0])
    assert wasserstein_drift(x, x + shift, n_samples=300) == pytest.approx(0.5, rel=1e-6)


def test_covalent_labels_of_ethanol():
    s = Structure.from_ase(molecule("CH3CH2OH"))
    counts = dict(zip(range(s.n_atoms), covalent_neighbour_counts(s)))
    carbons = [i for i, z in enumerate(s.numbers) if z == 6]
    assert all(counts[i] == 4 for i in carbons)
    assert all(counts[i] == 1 for i, z in enumerate(s.numbers) if z == 1)


def _molecules(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        atoms = molecule(["CH3CH2OH", "CH3OCH3", "CH3CHO", "C2H6"][k % 4])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        out.append(Structure.from_ase(atoms))
    return out


def test_analyze_reports_zero_drift_for_the_same_model_and_ratios(tmp_path):
    base = make_tiny_model(seed=0, dtype=torch.float32)
    moved = make_tiny_model(seed=0, dtype=torch.float32)
    with torch.no_grad():
        for p in moved.backbone.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for name, model in (("pre", base), ("same", base), ("moved", moved)):
        save_model(model, tmp_path / f"{name}.pt", model_metadata(model, [1, 6, 8]))
    sets = {"train": _molecules(24, 0), "ood": _molecules(24, 1)}
    results = analyze(tmp_path / "pre.pt", {"ft": tmp_path / "moved.pt", "mft": tmp_path / "same.pt"}, sets,
                      tmp_path / "out", n_samples=400, tsne=False)
    assert results["mft"]["train"]["w1"] == pytest.approx(0.0, abs=1e-6)
    assert results["ft"]["train"]["w1"] > 0.01
    assert results["mft"]["ood"]["db_raw_rel"] == pytest.approx(1.0)
    lines = ratio_lines(results)
    assert lines and any(line.startswith("- train:") for line in lines)
    assert (tmp_path / "out" / "analysis.md").read_text().count("| ft |") == 2
    feats = atom_features(base, sets["train"][:2])
    assert feats.features.shape[0] == len(feats.labels) == sum(s.n_atoms for s in sets["train"][:2])
    edges = edge_features(base, sets["train"][:2])
    assert set(edges.pairs) <= {"C-H", "C-O"} and len(edges.features) == len(edges.strata) > 0
