"""Lindh's model Hessian: the Hessian of ½ Σ k (q − q₀)² over its internal coordinates, with rigid-body zero modes."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from mftcalc.geometry.lindh import lindh_hessian, lindh_terms


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
    terms = lindh_terms(atoms.positions, atoms.numbers)
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
    hessian = lindh_hessian(atoms.positions, atoms.numbers)
    np.testing.assert_allclose(hessian, numeric, atol=1e-5 * np.abs(hessian).max())


def test_lindh_hessian_has_rigid_body_zero_modes_and_is_positive_semidefinite():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    hessian = lindh_hessian(atoms.positions, atoms.numbers)
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
    assert lindh_hessian(np.zeros((1, 3)), [6]).shape == (3, 3)
    assert not lindh_hessian(np.zeros((1, 3)), [6]).any()
    far = lindh_hessian(np.array([[0.0, 0, 0], [20.0, 0, 0]]), [6, 6])
    assert not far.any()                              # no term survives the ρ cut at 20 Å
