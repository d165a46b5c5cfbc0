"""Issue 18: the force-field dataset of each structure (inferred, explicit, tagged, or refused), property heads
outside their training domain, and one structure check on every path (calculator, predict, relax)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from _helpers import TINY_DOMAINS, make_tiny_model, save_tiny_model
from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.predict import predict
from mftcalc.relaxation.api import relax
from mftcalc.calculators.domains import KNOWN_DATASET_DOMAINS, DatasetChoiceError, domains_from_structures
from mftcalc.calculators.model_handle import DomainWarning, ModelHandle
from mftcalc.data import Structure
from mftcalc.model.checkpoint import model_metadata, save_model

MODELS = Path(__file__).resolve().parents[3] / "models"


@pytest.fixture(scope="module")
def pretrained():
    return ModelHandle.load(MODELS / "pretrained.pt")


@pytest.fixture
def tiny_file(tmp_path):
    return save_tiny_model(tmp_path / "tiny.pt")


def _silicon() -> Structure:
    return Structure.from_ase(bulk("Si", "diamond", a=5.43))


# ------------------------------------------------------------------------------------------ force-field dataset
def test_silicon_gets_the_silicon_dataset_not_the_first(pretrained):
    """Bulk Si used to be computed with xtb_qm9 (the first dataset); the unique periodic Si dataset is mlearn_si."""
    si = _silicon()
    assert pretrained.dataset_names[pretrained.dataset_index(si)] == "mlearn_si"
    inferred = predict([si], pretrained)[0]["energy"] / 2
    explicit = predict([si], MODELS / "pretrained.pt", dataset="mlearn_si")[0]["energy"] / 2
    first = predict([si], MODELS / "pretrained.pt", dataset="xtb_qm9")[0]["energy"] / 2
    assert inferred == pytest.approx(explicit, abs=1e-6) and inferred < -4.0 and abs(first - inferred) > 1.0
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.calc = MFTCalculator(MODELS / "pretrained.pt")
    assert atoms.get_potential_energy() / 2 == pytest.approx(explicit, abs=1e-5)


def test_a_molecule_in_a_wide_periodic_box_is_computed_as_the_molecule():
    """A molecule in a periodic box with vacuum wider than the cutoff used to count as a crystal: its dataset was
    the only periodic one with C and H (dpgen_mapbi3, 86 eV off) and the gap head warned "it is a crystal"."""
    bare = molecule("CH4")
    boxed = molecule("CH4", vacuum=4.0)
    boxed.pbc = True
    boxed.positions += 0.5 * boxed.cell.array.sum(0)        # wrapped across the cell's faces
    boxed.wrap()
    results = []
    for atoms in (bare, boxed):
        atoms.calc = MFTCalculator(MODELS / "mft_gap.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("error")                  # no domain warning for either
            warnings.filterwarnings("ignore", message=".*has ood_score")  # methane is beyond the applicability limit
            results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.calc.get_property("gap", atoms)))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-4)
    np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-4)
    assert results[1][2] == pytest.approx(results[0][2], abs=1e-6)
    assert np.abs(boxed.get_stress()).max() < 1e-3                         # eV/Å³: nothing pushes on the box
    handle = ModelHandle.load(MODELS / "pretrained.pt")
    atom = Structure.from_ase(Atoms("Si", cell=[15.0] * 3, pbc=True))      # no molecular set has Si: its crystal set
    assert handle.dataset_names[handle.dataset_index(atom)] == "mlearn_si"
    tight = molecule("CH4", vacuum=2.0)
    tight.pbc = True                                                       # images within the cutoff: a crystal
    assert handle.dataset_names[handle.dataset_index(Structure.from_ase(tight))] == "dpgen_mapbi3"
    with pytest.raises(DatasetChoiceError, match="periodic box.*xtb_qm9, md17_ethanol, deepmd_nopbc"):
        handle.dataset_index(Structure.from_ase(boxed))                    # as ambiguous as the bare molecule


def test_molecule_dataset_is_inferred_only_when_unique(pretrained):
    acetonitrile = Structure.from_ase(molecule("CH3CN"))        # N: only xtb_qm9 among molecular datasets
    assert pretrained.dataset_names[pretrained.dataset_index(acetonitrile)] == "xtb_qm9"
    ethanol = Structure.from_ase(molecule("CH3CH2OH"))           # H C O: three molecular datasets
    with pytest.raises(DatasetChoiceError, match="ambiguous.*xtb_qm9, md17_ethanol, deepmd_nopbc.*--dataset"):
        pretrained.dataset_index(ethanol)
    with pytest.raises(DatasetChoiceError, match="ambiguous"):
        predict([ethanol], pretrained)
    atoms = molecule("CH3CH2OH")
    atoms.calc = MFTCalculator(MODELS / "pretrained.pt")
    with pytest.raises(DatasetChoiceError, match="dataset="):
        atoms.get_potential_energy()
    copper = Structure.from_ase(bulk("Cu", "fcc", a=3.6))        # mlearn_cu and cu_ace21
    with pytest.raises(DatasetChoiceError, match="mlearn_cu, cu_ace21"):
        pretrained.dataset_index(copper)
    slab = Structure.from_ase(bulk("Si", "diamond", a=5.43)).with_labels(pbc=[True, True, False])
    with pytest.raises(DatasetChoiceError, match="no force-field dataset.*periodic in only some directions"):
        pretrained.dataset_index(slab)


def test_info_dataset_and_explicit_choice(pretrained):
    tagged = Structure.from_ase(molecule("CH3CH2OH")).with_labels(info={"dataset": "md17_ethanol"})
    assert pretrained.dataset_names[pretrained.dataset_index(tagged)] == "md17_ethanol"
    wrong = tagged.with_labels(info={"dataset": "qm7"})
    with pytest.raises(DatasetChoiceError, match="'qm7', which is not a dataset of this model"):
        pretrained.dataset_index(wrong)
    explicit = ModelHandle.load(MODELS / "pretrained.pt", dataset="deepmd_nopbc")
    with pytest.warns(UserWarning, match="md17_ethanol.*deepmd_nopbc"):
        assert explicit.dataset_names[explicit.dataset_index(tagged)] == "deepmd_nopbc"
    with pytest.raises(KeyError, match="datasets"):
        ModelHandle.load(MODELS / "pretrained.pt", dataset="nope")


def test_a_chosen_dataset_that_never_saw_such_structures_warns_once():
    """dataset= (or info['dataset']) outside the dataset's elements or periodicity used to compute in silence."""
    silane = molecule("SiH4")
    silane.calc = MFTCalculator(MODELS / "pretrained.pt", dataset="xtb_qm9")
    with pytest.warns(DomainWarning, match=r"dataset 'xtb_qm9' \(chosen with dataset= / --dataset\) was trained on "
                                           r"molecules .* of H C N O F: H4Si is outside it: it contains Si"):
        silane.get_potential_energy()
    silane.positions[0, 0] += 0.01
    ethanol = molecule("CH3CH2OH")
    ethanol.calc = MFTCalculator(MODELS / "pretrained.pt", dataset="xtb_qm9")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        silane.get_potential_energy()                                  # once per run
        ethanol.get_potential_energy()                                 # inside: no warning
    with pytest.warns(DomainWarning, match="dataset 'md17_ethanol' .* it is a crystal"):
        predict([_silicon().with_labels(info={"dataset": "md17_ethanol"})], MODELS / "pretrained.pt")


