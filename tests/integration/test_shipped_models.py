"""The shipped gap models re-scored on BOOM's ID and OOD sets with the user-facing commands reproduce the bench
figures stored in their metadata (``benchmarks/ship_gap_models.py`` writes both). Slow: ~2 min on 2 cores."""
from __future__ import annotations

from pathlib import Path

import pytest

from mftcalc.cli import main
from mftcalc.cli_evaluate import evaluate_files
from mftcalc.model.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
PARTS = ("id_test", "ood_test")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ft_gap", "mft_gap"])
def test_shipped_gap_model_reproduces_its_benchmark(tmp_path, name):
    path = REPO / "models" / f"{name}.pt"
    if not path.is_file():
        pytest.skip(f"{path} is not shipped yet (benchmarks/ship_gap_models.py ships it)")
    bench = read_checkpoint(path)["metadata"].get("benchmark")
    if bench is None:
        pytest.skip(f"{path} carries no benchmark record (shipped before benchmarks/ship_gap_models.py)")
    prop = bench["property"]
    assert main(["data", "qm9", "--property", prop, "--splits", str(REPO / bench["splits"]), "--export",
                 str(tmp_path)]) == 0
    files = [str(tmp_path / f"qm9_{prop}_{part}.extxyz.gz") for part in PARTS]
    table = evaluate_files(str(path), files, plot=None)
    for part, file in zip(PARTS, files):
        again = table[file]["properties"][prop]
        assert again["n"] == bench[part]["n"]
        assert again["rmse"] == pytest.approx(bench[part]["rmse"], rel=1e-4)
        assert again["mae"] == pytest.approx(bench[part]["mae"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ft_gap", "mft_gap"])
def test_shipped_interval_covers_the_id_test_set(tmp_path, name):
    """``gap_pi90``, calibrated on the validation set, holds the ID test molecules' gaps 90 % of the time (a
    split-conformal guarantee for exchangeable data; 5,983 molecules: ±0.8 % is two standard errors)."""
    import numpy as np
    from mftcalc.data.io import read_structures
    from mftcalc.model.checkpoint import load_model
    from mftcalc.model.inference import predict_structures
    from mftcalc.model.intervals import interval_coverage
    path = REPO / "models" / f"{name}.pt"
    if not path.is_file() or "gap_pi90" not in read_checkpoint(path)["metadata"].get("heads", {}):
        pytest.skip(f"{path} carries no gap_pi90 head (benchmarks/prediction_intervals.py --write adds it)")
    assert main(["data", "qm9", "--property", "gap", "--splits", str(REPO / "data" / "boom_splits.json.gz"),
                 "--export", str(tmp_path), "--parts", "id_test"]) == 0
    structures = read_structures(tmp_path / "qm9_gap_id_test.extxyz.gz")
    rows = predict_structures(load_model(path), structures, compute_forces=False, compute_stress=False)
    truth = np.array([s.properties["gap"] for s in structures])
    coverage = interval_coverage(truth, np.array([float(r["gap"]) for r in rows]),
                                 np.array([float(r["gap_pi90"]) for r in rows]))
    assert abs(coverage - 0.9) < 0.012, coverage
