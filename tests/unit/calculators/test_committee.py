"""``CommitteeCalculator``: the committee mean (or first member) drives ASE, and each structure's deviation is
deepmd-kit's, equal to ``model_deviation`` on the same structure."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet

from _helpers import save_property_only_model
from mftcalc.calculators import MFTCalculator
from mftcalc.calculators.committee import CommitteeCalculator
from mftcalc.workflows.model_deviation import model_deviation


def _silicon():
    si = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    si.rattle(0.05, seed=2)
    return si


def test_the_mean_drives_and_the_deviation_is_model_deviations(tiny_committee):
    si = _silicon()
    si.calc = CommitteeCalculator(tiny_committee, dtype=torch.float64)
    members = []
    for path in tiny_committee:
        atoms = si.copy()
        atoms.calc = MFTCalculator(path, dtype=torch.float64)
        members.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    assert si.get_potential_energy() == pytest.approx(np.mean([m[0] for m in members]), abs=1e-10)
    np.testing.assert_allclose(si.get_forces(), np.mean([m[1] for m in members], axis=0), atol=1e-12)
    np.testing.assert_allclose(si.get_stress(), np.mean([m[2] for m in members], axis=0), atol=1e-12)
    expected = model_deviation([si], tiny_committee, dtype=torch.float64)
    for name in ("max_devi_f", "min_devi_f", "avg_devi_f", "devi_e", "max_devi_v", "min_devi_v", "avg_devi_v"):
        assert si.calc.get_property(name) == pytest.approx(getattr(expected, name)[0], rel=1e-9), name
    np.testing.assert_allclose(si.calc.get_property("devi_f"), expected.atomic_devi_f[0], rtol=1e-9)
    assert si.calc.get_property("max_devi_f") > 1e-6                      # the members disagree
    energy_b = si.get_potential_energy()                               # dataset 'b' (periodic Si) by the rule
    si.info["dataset"] = "a"                                            # retagged: recomputed, not the cache
    with pytest.warns(UserWarning):                                     # 'a' never saw a crystal
        assert abs(si.get_potential_energy() - energy_b) > 1e-6
    del si.info["dataset"]
    first = si.copy()
    first.calc = CommitteeCalculator(tiny_committee, dtype=torch.float64, drive="first")
    np.testing.assert_allclose(first.get_forces(), members[0][1], atol=1e-12)
    assert first.calc.get_property("max_devi_f") == pytest.approx(si.calc.get_property("max_devi_f", si), rel=1e-12)


def test_the_committee_mean_is_conservative(tiny_committee):
    """forces = −dE/dx by central differences (float64) for the committee mean."""
    atoms = molecule("CH3OH")
    atoms.rattle(0.05, seed=1)
    atoms.calc = CommitteeCalculator(tiny_committee, dtype=torch.float64)
    forces = atoms.get_forces()
    h = 1e-5
    for i, d in [(0, 0), (1, 2), (4, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, d] += h
        minus.positions[i, d] -= h
        plus.calc = minus.calc = atoms.calc
        fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert forces[i, d] == pytest.approx(fd, abs=1e-7)


def test_a_molecule_has_no_stress_and_md_can_watch_the_deviation(tiny_committee):
    atoms = molecule("CH3OH")
    atoms.calc = CommitteeCalculator(tiny_committee)
    with pytest.raises(PropertyNotImplementedError, match="a molecule has none"):
        atoms.get_stress()
    with pytest.raises(PropertyNotImplementedError, match="a molecule has none"):
        atoms.calc.get_property("max_devi_v", atoms)
    seen = []
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.attach(lambda: seen.append(atoms.calc.get_property("max_devi_f")), interval=1)
    dyn.run(4)
    assert len(seen) == 5 and np.isfinite(seen).all() and len(set(seen)) > 1    # recomputed as the atoms move


def test_bad_committees_are_refused_by_name(tiny_committee, tmp_path):
    with pytest.raises(ValueError, match="at least two models"):
        CommitteeCalculator(tiny_committee[:1])
    with pytest.raises(ValueError, match="drive='median'"):
        CommitteeCalculator(tiny_committee, drive="median")
    save_property_only_model(tmp_path / "gap.pt")
    with pytest.raises(ValueError, match="model 1 .*gap.pt.* has no force-field head"):
        CommitteeCalculator([tiny_committee[0], tmp_path / "gap.pt"])
