"""Readers/writers: extxyz <-> records <-> DeePMD npy round trips, ASE db, pymatgen, and the error messages."""
import gzip
from pathlib import Path

import numpy as np
import pytest

from mftcalc.data.io import from_pymatgen, read_deepmd, read_structures, to_pymatgen, write_deepmd, write_extxyz
from mftcalc.data.structure import Structure, StructureError

SHARED = Path(__file__).resolve().parents[4] / "shared" / "data"
FIELDS = ("positions", "numbers", "cell", "pbc", "energy", "forces")


def _random_structures(seed: int = 0) -> list:
    """Crystals (with stress) and molecules (no cell), two compositions each, one with a permuted atom order."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(6):
        numbers = np.array([26, 26, 27] if k % 2 else [27, 26, 26])
        cell = np.diag([3.0, 3.2, 3.4]) + 0.1 * rng.standard_normal((3, 3))
        out.append(Structure(positions=rng.uniform(0, 3, (3, 3)), numbers=numbers, cell=cell, pbc=True,
                             energy=rng.normal(-10, 1), forces=rng.normal(size=(3, 3)),
                             stress=(lambda a: a + a.T)(rng.normal(scale=0.01, size=(3, 3))),
                             properties={"band_gap": rng.uniform(0, 3)}, property_units={"band_gap": "eV"},
                             info={"source_index": k}))
    for k in range(5):
        numbers = np.array([6, 1, 1, 1, 1] if k < 3 else [8, 1, 1])
        out.append(Structure(positions=rng.normal(size=(numbers.size, 3)), numbers=numbers,
                             energy=rng.normal(-100, 5), forces=rng.normal(size=(numbers.size, 3)),
                             properties={"band_gap": rng.uniform(0, 3), "dipole_norm": rng.uniform(0, 2)},
                             property_units={"band_gap": "eV", "dipole_norm": "Debye"}, info={"source_index": 6 + k}))
    return out


def _assert_same(a: list, b: list, stress_rtol: float = 0.0) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f), err_msg=f)
        if x.stress is None:
            assert y.stress is None
        else:  # virial = -stress * V and back: exact up to one rounding of the division
            np.testing.assert_allclose(y.stress, x.stress, rtol=stress_rtol, atol=0)
        assert x.properties == y.properties
        assert x.property_units == y.property_units


def _deepmd_round_trip(structures: list, directory: Path) -> list:
    systems = write_deepmd(structures, directory)
    back = read_deepmd(directory)
    # read order is sorted system path, then frame; map it back to the input order
    order = {i: k for k, i in enumerate(i for name in sorted(systems) for i in systems[name])}
    assert sorted(s.info["system"] for s in back) == sorted(n for n, m in systems.items() for _ in m)
    return [back[order[i]] for i in range(len(structures))]


def test_extxyz_deepmd_round_trip_identical(tmp_path):
    original = _random_structures()
    write_extxyz(original, tmp_path / "a.extxyz.gz")
    records = read_structures(tmp_path / "a.extxyz.gz")
    back = _deepmd_round_trip(records, tmp_path / "dp")
    _assert_same(records, back, stress_rtol=1e-15)
    assert len({s.info["system"] for s in back}) == 4  # two atom orders x (crystal, molecule) compositions


def test_extxyz_round_trip_keeps_labels_and_properties(tmp_path):
    original = _random_structures()
    write_extxyz(original, tmp_path / "a.extxyz")
    back = read_structures(tmp_path / "a.extxyz")
    for x, y in zip(original, back):
        np.testing.assert_allclose(y.positions, x.positions, atol=1e-8)  # ASE writes 8 decimals
        np.testing.assert_allclose(y.forces, x.forces, atol=1e-8)
        np.testing.assert_array_equal(y.cell, x.cell)
        assert y.energy == x.energy and y.properties == x.properties and y.property_units == x.property_units
        assert y.info["source_index"] == x.info["source_index"]
        if x.stress is not None:
            np.testing.assert_array_equal(y.stress, x.stress)
    assert len(read_structures(tmp_path / "a.extxyz", index="2:5")) == 3
    assert read_structures(tmp_path / "a.extxyz", index=-1)[0].numbers.tolist() == [8, 1, 1]


@pytest.mark.parametrize("suffix", [".extxyz.gz", ".extxyz.xz", ".extxyz.bz2"])
def test_extxyz_compression_by_suffix(tmp_path, suffix):
    """Each suffix writes its own compression (checked by the file's magic bytes) and reads back the same frames."""
    original = _random_structures()
    write_extxyz(original, tmp_path / f"a{suffix}")
    magic = {".gz": b"\x1f\x8b", ".xz": b"\xfd7zXZ", ".bz2": b"BZh"}[Path(suffix).suffix]
    assert (tmp_path / f"a{suffix}").read_bytes().startswith(magic)
    write_extxyz(original, tmp_path / "plain.extxyz")
    _assert_same(read_structures(tmp_path / f"a{suffix}"), read_structures(tmp_path / "plain.extxyz"))


def test_extxyz_decimals_round_only_positions_and_forces(tmp_path):
    original = _random_structures()
    write_extxyz(original, tmp_path / "r.extxyz.xz", decimals=6)
    back = read_structures(tmp_path / "r.extxyz.xz")
    for x, y in zip(original, back):
        np.testing.assert_array_equal(y.positions, np.round(x.positions, 6))
        np.testing.assert_array_equal(y.forces, np.round(x.forces, 6))
        assert np.abs(y.positions - x.positions).max() > 1e-8     # really rounded, not written at 8 decimals
        np.testing.assert_array_equal(y.cell, x.cell)
        assert y.energy == x.energy and y.properties == x.properties
        if x.stress is not None:
            np.testing.assert_array_equal(y.stress, x.stress)


@pytest.mark.parametrize("name", ["dpgen_mapbi3", "deepmd_nopbc"])
def test_shared_files_round_trip(tmp_path, name):
    path = SHARED / "forcefield" / f"{name}.extxyz.gz"
    if not path.is_file():
        pytest.skip(f"shared data file {path} not present")
    records = read_structures(path)
    back = _deepmd_round_trip(records, tmp_path / "dp")
    _assert_same(records, back, stress_rtol=1e-15)


def test_deepmd_directory_of_systems_and_index(tmp_path):
    structures = _random_structures()
    write_deepmd(structures, tmp_path / "dp", set_size=2)
    assert (tmp_path / "dp" / "CH4" / "set.001").is_dir() and (tmp_path / "dp" / "CH4" / "nopbc").is_file()
    every = read_structures(tmp_path / "dp")
    assert len(every) == len(structures)
    one = read_structures(tmp_path / "dp" / "CH4", index="1:")
    assert [s.info["frame"] for s in one] == [1, 0] and {s.info["set"] for s in one} == {"set.000", "set.001"}
    assert one[0].property_units == {"band_gap": "eV", "dipole_norm": "Debye"}


def test_deepmd_needs_type_map(tmp_path):
    write_deepmd(_random_structures()[-2:], tmp_path / "dp")
    system = tmp_path / "dp" / "H2O"
    (system / "type_map.raw").unlink()
    with pytest.raises(FileNotFoundError, match="type_map"):
        read_deepmd(system)
    assert read_deepmd(system, type_map=["H", "O"])[0].numbers.tolist() == [8, 1, 1]


def test_ase_db(tmp_path):
    import ase.db
    from ase.build import molecule

    with ase.db.connect(tmp_path / "m.db") as db:
        for k, name in enumerate(["H2O", "CH4"]):
            db.write(molecule(name), gap=0.1 * (k + 1), label=name)
    structures = read_structures(tmp_path / "m.db", properties={"gap": "Hartree"})
    assert [s.properties["gap"] for s in structures] == [0.1, 0.2]
    assert structures[1].info["label"] == "CH4" and structures[1].property_units == {"gap": "Hartree"}
    with pytest.raises(StructureError, match="property 'homo' is missing"):
        read_structures(tmp_path / "m.db", properties=["homo"])


def test_pymatgen_round_trip():
    from pymatgen.core import Lattice, Molecule
    from pymatgen.core import Structure as PmgStructure

    crystal = PmgStructure(Lattice.cubic(4.2), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], properties={"e_form": -2.0})
    s = from_pymatgen(crystal, property_units={"e_form": "eV/atom"})
    assert s.numbers.tolist() == [11, 17] and s.pbc.all() and s.properties == {"e_form": -2.0}
    np.testing.assert_allclose(s.positions[1], [2.1, 2.1, 2.1])
    again = to_pymatgen(s)
    assert isinstance(again, PmgStructure) and again.properties["e_form"] == -2.0
    np.testing.assert_allclose(again.lattice.matrix, crystal.lattice.matrix)
    water = from_pymatgen(Molecule(["O", "H", "H"], [[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    assert not water.is_periodic and isinstance(to_pymatgen(water), Molecule)
    disordered = PmgStructure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    with pytest.raises(StructureError, match="partially occupied"):
        from_pymatgen(disordered)


# --------------------------------------------------------------------------------------------- error messages
XYZ_CASES = {
    "unknown element": ("2\n\nXx 0 0 0\nH 0 0 1\n", "unknown element symbol 'Xx'"),
    "nan coordinate": ("2\n\nC 0 0 nan\nH 0 0 1\n", "positions contains NaN"),
    "inf energy": ("2\nenergy=inf\nC 0 0 0\nH 0 0 1\n", "energy is NaN or inf"),
    "forces with 2 columns": ("2\nProperties=species:S:1:pos:R:3:forces:R:2\nC 0 0 0 1 1\nH 0 0 1 1 1\n",
                              r"forces has shape \(2, 2\), expected \(2, 3\)"),
    "empty structure": ("0\n\n", "empty structure"),
    "empty file": ("", "no structures found"),
}


@pytest.mark.parametrize("case", list(XYZ_CASES))
def test_xyz_errors(tmp_path, case):
    text, message = XYZ_CASES[case]
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(StructureError, match=message):
        read_structures(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_structures(tmp_path / "absent.extxyz.gz")
    with pytest.raises(FileNotFoundError, match="no type.raw"):
        read_deepmd(tmp_path)


def test_deepmd_fparam_becomes_frame_parameters_in_info(tmp_path):
    """fparam.npy (deepmd-kit's frame parameters) is read into info: one column as ``fparam``, several as
    ``fparam_0``, ... (what ``--frame-param`` names); a file of the wrong length is refused."""
    system = _deepmd_system(tmp_path)
    np.save(system / "set.000" / "fparam.npy", np.array([[300.0], [500.0]]))
    assert [s.info["fparam"] for s in read_deepmd(system)] == [300.0, 500.0]
    np.save(system / "set.000" / "fparam.npy", np.array([[300.0, 1.0], [500.0, 2.0]]))
    back = read_deepmd(system)
    assert [(s.info["fparam_0"], s.info["fparam_1"]) for s in back] == [(300.0, 1.0), (500.0, 2.0)]
    assert "fparam" not in back[0].properties
    np.save(system / "set.000" / "fparam.npy", np.array([300.0, 500.0, 700.0]))
    with pytest.raises(StructureError, match="fparam.npy has shape"):
        read_deepmd(system)


def _deepmd_system(tmp_path) -> Path:
    write_deepmd(_random_structures()[0:4:2], tmp_path / "dp")  # two frames of one system
    return tmp_path / "dp" / "CoFe2"


def _edit(path: Path, change) -> None:
    arr = np.load(path)
    np.save(path, change(arr))


DEEPMD_CASES = {
    "unknown element in type map": (lambda d: (d / "type_map.raw").write_text("Fe\nXx\n"), "unknown element"),
    "type index beyond type map": (lambda d: (d / "type.raw").write_text("0\n1\n5\n"), "type map has only"),
    "empty type.raw": (lambda d: (d / "type.raw").write_text(""), "type.raw is empty"),
    "nan coordinate": (lambda d: _edit(d / "set.000" / "coord.npy", lambda a: np.where(a > 1, np.nan, a)),
                       "positions contains NaN"),
    "inf force": (lambda d: _edit(d / "set.000" / "force.npy", lambda a: np.full_like(a, np.inf)),
                  "forces contains NaN"),
    "nan energy": (lambda d: _edit(d / "set.000" / "energy.npy", lambda a: a * np.nan), "energy is NaN"),
    "nan property": (lambda d: _edit(d / "set.000" / "band_gap.npy", lambda a: a * np.nan),
                     "property 'band_gap' is NaN"),
    "force.npy with wrong columns": (lambda d: _edit(d / "set.000" / "force.npy", lambda a: a[:, :8]),
                                     r"force.npy has shape \(2, 8\), expected \(2, 9\)"),
    "energy.npy with wrong frames": (lambda d: _edit(d / "set.000" / "energy.npy", lambda a: a[:1]),
                                     r"energy.npy has shape \(1,\), expected \(2,\)"),
    "coord.npy with wrong columns": (lambda d: _edit(d / "set.000" / "coord.npy", lambda a: a[:, :7]),
                                     r"coord.npy has shape \(2, 7\)"),
}


@pytest.mark.parametrize("case", list(DEEPMD_CASES))
def test_deepmd_errors(tmp_path, case):
    system = _deepmd_system(tmp_path)
    corrupt, message = DEEPMD_CASES[case]
    corrupt(system)
    with pytest.raises(StructureError, match=message):
        read_deepmd(system)


def test_deepmd_missing_files(tmp_path):
    system = _deepmd_system(tmp_path)
    (system / "set.000" / "box.npy").unlink()
    with pytest.raises(FileNotFoundError, match="box.npy is missing"):
        read_deepmd(system)
    (system / "set.000" / "coord.npy").unlink()
    with pytest.raises(FileNotFoundError, match="coord.npy is missing"):
        read_deepmd(system)


def test_write_deepmd_errors(tmp_path):
    crystal, molecule = _random_structures()[0], _random_structures()[-1]
    with pytest.raises(StructureError, match="partly periodic"):
        write_deepmd([crystal.with_labels(pbc=[True, True, False])], tmp_path / "a")
    with pytest.raises(StructureError, match="non-periodic structure with stress"):
        write_deepmd([molecule.with_labels(stress=np.eye(3))], tmp_path / "b")
    with pytest.raises(StructureError, match="clash with DeePMD"):
        write_deepmd([molecule.with_labels(properties={"virial": 1.0})], tmp_path / "c")
    write_deepmd([molecule], tmp_path / "d")
    with pytest.raises(FileExistsError, match="not empty"):
        write_deepmd([molecule], tmp_path / "d")


def test_a_declared_property_unit_is_kept_and_a_different_one_refused(tmp_path):
    """Asking for another unit than the file declares used to relabel the values (eV read as Hartree)."""
    from mftcalc.experiments.tasks import file_task
    rng = np.random.default_rng(0)
    frames = [Structure(positions=rng.normal(scale=1.5, size=(3, 3)) + np.arange(3)[:, None], numbers=np.array([8, 1, 1]),
                        properties={"my_gap": 5.0 + k}, property_units={"my_gap": "eV"}) for k in range(12)]
    write_extxyz(frames, tmp_path / "d.extxyz")
    assert read_structures(tmp_path / "d.extxyz", properties={"my_gap": "eV"})[0].property_units == {"my_gap": "eV"}
    assert read_structures(tmp_path / "d.extxyz", properties=["my_gap"])[0].property_units == {"my_gap": "eV"}
    with pytest.raises(StructureError, match=r"frame 0: the file declares 'my_gap' in 'eV'.*'Hartree' was asked"):
        read_structures(tmp_path / "d.extxyz", properties={"my_gap": "Hartree"})
    assert file_task(str(tmp_path / "d.extxyz"), "my_gap").unit == "eV"          # no --unit: the file's
    with pytest.raises(StructureError, match="'Hartree' was asked for; nothing converts the labels"):
        file_task(str(tmp_path / "d.extxyz"), "my_gap", unit="Hartree")
    mixed = frames[:6] + [f.with_labels(property_units={"my_gap": "kcal/mol"}) for f in frames[6:]]
    write_extxyz(mixed, tmp_path / "mixed.extxyz")
    with pytest.raises(ValueError, match=r"declare 'my_gap' in several units \(eV, kcal/mol\)"):
        file_task(str(tmp_path / "mixed.extxyz"), "my_gap")
    write_extxyz(frames[:4], tmp_path / "val.extxyz")
    assert file_task(str(tmp_path / "d.extxyz"), "my_gap", val_path=str(tmp_path / "val.extxyz")).unit == "eV"


def test_a_partially_occupied_cif_is_refused_not_read_as_one_species(tmp_path):
    """ASE's CIF reader keeps one species per mixed site (Si0.5Ge0.5 -> Ge) and records the occupancy in info;
    the structure used to be predicted as the ordered one."""
    from ase.io import read
    head = ("data_t\n_cell_length_a 4.0\n_cell_length_b 4.0\n_cell_length_c 4.0\n_cell_angle_alpha 90\n"
            "_cell_angle_beta 90\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1'\nloop_\n"
            "_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
            "_atom_site_occupancy\n")
    (tmp_path / "mixed.cif").write_text(head + "Si1 Si 0 0 0 0.5\nGe1 Ge 0 0 0 0.5\nO1 O 0.5 0.5 0.5 1.0\n")
    (tmp_path / "vacancy.cif").write_text(head + "Si1 Si 0 0 0 0.9\nO1 O 0.5 0.5 0.5 1.0\n")
    (tmp_path / "ordered.cif").write_text(head + "Si1 Si 0 0 0 1.0\nO1 O 0.5 0.5 0.5 1.0\n")
    with pytest.raises(StructureError, match=r"mixed.cif, frame 0: site 0 is partially occupied \(.*Si 0.5.*\).*order"):
        read_structures(tmp_path / "mixed.cif")
    with pytest.raises(StructureError, match=r"site 0 is partially occupied \(Si 0.9\)"):
        read_structures(tmp_path / "vacancy.cif")
    with pytest.raises(StructureError, match="partially occupied"):
        Structure.from_ase(read(tmp_path / "mixed.cif"))                   # the calculator's and predict's entry
    assert read_structures(tmp_path / "ordered.cif")[0].n_atoms == 2


def test_write_extxyz_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way (a killed run, a full disk) leaves the earlier file whole and no temporary one."""
    from ase.build import molecule as ase_molecule

    import mftcalc.data.io as io_module
    path = tmp_path / "out.extxyz.gz"
    first = [Structure.from_ase(ase_molecule("CH4"))]
    io_module.write_extxyz(first, path)
    before = path.read_bytes()

    def failing_opener(name, mode):
        handle = gzip.open(name, mode)
        handle.write("3\nhalf a frame\n")
        handle.close()
        raise OSError("disk full")

    monkeypatch.setitem(io_module.COMPRESSED_OPENERS, ".gz", failing_opener)
    with pytest.raises(OSError, match="disk full"):
        io_module.write_extxyz(first * 3, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.extxyz.gz"]
