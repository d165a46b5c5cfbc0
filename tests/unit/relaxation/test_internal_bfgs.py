"""Redundant internal coordinates (B-matrix, completeness, batching) and the "bfgs-internal" batched relaxation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.optimize import BFGS

from mftcalc.calculators import MFTCalculator
from mftcalc.relaxation.api import relax
from mftcalc.relaxation.internal_bfgs import InternalBFGSParams, InternalBFGSState
from mftcalc.geometry.internal_coords import (CoordinateBatch, build_internal_coordinates,
                                                 internal_rank_deficit, rigid_bases)
from mftcalc.data import Structure


def _butyne() -> Atoms:
    """2-butyne, CH3−C≡C−CH3: its methyl twist is a torsion along a linear chain (no single bond carries it)."""
    z_ch3, z_c = 2.06, 0.60
    positions = [(0, 0, -z_ch3), (0, 0, -z_c), (0, 0, z_c), (0, 0, z_ch3)]
    for sign, phase in ((-1, 0.0), (1, 60.0)):
        for k in range(3):
            angle = np.radians(phase + 120.0 * k)
            positions.append((1.028 * np.cos(angle), 1.028 * np.sin(angle), sign * (z_ch3 + 0.363)))
    return Atoms("C4H6", positions=positions)


def _molecules():
    out = {name: molecule(name) for name in ("CH3CH2OH", "HCOOH", "H2CCHCN", "C6H6", "HCN", "C2H2")}
    out["butyne"] = _butyne()
    for k, atoms in enumerate(out.values()):
        atoms.rattle(0.02, seed=k)
    return out


@pytest.mark.parametrize("name", ["CH3CH2OH", "HCOOH", "H2CCHCN", "butyne", "HCN"])
def test_b_matrix_is_the_derivative_of_the_coordinates(name):
    atoms = _molecules()[name]
    coords = build_internal_coordinates(atoms.positions, atoms.numbers)
    q, b = coords.evaluate(atoms.positions)
    x = atoms.positions.ravel()
    numeric = np.zeros_like(b)
    h = 1e-6
    for k in range(len(x)):
        plus, minus = x.copy(), x.copy()
        plus[k] += h
        minus[k] -= h
        numeric[:, k] = coords.difference(coords.evaluate(plus.reshape(-1, 3), with_b=False)[0],
                                          coords.evaluate(minus.reshape(-1, 3), with_b=False)[0]) / (2 * h)
    np.testing.assert_allclose(b, numeric, atol=1e-7)
    assert q.shape == (coords.n_coords,) and len(coords.torsions) > 0 or name == "HCN"


def test_coordinate_sets_span_every_internal_motion():
    mols = _molecules()
    for name, atoms in mols.items():
        coords = build_internal_coordinates(atoms.positions, atoms.numbers)
        assert internal_rank_deficit(coords, atoms.positions) == 0, name
    butyne = build_internal_coordinates(mols["butyne"].positions, mols["butyne"].numbers)
    assert len(butyne.linear) == 2
    assert any({0, 3} <= set(t[1:3]) for t in butyne.torsions.tolist())     # H−C(H3)···C(H3)−H about the chain
    # without the chain torsions the methyl twist is missing
    from dataclasses import replace
    plain = replace(butyne, torsions=np.zeros((0, 4), dtype=np.int64))
    assert internal_rank_deficit(plain, mols["butyne"].positions) == 1


def test_batch_evaluation_equals_one_molecule_at_a_time():
    mols = list(_molecules().values())
    sets = [build_internal_coordinates(a.positions, a.numbers) for a in mols]
    together = CoordinateBatch(sets).evaluate([a.positions for a in mols])
    for c, a, (q, b) in zip(sets, mols, together):
        q1, b1 = c.evaluate(a.positions)
        np.testing.assert_array_equal(q, q1)
        np.testing.assert_array_equal(b, b1)
    mols.append(molecule("HCN"))                                  # exactly linear: 5 rigid motions
    for basis, a in zip(rigid_bases([a.positions for a in mols]), mols):
        k = 5 if a is mols[-1] else 6
        assert basis.shape == (3 * len(a), k)
        np.testing.assert_allclose(basis.T @ basis, np.eye(k), atol=1e-12)


@pytest.fixture(scope="module")
def shipped_model():
    """The shipped model: a physical energy surface (a random tiny model's minima are not molecules)."""
    from mftcalc.workflows.screening import default_model_path
    return default_model_path()


def test_internal_relaxation_reaches_the_minimum_ase_bfgs_finds(shipped_model):
    """Converged, and never above ASE BFGS's end point; the same minimum where the surface has one clear minimum
    nearby (ethanol, HCN, 2-butyne). Formic acid and acrylonitrile, far from the model's QM9 training data, slide
    on this model's surface from where ASE BFGS stops (fmax < 0.02) to structures 1.5 and 0.13 eV lower."""
    names = ["CH3CH2OH", "HCN", "butyne", "HCOOH", "H2CCHCN"]
    mols = _molecules()
    structures = []
    for k, name in enumerate(names):
        atoms = mols[name].copy()
        atoms.rattle(0.05, seed=10 + k)
        structures.append(Structure.from_ase(atoms))
    results = relax(structures, shipped_model, fmax=0.02, steps=300, optimizer="bfgs-internal", dtype=torch.float64,
                    dataset="xtb_qm9")
    for name, s, r in zip(names, structures, results):
        atoms = s.to_ase()
        atoms.calc = MFTCalculator(shipped_model, dtype=torch.float64, dataset="xtb_qm9")
        BFGS(atoms, logfile=None).run(fmax=0.02, steps=300)
        assert r.converged and r.fmax < 0.02, name
        assert r.energy < atoms.get_potential_energy() + 2e-3, name
        if name in ("CH3CH2OH", "HCN", "butyne"):
            assert r.energy == pytest.approx(atoms.get_potential_energy(), abs=5e-3), name


def test_internal_state_falls_back_to_cartesian_bfgs_for_diatomics():
    state = InternalBFGSState(InternalBFGSParams(), np.array([1, 1]))
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.8]])
    new = state.step(x, np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]), 0.0)
    assert state.use_cartesian and state.fallback is not None and new[1, 2] - new[0, 2] > 0.8


