"""Model Hessians that start a quasi-Newton relaxation closer to the true curvature than ``alpha · I``.

Lindh's model Hessian (R. Lindh, A. Bernhardsson, G. Karlström, P.-Å. Malmqvist, Chem. Phys. Lett. 241, 423
(1995)) sums, over every bond stretch, angle bend and torsion of a molecule, a force constant times the outer
product of that internal coordinate's Wilson B-vector. The force constants decay with distance,
``k = k_0 · Π ρ``, ``ρ_ij = exp(α_ij (r_ref,ij² − r_ij²))``, so no bonding pattern has to be guessed and stiff
stretches and soft torsions get very different curvatures from the first step. BFGS started from it needs about
half the steps of BFGS started from 70 eV/Å² · I on QM9 molecules (``benchmarks/screening.py``).

Units: positions in Å, Hessian in eV/Å², force constants in eV/Å² (stretches) and eV/rad² (bends, torsions).
The published parameters are in atomic units (ρ is evaluated in bohr) and converted here.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from ase.units import Bohr, Hartree

# Lindh's parameters by periodic-table row (H-He, Li-Ne, Na and beyond): α in bohr⁻², r_ref in bohr.
_ALPHA = np.array([[1.0000, 0.3949, 0.3949], [0.3949, 0.2800, 0.2800], [0.3949, 0.2800, 0.2800]])
_R_REF = np.array([[1.35, 2.10, 2.53], [2.10, 2.87, 3.40], [2.53, 3.40, 3.40]])
_K_STRETCH, _K_BEND, _K_TORSION = 0.45, 0.15, 0.005      # hartree/bohr², hartree/rad², hartree/rad²
# Bends within ~6° of linear and torsions over such bends are left out: their B-vectors grow as 1/sin θ.
_MIN_SIN = 0.1


def _table_row(numbers: np.ndarray) -> np.ndarray:
    return np.where(numbers <= 2, 0, np.where(numbers <= 10, 1, 2))


def _add_terms(hessian: np.ndarray, atoms: np.ndarray, grads: np.ndarray, k: np.ndarray) -> None:
    """hessian += Σ_t k_t b_t b_tᵀ for terms t on ``atoms`` [T, p] with B-vectors ``grads`` [T, p, 3]."""
    if len(k) == 0:
        return
    t, p = atoms.shape
    cols = (3 * atoms[:, :, None] + np.arange(3)).reshape(t, 3 * p)
    b = grads.reshape(t, 3 * p)
    np.add.at(hessian, (cols[:, :, None], cols[:, None, :]), k[:, None, None] * b[:, :, None] * b[:, None, :])


def lindh_terms(positions: np.ndarray, numbers: np.ndarray, rho_min: float = 1e-3) -> Dict[str, Tuple[np.ndarray,
                                                                                                  np.ndarray]]:
    """The internal coordinates of Lindh's model and their force constants.

    Returns ``{"stretch": (atoms [T, 2], k eV/Å²), "bend": (atoms [T, 3] with the apex in the middle, k eV/rad²),
    "torsion": (atoms [T, 4] about the middle pair, k eV/rad²)}``; terms whose ρ product is below ``rho_min``
    are dropped (they add less than ``rho_min`` of a bonded term's curvature), as are bends within ~6° of linear
    and torsions over such bends, whose B-vectors diverge.
    """
    x = np.asarray(positions, dtype=np.float64) / Bohr
    z = np.asarray(numbers)
    row = _table_row(z)
    r2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    rho = np.exp(_ALPHA[row[:, None], row[None, :]] * (_R_REF[row[:, None], row[None, :]] ** 2 - r2))
    np.fill_diagonal(rho, 0.0)
    strong = rho > rho_min

    i, j = np.nonzero(np.triu(strong, 1))
    stretch = (np.stack([i, j], 1), _K_STRETCH * rho[i, j] * Hartree / Bohr ** 2)

    j, a, c = np.nonzero(strong[:, :, None] & strong[:, None, :])
    keep = (a < c) & (rho[a, j] * rho[j, c] > rho_min)
    a, j, c = a[keep], j[keep], c[keep]
    u, w = x[a] - x[j], x[c] - x[j]
    cos = (u * w).sum(1) / np.sqrt((u * u).sum(1) * (w * w).sum(1))
    keep = 1.0 - cos ** 2 > _MIN_SIN ** 2
    bend = (np.stack([a, j, c], 1)[keep], (_K_BEND * rho[a, j] * rho[j, c] * Hartree)[keep])

    quads = []
    for jj, kk in np.argwhere(np.triu(strong, 1)):
        ii = np.nonzero(strong[jj])[0]
        ll = np.nonzero(strong[kk])[0]
        ii, ll = np.meshgrid(ii[ii != kk], ll[ll != jj], indexing="ij")
        ii, ll = ii.ravel(), ll.ravel()
        keep = (ii != ll) & (rho[ii, jj] * rho[jj, kk] * rho[kk, ll] > rho_min)
        if keep.any():
            quads.append(np.stack([ii[keep], np.full(keep.sum(), jj), np.full(keep.sum(), kk), ll[keep]], 1))
    q = np.concatenate(quads) if quads else np.zeros((0, 4), dtype=np.int64)
    I, J, K, L = q.T
    b1, b2, b3 = x[J] - x[I], x[K] - x[J], x[L] - x[K]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    l1, l2, l3 = (b1 ** 2).sum(1), (b2 ** 2).sum(1), (b3 ** 2).sum(1)
    keep = ((n1 ** 2).sum(1) > _MIN_SIN ** 2 * l1 * l2) & ((n2 ** 2).sum(1) > _MIN_SIN ** 2 * l2 * l3)
    torsion = (q[keep], (_K_TORSION * rho[I, J] * rho[J, K] * rho[K, L] * Hartree)[keep])
    return {"stretch": stretch, "bend": bend, "torsion": torsion}


def _stretch_b(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    u = x[t[:, 0]] - x[t[:, 1]]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return np.stack([u, -u], 1)


def _bend_b(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    u, w = x[t[:, 0]] - x[t[:, 1]], x[t[:, 2]] - x[t[:, 1]]
    lu, lw = np.linalg.norm(u, axis=1, keepdims=True), np.linalg.norm(w, axis=1, keepdims=True)
    u, w = u / lu, w / lw
    cos = (u * w).sum(1, keepdims=True)
    sin = np.sqrt(1.0 - cos ** 2)
    ga, gc = (cos * u - w) / (lu * sin), (cos * w - u) / (lw * sin)
    return np.stack([ga, -ga - gc, gc], 1)


def _torsion_b(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    b1, b2, b3 = x[t[:, 1]] - x[t[:, 0]], x[t[:, 2]] - x[t[:, 1]], x[t[:, 3]] - x[t[:, 2]]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    n1s, n2s = (n1 ** 2).sum(1, keepdims=True), (n2 ** 2).sum(1, keepdims=True)
    lb2 = np.linalg.norm(b2, axis=1, keepdims=True)
    g_i, g_l = -lb2 * n1 / n1s, lb2 * n2 / n2s
    p, s = -(b1 * b2).sum(1, keepdims=True) / lb2 ** 2, -(b3 * b2).sum(1, keepdims=True) / lb2 ** 2
    return np.stack([g_i, (p - 1.0) * g_i - s * g_l, (s - 1.0) * g_l - p * g_i, g_l], 1)


def lindh_hessian(positions: np.ndarray, numbers: np.ndarray, rho_min: float = 1e-3) -> np.ndarray:
    """Lindh's model Hessian of a molecule (no periodic images): Σ_t k_t b_t b_tᵀ over :func:`lindh_terms`.

    Args:
        positions: [n, 3] Å. numbers: [n] atomic numbers. rho_min: see :func:`lindh_terms`.

    Returns:
        [3n, 3n] symmetric positive semi-definite matrix, eV/Å² (zero modes: rigid translations and rotations).
    """
    x = np.asarray(positions, dtype=np.float64)
    hessian = np.zeros((3 * len(x), 3 * len(x)))
    if len(x) < 2:
        return hessian
    terms = lindh_terms(x, numbers, rho_min)
    for kind, b_vectors in (("stretch", _stretch_b), ("bend", _bend_b), ("torsion", _torsion_b)):
        atoms, k = terms[kind]
        if len(k):
            _add_terms(hessian, atoms, b_vectors(x, atoms), k)
    return hessian