def test_the_calculator_recomputes_when_info_dataset_changes():
    """ASE's check_state ignores atoms.info: retagging the same atoms returned the first dataset's energy."""
    atoms = molecule("CH3CH2OH")
    atoms.info["dataset"] = "xtb_qm9"
    atoms.calc = MFTCalculator(MODELS / "pretrained.pt")
    first = atoms.get_potential_energy()
    atoms.info["dataset"] = "md17_ethanol"
    retagged = atoms.get_potential_energy()
    fresh = molecule("CH3CH2OH")
    fresh.calc = MFTCalculator(MODELS / "pretrained.pt", dataset="md17_ethanol")
    assert retagged == pytest.approx(fresh.get_potential_energy(), abs=1e-6) and abs(retagged - first) > 1.0


def test_a_stated_charge_or_spin_the_model_does_not_read_warns_once():
    from mftcalc.calculators.checks import unread_charge_or_spin
    ion = Structure.from_ase(molecule("NH3")).with_labels(info={"charge": 1})
    assert unread_charge_or_spin(ion) == "info['charge'] = 1"
    assert unread_charge_or_spin(ion, read=("charge",)) is None                 # a frame parameter: read
    for info, said in [({"multiplicity": 2}, "info['multiplicity'] = 2"), ({"spin": 0.5}, "info['spin'] = 0.5"),
                       ({"charge": 0, "multiplicity": 1, "uhf": 0}, None), ({"charge": "n/a"}, None),
                       ({"charge": True}, None)]:
        assert unread_charge_or_spin(ion.with_labels(info=info)) == said, info
    atoms = molecule("NH3")
    atoms.info["charge"] = 1
    atoms.calc = MFTCalculator(MODELS / "mft_gap.pt")
    with pytest.warns(DomainWarning, match=r"\(H3N\) states info\['charge'\] = 1, which this model does not read"):
        atoms.get_potential_energy()
    atoms.positions[0, 0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                             # once per run
        atoms.get_potential_energy()
    with pytest.warns(DomainWarning, match="does not read"):
        predict([ion], MODELS / "mft_gap.pt")


def test_models_without_dataset_domains_need_a_choice(tmp_path):
    model = make_tiny_model()                                     # datasets "a", "b", no recorded domains
    with pytest.raises(DatasetChoiceError, match="a, b record no elements or periodicity"):
        predict([Structure.from_ase(molecule("H2O"))], model)
    assert np.isfinite(predict([Structure.from_ase(molecule("H2O"))], model, dataset="b")[0]["energy"])


def test_known_dataset_domains_match_the_shipped_replay_data():
    from mftcalc.data.io import read_structures
    measured = domains_from_structures([s for part in ("molecules", "materials")
                                        for s in read_structures(MODELS / f"pretrained_replay_{part}.extxyz.gz")])
    assert set(measured) == set(KNOWN_DATASET_DOMAINS)
    for name, domain in KNOWN_DATASET_DOMAINS.items():
        assert measured[name]["periodic"] == domain.periodic, name
        assert set(measured[name]["elements"]) == set(domain.elements), name


# ------------------------------------------------------------------------------------- property-head domains
def test_gap_head_warns_once_outside_its_training_domain():
    gap_model = ModelHandle.load(MODELS / "mft_gap.pt")
    assert gap_model.head_domains["gap"].periodic is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict([_silicon(), _silicon()], gap_model)
        predict([_silicon()], gap_model)
    domain = [w for w in caught if issubclass(w.category, DomainWarning)]
    assert len(domain) == 1
    text = str(domain[0].message)
    assert "'gap'" in text and "Hartree" in text and "crystal" in text and "Si" in text and "training domain" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        predict([Structure.from_ase(molecule("CH3CN"))], MODELS / "mft_gap.pt")     # in the domain: no warning
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.calc = MFTCalculator(MODELS / "mft_gap.pt")
        atoms.get_potential_energy()                                                  # no head value handed out
        with pytest.raises(DomainWarning, match="'gap'"):
            atoms.calc.get_property("gap", atoms)


def test_head_domain_from_metadata(tiny_file, tmp_path):
    model = make_tiny_model()
    meta = model_metadata(model, elements=[1, 6, 7, 8, 14], dataset_domains=TINY_DOMAINS)
    meta["heads"]["mu"]["domain"] = {"elements": [1, 6, 8], "periodic": False}
    save_model(model, tmp_path / "m.pt", meta)
    with pytest.warns(DomainWarning, match="'mu'.*contains N, outside the training elements H C O"):
        predict([Structure.from_ase(molecule("CH3CN"))], tmp_path / "m.pt", properties=["mu"])


# ---------------------------------------------------------------------------------- one check on every path
def _overlapping() -> Structure:
    atoms = molecule("H2O")
    atoms.positions[1] = atoms.positions[0] + [0.1, 0.0, 0.0]
    return Structure.from_ase(atoms)


def test_overlapping_atoms_and_untrained_elements_are_refused_on_every_path(tiny_file):
    good = Structure.from_ase(molecule("CH4"))
    chlorine = Structure.from_ase(molecule("CH3Cl"))
    for bad, match in ((_overlapping(), "structure 1: overlapping atoms"), (chlorine, "structure 1: .*Cl")):
        with pytest.raises(ValueError, match=match):
            predict([good, bad], tiny_file, dtype=torch.float64)
        with pytest.raises(ValueError, match=match):
            relax([good, bad], tiny_file, steps=2, dtype=torch.float64)
        atoms = bad.to_ase()
        atoms.calc = MFTCalculator(tiny_file, dtype=torch.float64)
        with pytest.raises(ValueError, match=match.replace("structure 1", "structure")):
            atoms.get_potential_energy()
