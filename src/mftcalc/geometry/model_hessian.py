"""Lindh model Hessian of a molecule and its internal (vibrational) normal modes, without any electronic structure.

The Hessian is ``H = sum_t k_t g_t g_t^T`` over stretches (all atom pairs), bends and torsions (along pairs with a
bond-like weight), where ``g_t`` is the Cartesian gradient of the internal coordinate and the force constant
``k_t`` is Lindh's ``k_r rho_ij``, ``k_b rho_ij rho_jk`` or ``k_tau rho_ij rho_jk rho_kl`` with
``rho_ij = exp(alpha_ij (r_ref,ij^2 - r_ij^2))`` (Lindh et al., Chem. Phys. Lett. 241, 423 (1995)). It is positive
semi-definite by construction, exact zero on rigid-body motions, and costs milliseconds for QM9-size molecules.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from mftcalc.geometry.internal_coords import rigid_basis as rigid_body_basis  # the project's one rigid-motion basis

HARTREE_EV = 27.211386245988
BOHR_ANG = 0.529177210903
_K_STRETCH, _K_BEND, _K_TORSION = 0.45, 0.15, 0.005  # Hartree/bohr^2, Hartree/rad^2, Hartree/rad^2
_ALPHA = np.array([[1.0000, 0.3949, 0.3949], [0.3949, 0.2800, 0.2800], [0.3949, 0.2800, 0.2800]])  # bohr^-2
_R_REF = np.array([[1.35, 2.10, 2.53], [2.10, 2.87, 3.40], [2.53, 3.40, 3.40]])  # bohr
_BONDED_RHO = 0.1  # pairs with a larger weight carry bends and torsions
_LINEAR_SIN = np.sin(np.radians(5.0))  # bends closer than 5 degrees to linear have no usable gradient


def _row(numbers: np.ndarray) -> np.ndarray:
    """Periodic-table row index 0 (H, He), 1 (Li-Ne) or 2 (Na and heavier, as in Lindh's table)."""
    return np.where(numbers <= 2, 0, np.where(numbers <= 10, 1, 2))


def lindh_hessian(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Lindh model Hessian.

    Args:
        numbers: [n] atomic numbers.
        positions: [n, 3] Å.

    Returns:
        [3n, 3n] float64 Hessian in eV/Å^2 (Cartesian, not mass-weighted), atom-major (x0, y0, z0, x1, ...).
    """
    x = np.asarray(positions, dtype=np.float64) / BOHR_ANG
    n = x.shape[0]
    row = _row(np.asarray(numbers))
    diff = x[None, :, :] - x[:, None, :]  # diff[i, j] = x_j - x_i
    r2 = np.einsum("ijk,ijk->ij", diff, diff)
    rho = np.exp(_ALPHA[row[:, None], row[None, :]] * (_R_REF[row[:, None], row[None, :]] ** 2 - r2))
    np.fill_diagonal(rho, 0.0)
    hessian = np.zeros((3 * n, 3 * n))

    def add(atoms: Tuple[int, ...], grads: Tuple[np.ndarray, ...], k: float) -> None:
        g = np.zeros(3 * n)
        for a, ga in zip(atoms, grads):
            g[3 * a:3 * a + 3] += ga
        hessian[:] += k * np.outer(g, g)

    for i, j in zip(*np.triu_indices(n, 1)):
        u = diff[i, j] / np.sqrt(r2[i, j])
        add((i, j), (-u, u), _K_STRETCH * rho[i, j])
    bonded = [np.flatnonzero(rho[a] > _BONDED_RHO) for a in range(n)]
    for j in range(n):
        for i in bonded[j]:
            for k in bonded[j]:
                if i < k:
                    grads = _bend_gradient(x[i], x[j], x[k])
                    if grads is not None:
                        add((i, j, k), grads, _K_BEND * rho[i, j] * rho[j, k])
    for j in range(n):
        for k in bonded[j]:
            if k <= j:
                continue
            for i in bonded[j]:
                for l in bonded[k]:
                    if len({i, j, k, l}) == 4:
                        grads = _torsion_gradient(x[i], x[j], x[k], x[l])
                        if grads is not None:
                            add((i, j, k, l), grads, _K_TORSION * rho[i, j] * rho[j, k] * rho[k, l])
    return hessian * (HARTREE_EV / BOHR_ANG ** 2)  # Hartree/bohr^2 -> eV/Å^2


def _bend_gradient(xi: np.ndarray, xj: np.ndarray, xk: np.ndarray):
    """Gradients (per bohr) of the angle i-j-k at j w.r.t. x_i, x_j, x_k, or None when near-linear."""
    u, v = xi - xj, xk - xj
    lu, lv = np.linalg.norm(u), np.linalg.norm(v)
    eu, ev = u / lu, v / lv
    cos = float(np.clip(eu @ ev, -1.0, 1.0))
    sin = np.sqrt(1.0 - cos * cos)
    if sin < _LINEAR_SIN:
        return None
    gi = (cos * eu - ev) / (lu * sin)
    gk = (cos * ev - eu) / (lv * sin)
    return gi, -gi - gk, gk


def _torsion_gradient(xi: np.ndarray, xj: np.ndarray, xk: np.ndarray, xl: np.ndarray):
    """Gradients (per bohr) of the dihedral i-j-k-l w.r.t. the four positions (Blondel & Karplus), or None when
    one of its bends is near-linear."""
    f, g, h = xi - xj, xj - xk, xl - xk
    a, b = np.cross(f, g), np.cross(h, g)
    a2, b2, lg = a @ a, b @ b, np.linalg.norm(g)
    if a2 < (_LINEAR_SIN * np.linalg.norm(f) * lg) ** 2 or b2 < (_LINEAR_SIN * np.linalg.norm(h) * lg) ** 2:
        return None
    gi = -lg / a2 * a
    gl = lg / b2 * b
    fg, hg = (f @ g) / (a2 * lg), (h @ g) / (b2 * lg)
    gj = lg / a2 * a + fg * a - hg * b
    gk = -lg / b2 * b - fg * a + hg * b
    return gi, gj, gk, gl


def internal_modes(numbers: np.ndarray, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vibrational modes of the Lindh Hessian with translations and rotations projected out.

    Returns:
        ``(stiffness, modes)``: [m] eigenvalues in eV/Å^2 (ascending) and [3n, m] orthonormal Cartesian mode
        vectors, m = 3n - 6 (3n - 5 if linear).
    """
    rigid = rigid_body_basis(positions)
    u, _, _ = np.linalg.svd(rigid, full_matrices=True)
    internal = u[:, rigid.shape[1]:]  # orthonormal complement of the rigid-body space, [3n, m]
    stiffness, vectors = np.linalg.eigh(internal.T @ lindh_hessian(numbers, positions) @ internal)
    return stiffness, internal @ vectors
