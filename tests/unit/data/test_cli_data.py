"""The ``mftcalc data`` sub-command (qm9 BOOM splits, MatBench folds) through ``mftcalc.cli.main``."""
from pathlib import Path

import pytest

from mftcalc.cli import main
from mftcalc.data.boom import load_splits

MATBENCH = Path(__file__).resolve().parents[4] / "shared" / "data" / "matbench"
needs_shared = pytest.mark.skipif(not MATBENCH.is_dir(), reason=f"shared MatBench data not present at {MATBENCH}")


def test_qm9_split_and_summary(tmp_path, capsys):
    out_file = tmp_path / "gap.json"
    assert main(["data", "qm9", "--property", "gap", "--summary", "--splits-out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "130,831 molecules" in out and "BOOM split of gap (Hartree)" in out
    assert "ood_test   10,000" in out and "cal/mol/K" in out  # summary lists every property with its unit
    split = load_splits(out_file)["gap"]
    assert split.ood_test.size == 10_000


def test_qm9_requires_property(capsys):
    with pytest.raises(SystemExit):
        main(["data", "qm9"])
    assert "--property" in capsys.readouterr().err


@needs_shared
def test_matbench_random_and_ood(capsys):
    assert main(["data", "matbench", "dielectric", "--folds", "random", "--path", str(MATBENCH)]) == 0
    out = capsys.readouterr().out
    assert "4,764 structures" in out and "refractive_index (unitless)" in out
    assert sum(line.startswith(("0 ", "1 ", "2 ", "3 ", "4 ")) for line in out.splitlines()) == 5
    assert main(["data", "matbench", "dielectric", "--folds", "SparseYcluster", "--path", str(MATBENCH)]) == 0
    out = capsys.readouterr().out
    assert "SparseYcluster folds: 50" in out and "over folds" in out and "--per-fold" in out
