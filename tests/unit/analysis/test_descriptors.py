"""``mftcalc descriptors`` and :mod:`mftcalc.analysis.descriptors`: pooled and per-atom backbone features, their
files and map, and the errors of bad input."""
import csv
import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write
from scipy.spatial.transform import Rotation

from mftcalc.analysis.descriptors import (compute_descriptors, plot_descriptor_map, read_descriptors,
                                          write_descriptors)
from mftcalc.cli import main
from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.model.applicability import pooled_features
from mftcalc.model.checkpoint import export_torchscript, load_model, read_checkpoint
from tests._helpers import save_tiny_model

NAMES = ["CH3CH2OH", "C6H6", "H2O", "CH4", "NH3", "CH3OH"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("desc") / "tiny.pt")


def _labelled(n: int = 6) -> list:
    out = []
    for k in range(n):
        atoms = molecule(NAMES[k % len(NAMES)])
        atoms.rattle(0.03, seed=k)
        s = Structure.from_ase(atoms)
        if k != 2:                              # one structure without a label: NaN in the arrays, blank in CSV
            s = s.with_labels(properties={"gap": 0.2 + 0.01 * k}, property_units={"gap": "Hartree"})
        out.append(s)
    return out


def test_pooled_rows_are_the_node_features_the_heads_read(model_path, monkeypatch):
    structures = _labelled()
    model = load_model(model_path, torch.float64)
    mean = compute_descriptors(model_path, structures, dtype=torch.float64)
    np.testing.assert_allclose(mean.values, pooled_features(model, structures), rtol=1e-12)
    total = compute_descriptors(model_path, structures, pool="sum", dtype=torch.float64)
    np.testing.assert_allclose(total.values, mean.values * mean.n_atoms[:, None], rtol=1e-10, atol=1e-12)
    atoms = compute_descriptors(model_path, structures, pool="atoms", dtype=torch.float64)
    assert atoms.values.shape == (sum(s.n_atoms for s in structures), mean.values.shape[1])
    for k in range(len(structures)):
        np.testing.assert_allclose(atoms.values[atoms.structure_index == k].mean(0), mean.values[k], rtol=1e-12)
    assert list(mean.formulas[:3]) == ["C2H6O", "C6H6", "H2O"] and np.isnan(mean.labels["gap"][2])
    assert mean.units == {"gap": "Hartree"} and len(mean.record["model_sha256"]) == 64
    import mftcalc.analysis.descriptors as descriptors
    monkeypatch.setattr(descriptors, "BLOCK", 4)                  # blocks of 4 of the 6: the same rows
    np.testing.assert_allclose(compute_descriptors(model_path, structures, dtype=torch.float64).values,
                               mean.values, rtol=1e-12)
    np.testing.assert_allclose(compute_descriptors(model_path, structures, pool="atoms", dtype=torch.float64).values,
                               atoms.values, rtol=1e-12)


def test_descriptors_are_invariant_and_the_export_gives_the_same(model_path, tmp_path):
    structures = _labelled(3)
    ref = compute_descriptors(model_path, structures, dtype=torch.float64).values
    rot = Rotation.random(random_state=1).as_matrix()
    moved = []
    for s in structures:
        perm = np.random.default_rng(0).permutation(s.n_atoms)
        moved.append(Structure(numbers=s.numbers[perm], positions=s.positions[perm] @ rot.T + 3.0))
    np.testing.assert_allclose(compute_descriptors(model_path, moved, dtype=torch.float64).values, ref, atol=1e-10)
    export_torchscript(load_model(model_path, torch.float64), tmp_path / "tiny.ts",
                       read_checkpoint(model_path)["metadata"])
    scripted = compute_descriptors(tmp_path / "tiny.ts", structures, dtype=torch.float64).values
    np.testing.assert_allclose(scripted, ref, rtol=1e-9, atol=1e-12)


