"""benchmarks/mft_protocol.py, the figure of merit of issue 15, on a synthetic bench folder whose answer is known:
FT's checkpoints lie exactly on OOD = 0.01 + 2·ID, MFT's 10 % below that line, LP on it."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests._helpers import load_benchmark


@pytest.fixture(scope="module")
def protocol():
    return load_benchmark("mft_protocol")


def _cell(out: Path, key: str, ids, oods, factor: float, final_id: float, seed: int) -> dict:
    folder = out / "cells" / key.replace("|", "__").replace(":", "_")
    folder.mkdir(parents=True)
    val_mae = np.linspace(0.03, 0.01, len(ids)) + 0.001 * seed
    val_mae[-2] = 0.001                                   # the best checkpoint: second to last
    with open(folder / "val.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "val/t/mae", "curve/train/rmse", "curve/val/rmse", "curve/id_test/rmse",
                         "curve/ood_test/rmse"])
        for k, (i, o) in enumerate(zip(ids, oods)):
            writer.writerow([500 * (k + 1), val_mae[k], 0.5 * i, i, i, o])
    ood_final = factor * (0.01 + 2 * final_id)
    return {"id_test": {"rmse": final_id}, "ood_test": {"rmse": ood_final}, "drift_w1": 0.1}


def _bench(tmp_path: Path, mft_factor: float, controls: dict = {}) -> Path:
    results = {}
    ids = np.linspace(0.04, 0.015, 8)
    for seed in (0, 1, 2):
        shift = 0.0005 * seed
        for strategy, factor in (("ft", 1.0), ("mft", mft_factor), *controls.items()):
            key = f"qm9:gap|{strategy}|seed{seed}|frac0.0078125"
            results[key] = _cell(tmp_path, key, ids + shift, factor * (0.01 + 2 * (ids + shift)), factor,
                                 0.016 + shift, seed)
    key = "qm9:gap|lp|seed0|frac0.0078125"
    results[key] = _cell(tmp_path, key, ids, 0.01 + 2 * ids, 1.0, 0.018, 0)
    results["_forcefield_reference"] = {}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_residuals_recover_a_known_offset(protocol, tmp_path):
    cells = protocol.analyse(_bench(tmp_path, 0.9))
    a, b = cells[0]["line"]
    assert (a, b) == pytest.approx((0.01, 2.0))
    for c in cells:
        expected = {"ft": 0.0, "lp": 0.0, "mft": -0.1}[c["strategy"]]
        assert c["res_best"] == pytest.approx(expected, abs=1e-9)
        assert c["res_final"] == pytest.approx(expected, abs=1e-9)
        assert c["best"] == 6 and c["train_val_best"] == pytest.approx(0.5)


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")   # identical residuals (b)
def test_verdict_and_seed_test(protocol, tmp_path):
    better = protocol.verdicts(protocol.analyse(_bench(tmp_path / "a", 0.85)))
    assert len(better) == 1 and "OOD 0.850" in better[0] and ": meets" in better[0]
    assert "Welch p = 0.00" in better[0]                  # 3 vs 3 seeds, a 15 % gap with little spread
    same = protocol.verdicts(protocol.analyse(_bench(tmp_path / "b", 1.0)))
    assert "does not meet" in same[0] and "residual at matched ID: MFT − FT +0" in same[0]


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_table_and_plot_are_written(protocol, tmp_path, monkeypatch):
    out = _bench(tmp_path / "bench", 0.9)
    monkeypatch.setattr("sys.argv", ["mft_protocol.py", str(out), "--name", "toy",
                                     "--results-dir", str(tmp_path / "results")])
    protocol.main()
    text = (tmp_path / "results" / "mft_protocol_toy.md").read_text()
    assert "| qm9:gap frac0.0078125 | mft | 3 |" in text and "-10.0 ± 0.0 %" in text
    assert (tmp_path / "results" / "mft_protocol_toy_curves.png").stat().st_size > 10_000


@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_a_control_is_judged_against_ft_and_against_mft(protocol, tmp_path):
    lines = protocol.verdicts(protocol.analyse(_bench(tmp_path, 0.9, {"ft_anchor": 0.95})))
    assert lines[0].startswith("- qm9:gap frac0.0078125: MFT/FT ID 1.000, OOD 0.900")
    assert "FT_ANCHOR/FT ID 1.000, OOD 0.950 (3 vs 3 runs): does not meet" in lines[1]
    assert "FT_ANCHOR against MFT. Over seeds, OOD RMSE: FT_ANCHOR − MFT +" in lines[2] and len(lines) == 3
