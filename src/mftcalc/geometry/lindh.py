"""Lindh's model Hessian of a molecule: its one parameter table, its force constants, the Hessian Bᵀ K B and the
internal normal modes of that Hessian.

Lindh's model (R. Lindh, A. Bernhardsson, G. Karlström, P.-Å. Malmqvist, Chem. Phys. Lett. 241, 423 (1995)) is
½ Σ_t k_t (q_t − q_t,0)² over every bond stretch, angle bend and torsion of a molecule, with force constants
that decay with distance, ``k = k_0 · Π ρ`` over the atom pairs along the term, ``ρ_ij = exp(α_ij (r_ref,ij² −
r_ij²))`` (α, r_ref by periodic-table row, in bohr), k_0 = 0.45 hartree/bohr² (stretch), 0.15 hartree/rad² (bend),
0.005 hartree/rad² (torsion). No bonding pattern has to be guessed, and stiff stretches and soft torsions get very
different curvatures. Its Hessian at the current geometry is Bᵀ K B, with B the Wilson B-matrix of the terms
(:func:`mftcalc.geometry.internal_coords.sparse_b_matrix`, the package's one set of B-vectors): positive
semi-definite, zero on rigid motions.

Users: the BFGS start Hessian of ``optimizer="bfgs-lindh"`` (:mod:`mftcalc.relaxation.engine`; about half the steps of
BFGS from 70 eV/Å² · I on QM9 molecules, ``benchmarks/screening.py``), the force constants of
``optimizer="bfgs-internal"`` (:mod:`mftcalc.relaxation.internal_bfgs`, through :func:`lindh_force_constants`) and the
normal-mode conformers of the labeller (:mod:`mftcalc.labelling.conformers`, through :func:`internal_modes`).

Units: positions Å; Hessian eV/Å²; force constants eV/Å² (stretches) and eV/rad² (bends, torsions). The published
parameters are in atomic units and converted with :mod:`mftcalc.geometry.units`. Argument order everywhere:
``(numbers, positions)``, as ``ase.Atoms(numbers, positions)``.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from mftcalc.geometry.internal_coords import InternalCoordinates, rigid_basis, sparse_b_matrix
from mftcalc.geometry.units import BOHR, HARTREE

# Lindh's Table 1 by periodic-table row (H-He, Li-Ne, Na and heavier): α in bohr⁻², r_ref in bohr.
_ALPHA = np.array([[1.0000, 0.3949, 0.3949], [0.3949, 0.2800, 0.2800], [0.3949, 0.2800, 0.2800]])
_R_REF = np.array([[1.35, 2.10, 2.53], [2.10, 2.87, 3.40], [2.53, 3.40, 3.40]])
K_STRETCH, K_BEND, K_TORSION = 0.45, 0.15, 0.005      # hartree/bohr², hartree/rad², hartree/rad²
#: k_0 in eV/Å² (stretch) or eV/rad² (bend, torsion) by the number of atoms of a term
_K0 = {2: K_STRETCH * HARTREE / BOHR ** 2, 3: K_BEND * HARTREE, 4: K_TORSION * HARTREE}
# Bends within ~6° of linear and torsions over such bends are left out: their B-vectors grow as 1/sin θ.
_MIN_SIN = 0.1


def _molecule(numbers: np.ndarray, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(numbers [n] int64, positions [n, 3] float64 Å), or an error naming the argument order."""
    z, x = np.asarray(numbers), np.asarray(positions, dtype=np.float64)
    if z.ndim != 1 or x.shape != (len(z), 3) or not np.array_equal(z, np.round(z)):
        raise ValueError(f"Lindh's model takes (numbers, positions): atomic numbers [n] first, positions [n, 3] Å "
                         f"second, as ase.Atoms(numbers, positions); got shapes {z.shape} and {x.shape}")
    return z.astype(np.int64), x


def _table_row(numbers: np.ndarray) -> np.ndarray:
    """Row of Lindh's table: 0 (H, He), 1 (Li-Ne) or 2 (Na and heavier)."""
    return np.where(numbers <= 2, 0, np.where(numbers <= 10, 1, 2))


