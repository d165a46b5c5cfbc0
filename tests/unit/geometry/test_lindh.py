"""Lindh's model Hessian: the Hessian of ½ Σ k (q − q₀)² over its internal coordinates, with rigid-body zero modes,
Lindh's published parameters, one argument order, and the same force constants in every optimiser that uses it."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from mftcalc.geometry.internal_coords import build_internal_coordinates, rigid_basis
from mftcalc.geometry.lindh import (internal_modes, lindh_force_constants, lindh_hessian, lindh_rho,
                                    lindh_terms)


def _internal_coordinates(atoms, terms):
    """Distances (Å) and angles (rad) from ASE's own geometry helpers, an implementation independent of ours."""
    return np.concatenate([atoms.get_all_distances()[tuple(terms["stretch"][0].T)],
                           np.radians(atoms.get_angles(terms["bend"][0])),
                           np.radians(atoms.get_dihedrals(terms["torsion"][0]))])


@pytest.mark.parametrize("name", ["H2O", "CH3CH2OH", "CH3CONH2"])
def test_lindh_hessian_is_the_hessian_of_its_quadratic_model(name):
    """At q = q₀ the Hessian of ½ Σ k (q − q₀)² is Jᵀ diag(k) J with J = ∂q/∂x, here by central differences."""
    atoms = molecule(name)
    atoms.rattle(0.05, seed=1)
    terms = lindh_terms(atoms.numbers, atoms.positions)
    k = np.concatenate([terms[kind][1] for kind in ("stretch", "bend", "torsion")])
    assert len(terms["stretch"][1]) > 0 and len(terms["bend"][1]) > 0
    assert name == "H2O" or len(terms["torsion"][1]) > 0
    h = 1e-5
    jacobian = np.zeros((len(k), 3 * len(atoms)))
    for col in range(3 * len(atoms)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[col // 3, col % 3] += h
        minus.positions[col // 3, col % 3] -= h
        dq = _internal_coordinates(plus, terms) - _internal_coordinates(minus, terms)
        dq = (dq + np.pi) % (2 * np.pi) - np.pi                        # torsions wrap at ±π
        jacobian[:, col] = dq / (2 * h)
    numeric = jacobian.T @ (k[:, None] * jacobian)
    hessian = lindh_hessian(atoms.numbers, atoms.positions)
    np.testing.assert_allclose(hessian, numeric, atol=1e-5 * np.abs(hessian).max())


def test_lindh_hessian_has_rigid_body_zero_modes_and_is_positive_semidefinite():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    hessian = lindh_hessian(atoms.numbers, atoms.positions)
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-10)
    eig = np.linalg.eigvalsh(hessian)
    assert eig.min() > -1e-8 * eig.max()
    x = atoms.positions - atoms.positions.mean(0)
    for axis in np.eye(3):
        translation = np.tile(axis, len(atoms))
        rotation = np.cross(axis, x).ravel()
        assert np.abs(hessian @ translation).max() < 1e-8 * eig.max()
        assert np.abs(hessian @ rotation).max() < 1e-6 * eig.max()
    # a C-H stretch is stiffer than any torsion-dominated mode: the spectrum spans over two decades
    positive = eig[eig > 1e-6 * eig.max()]
    assert positive.max() / positive.min() > 100


def test_lindh_hessian_of_small_inputs():
    assert lindh_hessian([6], np.zeros((1, 3))).shape == (3, 3)
    assert not lindh_hessian([6], np.zeros((1, 3))).any()
    far = lindh_hessian([6, 6], np.array([[0.0, 0, 0], [20.0, 0, 0]]))
    assert not far.any()                              # no term survives the ρ cut at 20 Å


def test_arguments_in_the_wrong_order_are_refused():
    atoms = molecule("H2O")
    for function in (lindh_hessian, lindh_terms, lindh_rho, internal_modes):
        with pytest.raises(ValueError, match=r"\(numbers, positions\)"):
            function(atoms.positions, atoms.numbers)


def test_force_constants_are_lindhs_published_ones():
    """H2 at 1.35 bohr and N2 at 2.87 bohr (the reference distances of rows 1 and 2) have ρ = 1, so the stretch is
    k_r = 0.45 hartree/bohr²; a C−H bond at 2.10 bohr has ρ = 1 too, and a bend H−C−H of two such bonds
    k_φ = 0.15 hartree/rad² (CODATA 2018: 1 hartree = 27.211386 eV, 1 bohr = 0.52917721 Å)."""
    hartree, bohr = 27.211386246, 0.529177210903
    for numbers, r in (([1, 1], 1.35), ([7, 7], 2.87), ([6, 1], 2.10)):
        x = np.array([[0.0, 0.0, 0.0], [r * bohr, 0.0, 0.0]])
        pair, k = lindh_terms(numbers, x)["stretch"]
        assert pair.tolist() == [[0, 1]]
        assert k[0] == pytest.approx(0.45 * hartree / bohr ** 2, rel=1e-8)
    d = 2.10 * bohr
    x = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0], [0.0, d, 0.0]])
    rho = lindh_rho([6, 1, 1], x)
    assert rho[0, 1] == pytest.approx(1.0) and rho[1, 2] == pytest.approx(np.exp(1.0 * (1.35 ** 2 - 2 * 2.10 ** 2)))
    assert lindh_force_constants(rho, np.array([[1, 0, 2]]))[0] == pytest.approx(0.15 * hartree, rel=1e-8)
    # H−C−C−H with C−H at 2.10 and C−C at 2.87 bohr: k_τ = 0.005 hartree/rad², here among all of Lindh's terms
    cc, ch = 2.87 * bohr, 2.10 * bohr
    s = np.sqrt(0.75)
    x = np.array([[0.0, 0.0, 0.0], [cc, 0.0, 0.0], [-0.5 * ch, s * ch, 0.0], [cc + 0.5 * ch, 0.0, s * ch]])
    atoms, k = lindh_terms([6, 6, 1, 1], x)["torsion"]
    assert [2, 0, 1, 3] in atoms.tolist() or [3, 1, 0, 2] in atoms.tolist()
    hcch = [i for i, t in enumerate(atoms.tolist()) if t in ([2, 0, 1, 3], [3, 1, 0, 2])]
    assert k[hcch[0]] == pytest.approx(0.005 * hartree, rel=1e-8)