def test_internal_relaxation_rejects_periodic_structures(shipped_model):
    with pytest.raises(ValueError, match="for molecules"):
        relax([Structure.from_ase(bulk("Si", "diamond", a=5.43))], shipped_model, optimizer="bfgs-internal")


def test_a_torsion_over_a_straightening_bend_sends_the_molecule_to_cartesian_bfgs():
    """H−C−C−H with 150° bends has one torsion; when a bend straightens towards 180° the torsion's B-row grows as
    1/sin θ, and Cartesian BFGS takes over for the rest of the relaxation."""
    def hcch(outer_deg):
        phi = np.radians(60.0)
        a1, a2 = np.radians(180.0 - 150.0), np.radians(180.0 - outer_deg)
        return np.array([[-1.1 * np.cos(a1), 1.1 * np.sin(a1), 0.0], [0.0, 0.0, 0.0], [1.2, 0.0, 0.0],
                         [1.2 + 1.1 * np.cos(a2), 1.1 * np.sin(a2) * np.cos(phi), 1.1 * np.sin(a2) * np.sin(phi)]])
    state = InternalBFGSState(InternalBFGSParams(), np.array([1, 6, 6, 1]))
    state.step(hcch(150.0), np.full((4, 3), 1e-3), 0.0)
    assert not state.use_cartesian and len(state.coords.torsions) == 1
    state.step(hcch(179.8), np.full((4, 3), 1e-3), 0.0)
    assert state.use_cartesian and state.fallback is not None


def test_relax_stream_pulls_structures_only_when_the_batch_has_room(shipped_model):
    """The stream reads its input lazily (a worker's shared queue is consumed as molecules finish) and emits each
    result as its structure converges."""
    from mftcalc.relaxation.engine import relax_stream
    from mftcalc.relaxation.optimizers import FireParams
    from mftcalc.calculators.model_handle import ModelHandle
    handle = ModelHandle.load(shipped_model, dataset="xtb_qm9")
    structures = [Structure.from_ase(molecule("H2O")) for _ in range(6)]
    pulled, events = [], []

    def items():
        for k, s in enumerate(structures):
            pulled.append(k)
            events.append(("pull", k))
            yield k, s, None

    relax_stream(items(), lambda key, r: events.append(("done", key)), handle, fmax=0.05, max_steps=50,
                 fire=FireParams(), max_atoms=6, internal=InternalBFGSParams())       # two waters in flight
    assert pulled == list(range(6))
    assert sorted(k for kind, k in events if kind == "done") == list(range(6))
    first_done = events.index(next(e for e in events if e[0] == "done"))
    assert [e for e in events[:first_done] if e[0] == "pull"] == [("pull", 0), ("pull", 1), ("pull", 2)]


def _step_alone(atoms, model, fmax, steps):
    """Relax ``atoms`` with :class:`InternalBFGSState` stepped on arrays (ASE calculator for energy and forces).

    Returns (steps taken, rejected uphill steps); ``atoms`` ends at the final positions."""
    atoms.calc = MFTCalculator(model, dtype=torch.float64, dataset="xtb_qm9")
    state = InternalBFGSState(InternalBFGSParams(), atoms.numbers)
    taken = rejected = 0
    while taken < steps and np.sqrt((atoms.get_forces() ** 2).sum(1)).max() >= fmax:
        here = atoms.get_positions()
        atoms.positions = state.step(here, atoms.get_forces(), atoms.get_potential_energy())
        rejected += state.prev[0] is not here             # this step restarted from an earlier point
        taken += 1
    return taken, rejected


def test_batched_internal_bfgs_takes_the_steps_of_its_state_stepped_alone(shipped_model):
    """The engine's ``bfgs-internal`` equals :class:`InternalBFGSState` stepped on arrays, one molecule at a time,
    through rejected uphill steps (which restart from a start point the state keeps: the engine's position
    updates must not overwrite it)."""
    # Rejections depend on the model's energy surface, so the rattles are searched here rather than fixed: the
    # first seed of each molecule whose stand-alone relaxation rejects a step (a fixed pick went stale when the
    # shipped model was replaced).
    fmax, steps = 0.02, 40
    structures, alone = [], []
    for name in ("CH3CHO", "CH3COOH", "H2CO"):
        for seed in range(12):
            atoms = molecule(name)
            atoms.rattle(0.05, seed=seed)
            start = Structure.from_ase(atoms)
            taken, rejected = _step_alone(atoms, shipped_model, fmax, steps)
            if rejected:
                structures.append(start)
                alone.append((taken, atoms.positions.copy()))
                break
    assert len(structures) >= 2, (f"only {len(structures)} of 3 molecules reject a step in 12 rattles on the shipped "
                                  "model: the test no longer exercises rejected steps; widen the rattle search")
    results = relax(structures, shipped_model, fmax=fmax, steps=steps, optimizer="bfgs-internal",
                    dtype=torch.float64, dataset="xtb_qm9")
    for (taken, positions), r in zip(alone, results):
        assert r.steps == taken
        np.testing.assert_allclose(r.structure.positions, positions, atol=1e-6)