def lindh_rho(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """[n, n] ρ_ij = exp(α_ij (r_ref,ij² − r_ij²)) (dimensionless, distances in bohr), zero on the diagonal."""
    z, x = _molecule(numbers, positions)
    x = x / BOHR
    row = _table_row(z)
    r2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    rho = np.exp(_ALPHA[row[:, None], row[None, :]] * (_R_REF[row[:, None], row[None, :]] ** 2 - r2))
    np.fill_diagonal(rho, 0.0)
    return rho


def lindh_force_constants(rho: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """Lindh's k_0 · Π ρ along each term of ``atoms`` [T, p], with ``rho`` from :func:`lindh_rho`.

    p = 2: stretches i−j, eV/Å²; p = 3: bends i−j−k (apex j), eV/rad²; p = 4: torsions i−j−k−l about j−k, eV/rad².
    Returns [T].
    """
    atoms = np.asarray(atoms, dtype=np.int64)
    if atoms.ndim != 2 or atoms.shape[1] not in _K0:
        raise ValueError(f"terms must be [T, 2], [T, 3] or [T, 4] atom indices, got shape {atoms.shape}")
    k = np.full(len(atoms), _K0[atoms.shape[1]])
    for m in range(atoms.shape[1] - 1):
        k = k * rho[atoms[:, m], atoms[:, m + 1]]
    return k


def lindh_terms(numbers: np.ndarray, positions: np.ndarray,
                rho_min: float = 1e-3) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """The internal coordinates of Lindh's model and their force constants.

    Returns ``{"stretch": (atoms [T, 2], k eV/Å²), "bend": (atoms [T, 3] with the apex in the middle, k eV/rad²),
    "torsion": (atoms [T, 4] about the middle pair, k eV/rad²)}``; terms whose ρ product is below ``rho_min``
    are dropped (they add less than ``rho_min`` of a bonded term's curvature), as are bends within ~6° of linear
    and torsions over such bends, whose B-vectors diverge.
    """
    z, x = _molecule(numbers, positions)
    rho = lindh_rho(z, x)
    strong = rho > rho_min

    stretches = np.argwhere(np.triu(strong, 1))

    j, a, c = np.nonzero(strong[:, :, None] & strong[:, None, :])
    keep = (a < c) & (rho[a, j] * rho[j, c] > rho_min)
    a, j, c = a[keep], j[keep], c[keep]
    u, w = x[a] - x[j], x[c] - x[j]
    cos = (u * w).sum(1) / np.sqrt((u * u).sum(1) * (w * w).sum(1))
    bends = np.stack([a, j, c], 1)[1.0 - cos ** 2 > _MIN_SIN ** 2]

    quads = []
    for jj, kk in stretches:
        ii = np.nonzero(strong[jj])[0]
        ll = np.nonzero(strong[kk])[0]
        ii, ll = np.meshgrid(ii[ii != kk], ll[ll != jj], indexing="ij")
        ii, ll = ii.ravel(), ll.ravel()
        keep = (ii != ll) & (rho[ii, jj] * rho[jj, kk] * rho[kk, ll] > rho_min)
        if keep.any():
            quads.append(np.stack([ii[keep], np.full(keep.sum(), jj), np.full(keep.sum(), kk), ll[keep]], 1))
    q = np.concatenate(quads) if quads else np.zeros((0, 4), dtype=np.int64)
    b1, b2, b3 = x[q[:, 1]] - x[q[:, 0]], x[q[:, 2]] - x[q[:, 1]], x[q[:, 3]] - x[q[:, 2]]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    l1, l2, l3 = (b1 ** 2).sum(1), (b2 ** 2).sum(1), (b3 ** 2).sum(1)
    keep = ((n1 ** 2).sum(1) > _MIN_SIN ** 2 * l1 * l2) & ((n2 ** 2).sum(1) > _MIN_SIN ** 2 * l2 * l3)
    torsions = q[keep]
    return {name: (t.astype(np.int64), lindh_force_constants(rho, t))
            for name, t in (("stretch", stretches), ("bend", bends), ("torsion", torsions))}


def lindh_hessian(numbers: np.ndarray, positions: np.ndarray, rho_min: float = 1e-3) -> np.ndarray:
    """Lindh's model Hessian of a molecule (no periodic images): Bᵀ K B over the terms of :func:`lindh_terms`.

    Args:
        numbers: [n] atomic numbers. positions: [n, 3] Å. rho_min: see :func:`lindh_terms`.

    Returns:
        [3n, 3n] float64, eV/Å², atom-major (x0, y0, z0, x1, ...), symmetric positive semi-definite (zero modes:
        rigid translations and rotations).
    """
    z, x = _molecule(numbers, positions)
    n = len(x)
    if n < 2:
        return np.zeros((3 * n, 3 * n))
    terms = lindh_terms(z, x, rho_min)
    coords = InternalCoordinates(n_atoms=n, bonds=terms["stretch"][0], bends=terms["bend"][0],
                                 torsions=terms["torsion"][0], linear=np.zeros((0, 3), dtype=np.int64),
                                 linear_axes=np.zeros((0, 2, 3)))
    b = sparse_b_matrix(coords, x)
    k = np.concatenate([terms[kind][1] for kind in ("stretch", "bend", "torsion")])
    return np.asarray((b.T @ b.multiply(k[:, None]).tocsr()).todense())


def internal_modes(numbers: np.ndarray, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vibrational modes of :func:`lindh_hessian` with rigid translations and rotations projected out.

    Returns:
        ``(stiffness, modes)``: [m] eigenvalues in eV/Å² (ascending) and [3n, m] orthonormal Cartesian mode
        vectors, m = 3n − 6 (3n − 5 if linear).
    """
    z, x = _molecule(numbers, positions)
    rigid = rigid_basis(x)
    u, _, _ = np.linalg.svd(rigid, full_matrices=True)
    internal = u[:, rigid.shape[1]:]  # orthonormal complement of the rigid-body space, [3n, m]
    stiffness, vectors = np.linalg.eigh(internal.T @ lindh_hessian(z, x) @ internal)
    return stiffness, internal @ vectors
