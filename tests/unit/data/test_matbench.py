"""MatBench loaders: extxyz and matminer JSON structures with targets, random and OOD folds."""
import gzip
import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk

from mftcalc.data.matbench import MATBENCH_DATASETS, OOD_FOLD_KINDS, load_folds, load_matbench, targets
from mftcalc.data.structure import StructureError

MATBENCH = Path(__file__).resolve().parents[4] / "shared" / "data" / "matbench"
needs_shared = pytest.mark.skipif(not MATBENCH.is_dir(), reason=f"shared MatBench data not present at {MATBENCH}")


def _crystals():
    return [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.6)]


def test_extxyz_targets(tmp_path):
    frames = _crystals()
    for row, atoms in enumerate(frames):
        atoms.info.update(row=row, target=1.5 + row, mbid=f"mb-dielectric-{row + 1:04d}")
    ase.io.write(tmp_path / "dielectric.extxyz", frames, format="extxyz")
    structures = load_matbench("dielectric", tmp_path)  # found by name in the directory
    assert [s.properties for s in structures] == [{"refractive_index": 1.5 + r} for r in range(3)]
    assert structures[0].property_units == {"refractive_index": "unitless"}
    assert structures[2].info["mbid"] == "mb-dielectric-0003" and structures[2].info["row"] == 2
    np.testing.assert_array_equal(targets(structures, "dielectric"), [1.5, 2.5, 3.5])
    frames[1].info["row"] = 7
    ase.io.write(tmp_path / "shuffled.extxyz", frames, format="extxyz")
    with pytest.raises(StructureError, match="must be in row order"):
        load_matbench("dielectric", tmp_path / "shuffled.extxyz")


def test_matminer_json(tmp_path):
    from pymatgen.io.ase import AseAtomsAdaptor

    data = [[AseAtomsAdaptor.get_structure(a).as_dict(), 0.5 * k] for k, a in enumerate(_crystals())]
    payload = {"index": [f"mb-log-gvrh-{k + 1:05d}" for k in range(3)], "columns": ["structure", "log10(G_VRH)"],
               "data": data}
    with gzip.open(tmp_path / "matbench_log_gvrh.json.gz", "wt") as fh:
        json.dump(payload, fh)
    structures = load_matbench("elasticity", tmp_path)
    assert [s.properties["log10_gvrh"] for s in structures] == [0.0, 0.5, 1.0]
    assert structures[1].property_units == {"log10_gvrh": "log10(GPa)"} and structures[1].pbc.all()
    assert structures[1].numbers.tolist() == [14, 14] and structures[1].info == {"row": 1, "mbid": "mb-log-gvrh-00002"}
    (tmp_path / "bad.json").write_text('{"index": [], "data": []}')
    with pytest.raises(ValueError, match="not a MatBench JSON"):
        load_matbench("elasticity", tmp_path / "bad.json")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown MatBench dataset 'bandgap'"):
        load_matbench("bandgap", tmp_path)
    with pytest.raises(FileNotFoundError, match="dielectric.extxyz.gz"):
        load_matbench("dielectric", tmp_path)
    with pytest.raises(ValueError, match="unknown fold kind 'kfold'"):
        load_folds("dielectric", "kfold", tmp_path)
    with gzip.open(tmp_path / "ood_folds_dielectric.json.gz", "wt") as fh:
        json.dump({"LOCO": {"0": {"train": [0, 1, 2], "val": [3], "test": [2]}}}, fh)
    with pytest.raises(ValueError, match="overlapping"):
        load_folds("dielectric", "LOCO", tmp_path)
    with pytest.raises(ValueError, match="no entry 'SparseXsingle'"):
        load_folds("dielectric", "SparseXsingle", tmp_path)


@needs_shared
def test_shared_dielectric_structures():
    structures = load_matbench("dielectric", MATBENCH)
    assert len(structures) == MATBENCH_DATASETS["dielectric"].n_rows
    assert [s.info["row"] for s in structures] == list(range(len(structures)))
    values = targets(structures, "dielectric")
    assert np.isfinite(values).all() and values.min() >= 1.0


@needs_shared
@pytest.mark.parametrize("dataset", list(MATBENCH_DATASETS))
def test_shared_folds(dataset):
    n = MATBENCH_DATASETS[dataset].n_rows
    random = load_folds(dataset, "random", MATBENCH)
    assert len(random) == 5 and all(f.val.size == 0 and f.train.size + f.test.size == n for f in random)
    assert np.array_equal(np.sort(np.concatenate([f.test for f in random])), np.arange(n))  # tests partition rows
    for kind in OOD_FOLD_KINDS:
        folds = load_folds(dataset, kind, MATBENCH)
        assert [f.index for f in folds] == list(range(50))
        assert all(f.train.size + f.val.size + f.test.size == n for f in folds)
        if kind.endswith("single"):
            assert {f.test.size for f in folds} == {1}
        elif kind.endswith("cluster"):
            assert {f.test.size for f in folds} == {11}
