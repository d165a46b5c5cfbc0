"""Physics of the model: forces = −dE/dx, stress = (1/V) dE/dε, invariances, supercells, smoothness, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from mftcalc import keys as K
from mftcalc.data import Structure, collate


def energy_of(model, structure: Structure, dataset: int = 0) -> float:
    return float(model(collate([structure], torch.float64, dataset=dataset), compute_forces=False,
                       compute_stress=False)["energy"][0].detach())


def test_forces_match_finite_differences(tiny_model, molecules, crystal):
    for s in [molecules[0], crystal]:
        out = tiny_model(collate([s], torch.float64))
        forces = out["forces"].detach().numpy()
        h = 1e-5
        rng = np.random.default_rng(3)
        for atom in rng.choice(s.n_atoms, size=min(3, s.n_atoms), replace=False):
            for axis in range(3):
                plus, minus = s.positions.copy(), s.positions.copy()
                plus[atom, axis] += h
                minus[atom, axis] -= h
                fd = -(energy_of(tiny_model, s.with_labels(positions=plus))
                       - energy_of(tiny_model, s.with_labels(positions=minus))) / (2 * h)
                assert abs(fd - forces[atom, axis]) <= 1e-6 * max(1.0, abs(fd)) + 1e-8, (atom, axis, fd)


def test_stress_matches_finite_strain(tiny_model, crystal):
    out = tiny_model(collate([crystal], torch.float64))
    stress = out["stress"][0].detach().numpy()
    volume = abs(np.linalg.det(crystal.cell))
    h = 1e-5
    for a in range(3):
        for b in range(3):
            def strained(eps: float) -> Structure:
                strain = np.eye(3)
                strain[a, b] += eps / 2
                strain[b, a] += eps / 2
                return crystal.with_labels(positions=crystal.positions @ strain, cell=crystal.cell @ strain)
            fd = (energy_of(tiny_model, strained(h)) - energy_of(tiny_model, strained(-h))) / (2 * h) / volume
            assert abs(fd - stress[a, b]) < 1e-7, (a, b, fd, stress[a, b])


def test_rotation_translation_permutation_invariance(tiny_model, molecules):
    s = molecules[0]
    ref = tiny_model(collate([s], torch.float64))
    rot = Rotation.random(random_state=4).as_matrix()
    moved = s.with_labels(positions=s.positions @ rot.T + np.array([1.3, -2.0, 0.7]))
    out = tiny_model(collate([moved], torch.float64))
    for name in ["energy", "gap", "mu", "r2"]:
        torch.testing.assert_close(out[name], ref[name], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"] @ torch.as_tensor(rot.T), rtol=1e-8, atol=1e-10)
    perm = np.random.default_rng(5).permutation(s.n_atoms)
    permuted = s.with_labels(positions=s.positions[perm], numbers=s.numbers[perm])
    out = tiny_model(collate([permuted], torch.float64))
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(out["forces"], ref["forces"][perm], rtol=1e-8, atol=1e-10)


def test_periodic_supercell_is_extensive(tiny_model, crystal):
    atoms = crystal.to_ase()
    big = Structure.from_ase(atoms * (2, 2, 2))
    e1 = energy_of(tiny_model, crystal)
    e8 = energy_of(tiny_model, big)
    assert abs(e8 - 8 * e1) < 1e-8 * max(1.0, abs(e8))
    s1 = tiny_model(collate([crystal], torch.float64))["stress"]
    s8 = tiny_model(collate([big], torch.float64))["stress"]
    torch.testing.assert_close(s8, s1, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("cutoff_name", ["e_rcut", "a_rcut"])
def test_energy_and_forces_smooth_at_cutoffs(tiny_model, cutoff_name):
    rcut = getattr(tiny_model.config.backbone, cutoff_name)
    energies, forces = [], []
    distances = np.linspace(rcut - 1e-3, rcut + 1e-3, 21)
    for d in distances:   # an O atom bonded to C plus an H moving through the cutoff of O
        s = Structure(positions=np.array([[0, 0, 0], [-1.2, 0, 0], [d * 0.6, d * 0.8, 0.0]]), numbers=[8, 6, 1])
        out = tiny_model(collate([s], torch.float64))
        energies.append(float(out["energy"][0].detach()))
        forces.append(out["forces"].detach().numpy())
    energies = np.array(energies)
    forces = np.array(forces)
    assert np.max(np.abs(np.diff(energies))) < 1e-7
    assert np.max(np.abs(np.diff(forces, axis=0))) < 1e-5
    # beyond the edge cutoff the far atom no longer interacts: force on it is exactly zero
    if cutoff_name == "e_rcut":
        assert np.abs(forces[-1][2]).max() == 0.0


def test_batch_equals_single_structures(tiny_model, molecules, crystal):
    structures = molecules + [crystal]
    datasets = [0, 1, 0, 1, 1]
    out = tiny_model(collate(structures, torch.float64, dataset=datasets))
    start = 0
    for k, s in enumerate(structures):
        single = tiny_model(collate([s], torch.float64, dataset=datasets[k]))
        for name in ["energy", "gap", "mu", "r2"]:
            torch.testing.assert_close(out[name][k:k + 1], single[name], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out["forces"][start:start + s.n_atoms], single["forces"], rtol=1e-9, atol=1e-10)
        start += s.n_atoms


def test_dataset_embedding_changes_energy(tiny_model, molecules):
    with torch.no_grad():
        tiny_model.ff_heads["ff"].shift[1, 6] = 0.5
    e0 = energy_of(tiny_model, molecules[0], dataset=0)
    e1 = energy_of(tiny_model, molecules[0], dataset=1)
    assert e0 != e1


def test_float32_close_to_float64(molecules, crystal):
    from _helpers import make_tiny_model
    m64 = make_tiny_model(dtype=torch.float64)
    m32 = make_tiny_model(dtype=torch.float32)
    structures = molecules + [crystal]
    o64 = m64(collate(structures, torch.float64))
    o32 = m32(collate(structures, torch.float32))
    assert o32["energy"].dtype == torch.float64          # per-structure sums accumulate in float64
    assert o32["forces"].dtype == torch.float32
    torch.testing.assert_close(o32["energy"].double(), o64["energy"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(o32["forces"].double(), o64["forces"], rtol=1e-3, atol=1e-4)


def test_molecule_stress_is_zero_and_features_shapes(tiny_model, molecules):
    out = tiny_model(collate(molecules, torch.float64), features=True)
    assert torch.all(out["stress"] == 0)
    assert out[K.NODE_FEATURES].shape == (sum(s.n_atoms for s in molecules), tiny_model.config.backbone.n_dim)
    assert out["edge_features"].shape[0] == out[K.EDGE_INDEX].shape[1]


def test_last_layer_edge_update_is_skipped_only_when_nothing_reads_it(tiny_model, molecules, crystal):
    """Without ``features`` the last layer skips its angle block and edge update: the outputs are the same, and
    the edge features returned with ``features=True`` are the updated ones."""
    batch = collate(molecules + [crystal], torch.float64)
    full = tiny_model(batch, features=True)
    lean = tiny_model(batch, features=False)
    for name in ["energy", "forces", "stress", "gap", "mu", "r2"]:
        torch.testing.assert_close(lean[name], full[name], rtol=0, atol=0)
    graph_edges = tiny_model.backbone(batch[K.NUMBERS], full["edge_vectors"].detach(),
                                      _graph(tiny_model, batch), edge_features=False)[1]
    assert not torch.allclose(graph_edges, full["edge_features"])


def _graph(model, batch):
    from mftcalc.model.graph import build_graph
    return build_graph(batch[K.POSITIONS], batch[K.CELL], batch[K.PBC], batch[K.BATCH], model.e_rcut, model.a_rcut)


def test_outputs_pinned_to_a_reference_run(tiny_model):
    """Regression pin: the tiny model (seed 0) on a fixed ethanol geometry, computed at commit cd10e06, before the
    last-layer skip; any change to what the layers compute shows here (the invariance tests cannot see it)."""
    from ase.build import molecule
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    out = tiny_model(collate([Structure.from_ase(atoms)], torch.float64))
    assert float(out["energy"][0].detach()) == pytest.approx(-0.05232741754367793, abs=1e-12)
    assert float(out["gap"][0].detach()) == pytest.approx(-0.22703887252480456, abs=1e-12)
    assert float(out["forces"][0, 0].detach()) == pytest.approx(0.0001627316713796329, abs=1e-12)
