"""BOOM splits: BOOM's bandwidth and OOD set against scikit-learn's exact KDE, the binned-FFT KDE against the
exact kernel sum, split sizes, SMILES keys, determinism, disjointness, files."""
import random

import numpy as np
import pytest

from mftcalc.data.boom import (BoomSplit, boom_split, boom_splits, kde_density, load_splits, save_splits,
                               scott_bandwidth, scott_bandwidth_scaled, test_union)
from mftcalc.data.qm9 import load_qm9


@pytest.fixture(scope="module")
def qm9():
    return load_qm9(progress=False)


def exact_kde(values: np.ndarray, chunk: int = 1024, h: float | None = None) -> np.ndarray:
    """Exact Gaussian KDE at every value (float64 kernel sum in chunks), default the std-scaled Scott width
    (narrower than BOOM's, so the harder case for the binned FFT)."""
    h = scott_bandwidth_scaled(values) if h is None else h
    out = np.empty_like(values)
    for start in range(0, values.size, chunk):
        z = (values[start:start + chunk, None] - values[None, :]) / h
        out[start:start + chunk] = np.exp(-0.5 * z * z).sum(axis=1)
    return out / (values.size * h * np.sqrt(2 * np.pi))


def _overlap_with_exact(values: np.ndarray, n_low: int) -> float:
    h = scott_bandwidth_scaled(values)
    fast, exact = kde_density(values, bandwidth=h), exact_kde(values, h=h)
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


def test_bandwidth_is_scikit_learns_scott():
    """BOOM calls KernelDensity(bandwidth="scott"): n**(-1/5) in the data's unit, not scaled by the spread."""
    from sklearn.neighbors import KernelDensity
    values = np.random.default_rng(3).normal(5.0, 0.01, 3_000)
    kde = KernelDensity(kernel="gaussian", bandwidth="scott").fit(values[:, None])
    assert scott_bandwidth(values) == pytest.approx(kde.bandwidth_, rel=1e-12)
    assert scott_bandwidth_scaled(values) == pytest.approx(0.01 * scott_bandwidth(values), rel=0.05)  # std-scaled


@pytest.mark.parametrize("name", ["gap", "r2"])
def test_ood_set_is_scikit_learns_on_a_subsample(qm9, name):
    """BOOM's procedure end to end on 6,000 molecules: the OOD set of boom_split (binned FFT) equals the lowest
    scores of scikit-learn's exact KernelDensity(bandwidth="scott"), as BOOM's reference code computes them."""
    from sklearn.neighbors import KernelDensity
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(qm9), 6_000, replace=False))
    values, index, n_ood = qm9.property(name)[rows], qm9.qm9_index[rows], 460
    density = np.exp(KernelDensity(kernel="gaussian", bandwidth="scott").fit(values[:, None])
                     .score_samples(values[:, None]))
    split = boom_split(values, index, name, n_ood=n_ood)
    # The n_ood lowest densities, up to how ties at the boundary are broken: molecules with equal property values
    # have equal densities (the gap's sample has five at 0.3318 Ha on the boundary, and numpy's argpartition breaks
    # such ties differently across versions), and the binned FFT is exact to 1e-6 relative (tested above). So the
    # OOD set must hold every molecule clearly below the n_ood-th density and none clearly above it.
    threshold = np.partition(density, n_ood - 1)[n_ood - 1]
    below, at_most = index[density < threshold * (1 - 1e-6)], index[density <= threshold * (1 + 1e-6)]
    assert split.ood_test.size == n_ood
    assert np.setdiff1d(below, split.ood_test).size == 0
    assert np.setdiff1d(split.ood_test, at_most).size == 0
    assert below.size >= n_ood - 10          # the boundary ties are a handful, so the test still has teeth


def test_id_draw_follows_boom():
    """Non-OOD keys, in order, are ID test when Python's random (seed 42) draws below 0.05; the validation
    draw comes from BOOM's training set only and is the only part that depends on the seed."""
    values = np.random.default_rng(4).normal(size=3_000)
    index = np.arange(1, 3_001)
    split = boom_split(values, index, "x", n_ood=200, seed=1)
    ood = set(split.ood_test.tolist())
    draw = random.Random(42)
    expected_id = [i for i in index.tolist() if i not in ood and draw.random() < 0.05]
    assert split.id_test.tolist() == expected_id
    other = boom_split(values, index, "x", n_ood=200, seed=2)
    np.testing.assert_array_equal(other.id_test, split.id_test)
    np.testing.assert_array_equal(other.ood_test, split.ood_test)
    assert not np.array_equal(other.val, split.val)
    assert split.val.size == round(0.05 * 2_800)


def test_smiles_keys_count_once_and_stay_together():
    """Molecules sharing a key count once in the density and land in the same set."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.normal(size=2_000), [9.0, 9.0]])   # two copies of one far outlier
    keys = [f"m{k}" for k in range(2_000)] + ["dup", "dup"]
    split = boom_split(values, np.arange(1, 2_003), "x", n_ood=50, keys=keys)
    assert {2_001, 2_002} <= set(split.ood_test.tolist())
    assert split.ood_test.size == 51                                    # 50 keys, one of them two molecules
    with pytest.raises(ValueError, match="keys has 3 entries"):
        boom_split(values, np.arange(1, 2_003), keys=["a", "b", "c"])


def test_kde_rejects_degenerate_input():
    with pytest.raises(ValueError, match="all values are equal"):
        kde_density(np.ones(10))
    with pytest.raises(ValueError, match="finite"):
        kde_density(np.array([1.0, np.nan, 2.0]))


def test_all_eight_splits(qm9):
    splits = boom_splits(qm9, seed=0)
    n_rest = len(qm9) - 10_000
    everyone = np.sort(qm9.qm9_index)
    for name, split in splits.items():
        parts = split.parts()
        assert split.property == name
        assert parts["ood_test"].size == 10_000 and parts["val"].size == round(0.05 * n_rest)
        assert abs(parts["id_test"].size - 0.05 * n_rest) < 4 * np.sqrt(0.05 * n_rest)   # a Bernoulli(0.05) draw
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
    np.testing.assert_array_equal(a.ood_test, c.ood_test)  # BOOM's OOD and ID sets do not depend on the seed
    np.testing.assert_array_equal(a.id_test, c.id_test)
    assert not np.array_equal(a.val, c.val)


def test_shipped_split_file_is_booms_procedure(qm9):
    """data/boom_splits.json.gz is what boom_splits gives today (regenerate it when the procedure changes)."""
    from pathlib import Path
    shipped = load_splits(Path(__file__).resolve().parents[3] / "data" / "boom_splits.json.gz")
    for name in ("gap", "homo", "lumo"):
        fresh = boom_splits(qm9, [name], seed=0)[name]
        for k, v in fresh.parts().items():
            np.testing.assert_array_equal(shipped[name].parts()[k], v)


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
