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


def test_qm9_export_of_saved_splits(tmp_path, capsys):
    """--splits uses a saved split file as it is; --export writes each part's molecules with the property in its
    unit, in split order, readable by read_structures (and so by mftcalc evaluate/predict)."""
    import json

    from mftcalc.data.io import read_structures
    from mftcalc.data.qm9 import load_qm9
    saved = {"gap": {"train": [1, 2], "val": [3], "id_test": [4, 5, 6], "ood_test": [7, 9]}}
    (tmp_path / "s.json").write_text(json.dumps(saved))
    assert main(["data", "qm9", "--property", "gap", "--splits", str(tmp_path / "s.json"), "--export",
                 str(tmp_path / "sets"), "--parts", "id_test,ood_test"]) == 0
    assert "from " in capsys.readouterr().out
    dataset = load_qm9()
    for part in ("id_test", "ood_test"):
        back = read_structures(tmp_path / "sets" / f"qm9_gap_{part}.extxyz.gz")
        assert [s.info["qm9_index"] for s in back] == saved["gap"][part]
        rows = dataset.rows(saved["gap"][part])
        assert [s.properties["gap"] for s in back] == dataset.property("gap")[rows].tolist()
        assert all(s.property_units == {"gap": "Hartree"} and s.properties.keys() == {"gap"} for s in back)
    assert not (tmp_path / "sets" / "qm9_gap_train.extxyz.gz").exists()
    with pytest.raises(SystemExit, match="no split of"):
        main(["data", "qm9", "--property", "homo", "--splits", str(tmp_path / "s.json")])
    with pytest.raises(SystemExit, match="unknown parts"):
        main(["data", "qm9", "--property", "gap", "--parts", "test"])


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
