"""BOOM splits: the binned-FFT KDE against the exact kernel sum, split sizes, determinism, disjointness, files."""
import time

import numpy as np
import pytest

from mftcalc.data.boom import (BoomSplit, boom_split, boom_splits, kde_density, load_splits, save_splits,
                               scott_bandwidth, test_union)
from mftcalc.data.qm9 import load_qm9


@pytest.fixture(scope="module")
def qm9():
    return load_qm9(progress=False)


def exact_kde(values: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Exact Gaussian KDE with Scott's bandwidth at every value (float64 kernel sum in chunks)."""
    h = scott_bandwidth(values)
    out = np.empty_like(values)
    for start in range(0, values.size, chunk):
        z = (values[start:start + chunk, None] - values[None, :]) / h
        out[start:start + chunk] = np.exp(-0.5 * z * z).sum(axis=1)
    return out / (values.size * h * np.sqrt(2 * np.pi))


def _overlap_with_exact(values: np.ndarray, n_low: int) -> float:
    fast, exact = kde_density(values), exact_kde(values)
    assert np.max(np.abs(fast - exact) / exact) < 1e-6
    low_fast = np.argsort(fast, kind="stable")[:n_low]
    low_exact = np.argsort(exact, kind="stable")[:n_low]
    return np.intersect1d(low_fast, low_exact).size / n_low


def test_kde_matches_exact_on_skewed_synthetic():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.lognormal(0.0, 0.7, 14_000), rng.normal(9.0, 0.3, 5_000),
                             rng.uniform(-5.0, 30.0, 1_000)]).round(4)  # rounding makes ties
    assert _overlap_with_exact(values, 1_500) >= 0.995


def test_kde_matches_exact_on_qm9_r2_subsample(qm9):
    values = np.random.default_rng(0).choice(qm9.property("r2"), 20_000, replace=False)
    assert _overlap_with_exact(values, 1_500) >= 0.995


def test_kde_rejects_degenerate_input():
    with pytest.raises(ValueError, match="all values are equal"):
        kde_density(np.ones(10))
    with pytest.raises(ValueError, match="finite"):
        kde_density(np.array([1.0, np.nan, 2.0]))


def test_all_eight_splits(qm9):
    start = time.perf_counter()
    splits = boom_splits(qm9, seed=0)
    assert time.perf_counter() - start < 30.0
    n_rest = len(qm9) - 10_000
    everyone = np.sort(qm9.qm9_index)
    for name, split in splits.items():
        parts = split.parts()
        assert split.property == name
        assert [parts[k].size for k in ("ood_test", "id_test", "val")] == [10_000] + [round(0.05 * n_rest)] * 2
        joined = np.concatenate(list(parts.values()))
        assert joined.size == len(qm9) and np.array_equal(np.sort(joined), everyone)  # disjoint and complete
        values = qm9.property(name)
        ood = values[qm9.rows(split.ood_test)]
        train = values[qm9.rows(split.train)]
        assert ood.min() == values.min() and ood.max() == values.max()  # both tails are OOD
        assert train.min() > values.min() and train.max() < values.max()
    union = test_union(splits)
    manual = set().union(*(set(s.id_test.tolist()) | set(s.ood_test.tolist()) for s in splits.values()))
    assert union.tolist() == sorted(manual)


def test_split_deterministic_and_seeded(qm9):
    values, index = qm9.property("gap"), qm9.qm9_index
    a, b = boom_split(values, index, "gap", seed=3), boom_split(values, index, "gap", seed=3)
    c = boom_split(values, index, "gap", seed=4)
    for k in a.parts():
        np.testing.assert_array_equal(a.parts()[k], b.parts()[k])
    np.testing.assert_array_equal(a.ood_test, c.ood_test)  # the OOD set does not depend on the seed
    assert not np.array_equal(a.id_test, c.id_test)


def test_save_load(tmp_path):
    values = np.random.default_rng(2).normal(size=2_000)
    split = boom_split(values, np.arange(1, 2_001), "x", n_ood=100)
    for name in ("s.json", "s.json.gz"):
        save_splits({"x": split}, tmp_path / name)
        back = load_splits(tmp_path / name)["x"]
        assert isinstance(back, BoomSplit) and back.property == "x"
        for k, v in split.parts().items():
            np.testing.assert_array_equal(back.parts()[k], v)
    with pytest.raises(FileNotFoundError, match="no such split file"):
        load_splits(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text('{"x": {"train": [1]}}')
    with pytest.raises(ValueError, match="not a BOOM split file"):
        load_splits(tmp_path / "bad.json")


def test_bad_split_arguments():
    values = np.arange(100.0)
    with pytest.raises(ValueError, match="n_ood=100"):
        boom_split(values, np.arange(100), n_ood=100)
    with pytest.raises(ValueError, match="leaves no training set"):
        boom_split(values, np.arange(100), n_ood=10, id_fraction=0.5, val_fraction=0.5)
