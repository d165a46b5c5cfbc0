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