def test_internal_bfgs_uses_the_same_force_constants():
    """The diagonal model Hessian of optimizer="bfgs-internal" holds Lindh's k of each bond and bend (one table),
    with ρ capped at the optimiser's ``rho_max`` (1: a compressed bond is no stiffer than at its reference length)."""
    from mftcalc.relaxation.internal_bfgs import InternalBFGSParams, _internal_hessian

    atoms = molecule("CH3CONH2")
    atoms.rattle(0.05, seed=3)
    coords = build_internal_coordinates(atoms.positions, atoms.numbers)
    diag = np.diag(_internal_hessian(coords, atoms.positions, atoms.numbers, InternalBFGSParams()))
    rho = np.minimum(lindh_rho(atoms.numbers, atoms.positions), InternalBFGSParams().rho_max)
    assert (lindh_rho(atoms.numbers, atoms.positions) > 1).any()       # the cap acts on this rattled molecule
    nb, na = len(coords.bonds), len(coords.bends)
    np.testing.assert_allclose(diag[:nb], lindh_force_constants(rho, coords.bonds), rtol=1e-12)
    np.testing.assert_allclose(diag[nb:nb + na], lindh_force_constants(rho, coords.bends), rtol=1e-12)
    terms = lindh_terms(atoms.numbers, atoms.positions)
    by_pair = {tuple(p): k for p, k in zip(*terms["stretch"])}
    uncapped = [by_pair[tuple(p)] for p in coords.bonds]
    np.testing.assert_allclose(diag[:nb], np.minimum(uncapped, lindh_force_constants(np.ones_like(rho), coords.bonds)),
                               rtol=1e-12)


def test_internal_modes_are_the_vibrations_of_the_lindh_hessian():
    atoms = molecule("C2H6")
    h = lindh_hessian(atoms.numbers, atoms.positions)
    rigid = rigid_basis(atoms.positions)
    assert rigid.shape[1] == 6
    np.testing.assert_allclose(h @ rigid, 0.0, atol=1e-8)
    stiffness, modes = internal_modes(atoms.numbers, atoms.positions)
    assert modes.shape == (3 * len(atoms), 3 * len(atoms) - 6) and (stiffness > 0).all()
    np.testing.assert_allclose(rigid.T @ modes, 0.0, atol=1e-10)
    np.testing.assert_allclose(modes.T @ modes, np.eye(modes.shape[1]), atol=1e-10)
    np.testing.assert_allclose(modes.T @ h @ modes, np.diag(stiffness), atol=1e-8 * stiffness.max())
