"""QM9 from the qm9pack CSVs: parsing, the npz cache (read back without parsing), Structure records of a subset."""
import csv

import numpy as np
import pytest

from mftcalc.data.qm9 import CACHE_NAME, QM9_PROPERTIES, load_qm9, parse_qm9_csv, qm9pack_data_dir


@pytest.fixture(scope="module")
def qm9():
    """The full dataset from the default cache (parses the CSVs once, ~10 s, when the cache is absent)."""
    return load_qm9(progress=False)


def _head_csvs(directory, rows_per_file=4):
    """Copies of the qm9pack CSVs cut to their first rows."""
    directory.mkdir()
    for src in sorted(qm9pack_data_dir().glob("qm9_part*.csv")):
        with open(src, newline="") as fh:
            lines = [next(fh) for _ in range(rows_per_file + 1)]
        (directory / src.name).write_text("".join(lines))
    return directory


def test_full_dataset(qm9):
    assert len(qm9) == 130_831
    assert qm9.qm9_index[0] == 1 and qm9.qm9_index[-1] == 133_885 and np.all(np.diff(qm9.qm9_index) > 0)
    assert qm9.positions.shape == (qm9.offsets[-1], 3) and qm9.numbers.shape == (qm9.offsets[-1],)
    assert qm9.n_atoms.min() == 3 and qm9.n_atoms.max() == 29
    assert set(np.unique(qm9.numbers).tolist()) == {1, 6, 7, 8, 9}
    assert qm9.properties.shape == (130_831, 8) and np.isfinite(qm9.properties).all()
    assert qm9.property_names == tuple(QM9_PROPERTIES)
    np.testing.assert_allclose(qm9.property("gap"), qm9.property("lumo") - qm9.property("homo"), atol=2e-4)


def test_first_molecule_matches_csv(qm9):
    with open(qm9pack_data_dir() / "qm9_part1.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh))
    methane = qm9.structures([0])[0]
    assert methane.numbers.tolist() == [6, 1, 1, 1, 1] and not methane.is_periodic
    np.testing.assert_array_equal(methane.positions[0], [-0.0126981359, 1.0858041578, 0.0080009958])
    assert methane.properties["gap"] == float(row["HOMO_LUMO_gap_au"])
    assert methane.properties["alpha"] == float(row["Polarizability_bohr3"])
    assert methane.properties["cv"] == float(row["Heatcapacity_Cv_cal_mol_K"])
    assert methane.info["qm9_index"] == 1


def test_structures_of_subset(qm9):
    rows = qm9.rows([1, 2, 133_885])
    assert rows.tolist() == [0, 1, len(qm9) - 1]
    subset = qm9.structures(rows, properties=["gap", "mu"])
    assert [s.info["qm9_index"] for s in subset] == [1, 2, 133_885]
    assert subset[2].properties == {"gap": qm9.property("gap")[-1], "mu": qm9.property("mu")[-1]}
    assert subset[0].property_units == {"gap": "Hartree", "mu": "Debye"}
    a, b = qm9.offsets[-2:]
    np.testing.assert_array_equal(subset[2].positions, qm9.positions[a:b])
    with pytest.raises(KeyError, match="unknown QM9 property 'u0'"):
        qm9.structures(rows, properties=["u0"])
    missing = np.setdiff1d(np.arange(1, 133_886), qm9.qm9_index)[0]
    with pytest.raises(KeyError, match="not in the dataset"):
        qm9.rows([1, missing])


def test_cached_load_reads_the_cache_without_parsing(qm9, monkeypatch):
    import mftcalc.data.qm9 as module

    def no_parse(*args, **kwargs):
        raise AssertionError("the cache is current: load_qm9 must not parse the CSVs again")

    monkeypatch.setattr(module, "parse_qm9_csv", no_parse)
    again = load_qm9(progress=False)
    np.testing.assert_array_equal(again.positions, qm9.positions)


def test_parse_and_cache_small_csv(tmp_path, qm9):
    data_dir = _head_csvs(tmp_path / "csv")
    small = load_qm9(cache_dir=tmp_path / "cache", data_dir=data_dir, progress=False)
    assert (tmp_path / "cache" / CACHE_NAME).is_file() and len(small) == 12
    rows = qm9.rows(small.qm9_index)
    np.testing.assert_array_equal(small.properties, qm9.properties[rows])
    for s, ref in zip(small.structures(), qm9.structures(rows)):
        np.testing.assert_array_equal(s.positions, ref.positions)
        np.testing.assert_array_equal(s.numbers, ref.numbers)
    cached = load_qm9(cache_dir=tmp_path / "cache", data_dir=data_dir, progress=False)
    np.testing.assert_array_equal(cached.positions, small.positions)
    # a changed source invalidates the cache
    (data_dir / "qm9_part3.csv").write_text("".join((data_dir / "qm9_part3.csv").read_text().splitlines(True)[:2]))
    assert len(load_qm9(cache_dir=tmp_path / "cache", data_dir=data_dir, progress=False)) == 9


def test_bad_csv(tmp_path):
    (tmp_path / "qm9_part1.csv").write_text("Index,N_atoms\n1,5\n")
    with pytest.raises(ValueError, match="not a qm9pack QM9 CSV"):
        parse_qm9_csv([tmp_path / "qm9_part1.csv"], progress=False)
    with pytest.raises(FileNotFoundError, match="no qm9_part"):
        load_qm9(cache_dir=tmp_path, data_dir=tmp_path / "empty", progress=False)


@pytest.mark.slow
def test_full_parse_matches_cache(tmp_path, qm9):
    fresh = load_qm9(cache_dir=tmp_path, progress=False)
    for name in ("positions", "numbers", "offsets", "properties", "qm9_index"):
        np.testing.assert_array_equal(getattr(fresh, name), getattr(qm9, name))
