"""Physics of the model, every head kind, through mftcalc.testing (forces = −dE/dx, stress = (1/V) dE/dε,
rotation/translation/permutation of molecules and cells, supercells, additivity, acoustic sum, cutoffs, batching,
export), and what the checker does not cover: dataset embedding, float32, features, the last-layer skip, a pin."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from _helpers import TINY_DOMAINS, make_tiny_model
from mftcalc import keys as K
from mftcalc.data import Structure, collate
from mftcalc.model.checkpoint import model_metadata
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.mft_model import MFTModel
from mftcalc.testing import check_model


def energy_of(model, structure: Structure, dataset: int = 0) -> float:
    return float(model(collate([structure], torch.float64, dataset=dataset), compute_forces=False,
                       compute_stress=False)["energy"][0].detach())


def _with_domains(model: MFTModel) -> MFTModel:
    model.metadata = model_metadata(model, elements=[1, 6, 7, 8, 14], dataset_domains=TINY_DOMAINS)
    return model


def _extensive_and_applicability_model() -> MFTModel:
    """One force-field dataset, an extensive scalar head and a fitted applicability (``knn_ood``) head."""
    from mftcalc.model.applicability import fit_applicability
    torch.manual_seed(1)
    cfg = ModelConfig(backbone=backbone_preset("tiny"),
                      heads={"ff": default_forcefield_head(1, hidden=(16,)),
                             "count": HeadConfig(kind="scalar", extensive=True, hidden=(16,)),
                             "ood_score": HeadConfig(kind="knn_ood")})
    model = MFTModel(cfg).double().eval()
    rng = np.random.default_rng(0)
    fit_applicability(model.property_heads["ood_score"], rng.normal(size=(20, cfg.backbone.n_dim)),
                      [np.array([1, 6, 8, 14])] * 20)
    return model


def _properties_only_model() -> MFTModel:
    """No force field: intensive and extensive scalar, dipole and ⟨R²⟩ heads."""
    torch.manual_seed(2)
    heads = {"gap": HeadConfig(kind="scalar", hidden=(16,)),
             "n": HeadConfig(kind="scalar", extensive=True, hidden=(16,)),
             "mu": HeadConfig(kind="dipole", hidden=(16,)), "r2": HeadConfig(kind="r2", hidden=(16,))}
    return MFTModel(ModelConfig(backbone=backbone_preset("tiny"), heads=heads)).double().eval()


def _water_box() -> Structure:
    """A sheared periodic box of two water molecules (periodic H and O, tagged with the tiny model's dataset b)."""
    atoms = molecule("H2O")
    second = molecule("H2O")
    second.rotate(70, "z")
    second.translate([2.2, 1.9, 1.6])
    atoms += second
    atoms.set_cell([[4.6, 0.0, 0.0], [0.4, 4.4, 0.0], [0.2, -0.3, 4.8]])
    atoms.set_pbc(True)
    atoms.rattle(0.05, seed=3)
    atoms.info = {"name": "water box", "dataset": "b"}
    return Structure.from_ase(atoms)


FORCEFIELD_RESULTS = [("forces_fd", "crystal", "forces"), ("stress_fd", "crystal", "stress"),
                      ("rotation", "crystal", "stress"), ("rotation", "crystal", "forces"),
                      ("translation", "crystal, wrapped", "stress"), ("supercell", "crystal 2x2x1", "forces"),
                      ("supercell", "crystal 2x1x1", "stress"), ("additivity", "molecule+water", "forces"),
                      ("acoustic_sum", "crystal", "net force"), ("acoustic_sum", "molecule", "net torque"),
                      ("cutoff", "e_rcut", "energy"), ("cutoff", "a_rcut", "forces"), ("export", "crystal", "stress")]
#: each head kind with the results (check, structure, quantity) that must be there and pass
HEAD_MODELS = {
    "forcefield+intensive+dipole+r2": (lambda: _with_domains(make_tiny_model()), FORCEFIELD_RESULTS + [
        ("rotation", "water box", "stress"), ("supercell", "water box 2x2x1", "forces"),
        ("rotation", "crystal", "gap"), ("supercell", "crystal 2x2x1", "gap"), ("additivity", "molecule+water", "gap"),
        ("rotation", "crystal", "mu"), ("translation", "molecule", "r2"), ("cutoff", "e_rcut", "mu")]),
    "forcefield+extensive+knn_ood": (_extensive_and_applicability_model, FORCEFIELD_RESULTS + [
        ("supercell", "crystal 2x2x1", "count"), ("additivity", "molecule+water", "count"),
        ("supercell", "crystal 2x1x1", "ood_score"), ("rotation", "crystal", "ood_score")]),
    "properties only": (_properties_only_model, [
        ("supercell", "crystal 2x2x1", "n"), ("supercell", "crystal 2x2x1", "gap"),
        ("additivity", "molecule+water", "n"), ("rotation", "crystal", "mu"), ("permutation", "molecule", "r2"),
        ("cutoff", "a_rcut", "gap"), ("batch", "crystal", "r2"), ("export", "water", "mu")]),
}


@pytest.mark.parametrize("kind", list(HEAD_MODELS))
def test_every_head_kind_passes_every_physics_check(kind, molecules, crystal):
    """mftcalc.testing on each head kind: finite differences, rotation (molecules and cells, stress as R σ Rᵀ),
    translation (wrapped), permutation, supercells, additivity, acoustic sum, cutoffs, batch, export."""
    make, required = HEAD_MODELS[kind]
    structures = [molecules[3].with_labels(info={"name": "molecule"}),
                  molecules[2].with_labels(info={"name": "water"}), crystal.with_labels(info={"name": "crystal"})]
    if kind.startswith("forcefield+intensive"):
        structures.append(_water_box())
    report = check_model(make(), structures).raise_for_failures()
    for check, structure, quantity in required:
        found = report.select(check, structure, quantity)
        assert found and all(r.status == "pass" for r in found), (check, structure, quantity, str(report))


def test_fused_export_equals_eager(molecules, crystal):
    from mftcalc.kernels.angle import fused_available
    if not fused_available():
        pytest.skip("the fused angle operator did not build here")
    report = check_model(_with_domains(make_tiny_model()), [molecules[0], crystal], checks=["export"],
                         fused_export=True).raise_for_failures()
    assert "fused" in report.results[0].note and len(report.results) >= 10


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