def test_files_keep_rows_labels_units_and_the_record(model_path, tmp_path):
    structures = _labelled()
    desc = compute_descriptors(model_path, structures, dtype=torch.float64)
    back = read_descriptors(write_descriptors(desc, tmp_path / "d.npz"))
    np.testing.assert_array_equal(back["descriptors"], desc.values)
    np.testing.assert_array_equal(back["y_gap"], desc.labels["gap"])
    assert back["record"]["units"] == {"gap": "Hartree"} and back["record"]["pool"] == "mean"
    assert list(back["n_atoms"]) == [s.n_atoms for s in structures]
    np.testing.assert_array_equal(np.load(write_descriptors(desc, tmp_path / "d.npy")), desc.values)
    with open(write_descriptors(desc, tmp_path / "d.csv")) as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:5] == ["index", "formula", "n_atoms", "gap_Hartree", "d0"] and len(rows) == 7
    assert rows[3][3] == "" and float(rows[1][3]) == pytest.approx(0.2)
    np.testing.assert_allclose([float(v) for v in rows[1][4:]], desc.values[0], rtol=1e-7)
    atoms = compute_descriptors(model_path, structures[:2], pool="atoms")
    with open(write_descriptors(atoms, tmp_path / "a.csv")) as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:4] == ["structure", "atom", "element", "d0"] and rows[1][:3] == ["0", "0", "C"]
    assert rows[-1][:2] == ["1", str(structures[1].n_atoms - 1)]
    assert "structure_index" in read_descriptors(write_descriptors(atoms, tmp_path / "a.npz"))


def test_map_is_drawn_coloured_by_a_label_or_the_chemical_system(model_path, tmp_path):
    desc = compute_descriptors(model_path, _labelled())
    ratio = plot_descriptor_map(desc, tmp_path / "gap.png", "gap")["explained_variance_ratio"]
    assert (tmp_path / "gap.png").stat().st_size > 0 and 0 < ratio[1] <= ratio[0] <= 1
    plot_descriptor_map(desc, tmp_path / "systems.png")
    assert (tmp_path / "systems.png").stat().st_size > 0
    with pytest.raises(ValueError, match="carry no such label; they carry \\['gap'\\]"):
        plot_descriptor_map(desc, tmp_path / "x.png", "homo")


def test_bad_input_is_refused_with_the_fix(model_path, tmp_path):
    with pytest.raises(ValueError, match="pool must be one of mean, sum, atoms"):
        compute_descriptors(model_path, _labelled(2), pool="max")
    desc = compute_descriptors(model_path, _labelled(2))
    with pytest.raises(ValueError, match="written as .npz, .npy, .csv"):
        write_descriptors(desc, tmp_path / "d.txt")
    with pytest.raises(ValueError, match="at least 3 rows"):
        plot_descriptor_map(desc, tmp_path / "x.png")
    gold = Structure.from_ase(molecule("CH4"))
    gold = Structure(numbers=np.array([79, 1, 1, 1, 1]), positions=gold.positions)
    with pytest.raises(ValueError, match="structure 1"):
        compute_descriptors(model_path, [_labelled(1)[0], gold])


def test_command_writes_the_file_and_the_map_and_names_bad_input(model_path, tmp_path, capsys):
    data = tmp_path / "mols.extxyz"
    write_extxyz(_labelled(), data)                     # labels declared in property_units: kept without --property
    out, image = tmp_path / "d.npz", tmp_path / "map.png"
    assert main(["descriptors", str(model_path), str(data), "--out", str(out), "--plot", str(image),
                 "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "6 structures × " in said and "labels kept: gap" in said and "coloured by gap" in said
    back = read_descriptors(out)
    assert back["descriptors"].shape[0] == 6 and image.stat().st_size > 0
    assert json.dumps(back["record"]["units"]) == '{"gap": "Hartree"}'
    with pytest.raises(SystemExit, match="written as .npz, .npy, .csv"):
        main(["descriptors", str(model_path), str(data), "--out", str(tmp_path / "d.txt")])
    with pytest.raises(SystemExit, match="carries no 'homo' label; its labels: gap"):
        main(["descriptors", str(model_path), str(data), "--out", str(out), "--color-by", "homo"])
    plain = []                                          # a user's file: gap=... on each comment line, no units
    for k, name in enumerate(NAMES[:4]):
        atoms = molecule(name)
        atoms.info["gap"] = 0.3 + 0.01 * k
        plain.append(atoms)
    write(tmp_path / "plain.xyz", plain, format="extxyz")
    assert main(["descriptors", str(model_path), str(tmp_path / "plain.xyz"), "--out", str(tmp_path / "p.npz"),
                 "--property", "gap", "--unit", "Hartree"]) == 0
    back = read_descriptors(tmp_path / "p.npz")
    np.testing.assert_allclose(back["y_gap"], [0.30, 0.31, 0.32, 0.33])
    assert back["record"]["units"] == {"gap": "Hartree"}
    with pytest.raises(SystemExit, match="2 units for 1 --property names"):
        main(["descriptors", str(model_path), str(data), "--out", str(out), "--property", "gap", "--unit", "a", "b"])
    with pytest.raises(SystemExit, match="nothing.extxyz"):
        main(["descriptors", str(model_path), str(tmp_path / "nothing.extxyz"), "--out", str(out)])
