"""Redundant internal coordinates of a molecule: bond stretches, bends, linear bends and torsions, with their
Wilson B-matrix: the package's one set of B-vectors, used by quasi-Newton relaxation in internal coordinates
(:mod:`mftcalc.relaxation.internal_bfgs`) and by Lindh's model Hessian (:mod:`mftcalc.geometry.lindh`).

Chemists' optimisers (Pulay & Fogarasi; Peng, Ayala, Schlegel & Frisch, J. Comput. Chem. 17, 49 (1996); Berny;
geomeTRIC) step in bonds, angles and torsions because a molecule's energy is close to a sum of uncoupled terms in
them: a diagonal model Hessian is nearly right there, and a rotation about a bond is one coordinate, not a
curved path through Cartesian space. On rattled QM9 molecules such optimisers reach fmax 0.05 eV/Å in about two
thirds of the force calls of Cartesian BFGS started from Lindh's Hessian (``benchmarks/screening.py``).

Units: positions Å; bonds and linear bends Å (a linear bend is a displacement), bends and torsions radians.
The coordinate set is fixed when it is built (from the first geometry of a relaxation); its values and B-matrix
are evaluated at any geometry with the same atoms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ase.data import covalent_radii

#: two atoms are bonded when closer than this factor times the sum of their covalent radii
BOND_FACTOR = 1.3
#: bends straighter than this (degrees) are linear: described by two linear-bend displacements instead (a
#: rattled C−C≡N is a few degrees off straight, and a bend's B-vector grows as 1/sin θ near 180°)
LINEAR_DEG = 165.0
#: torsions whose outer bend is straighter than this (degrees) are left out (their B-vectors grow as 1/sin θ)
TORSION_MAX_BEND_DEG = 165.0


@dataclass(frozen=True)
class InternalCoordinates:
    """A fixed set of internal coordinates of one molecule of ``n_atoms`` atoms.

    Attributes:
        bonds: [nb, 2] atom pairs. bends: [na, 3] atom triples, apex in the middle. torsions: [nt, 4] quadruples
        about the middle pair. linear: [nl, 3] atom triples (apex in the middle) of linear bends, each giving two
        coordinates, the displacement of the apex from the line of its neighbours along ``linear_axes`` [nl, 2, 3]
        (unit vectors perpendicular to that line at build time).
    """

    n_atoms: int
    bonds: np.ndarray
    bends: np.ndarray
    torsions: np.ndarray
    linear: np.ndarray
    linear_axes: np.ndarray

    @property
    def n_coords(self) -> int:
        """Number of coordinates (rows of the B-matrix)."""
        return len(self.bonds) + len(self.bends) + len(self.torsions) + 2 * len(self.linear)

    @property
    def periodic(self) -> np.ndarray:
        """[n_coords] bool: the torsions, whose differences are taken modulo 2π (cached: read every back-step)."""
        mask = getattr(self, "_periodic", None)
        if mask is None:
            mask = np.zeros(self.n_coords, dtype=bool)
            start = len(self.bonds) + len(self.bends)
            mask[start:start + len(self.torsions)] = True
            object.__setattr__(self, "_periodic", mask)
        return mask

    def difference(self, q1: np.ndarray, q0: np.ndarray) -> np.ndarray:
        """q1 − q0 [n_coords] with torsion differences wrapped into (−π, π]."""
        d = q1 - q0
        per = self.periodic
        d[per] = (d[per] + np.pi) % (2.0 * np.pi) - np.pi
        return d

    def _layout(self) -> Tuple[np.ndarray, np.ndarray]:
        """Flat indices into B [n_coords · 3n] of the derivative entries of each block, in block order (cached)."""
        cached = getattr(self, "_flat", None)
        if cached is None:
            rows, start = [], 0
            blocks = [self.bonds, self.bends, self.torsions, np.repeat(self.linear, 2, axis=0)]
            for atoms in blocks:
                t, p = atoms.shape
                cols = (3 * atoms[:, :, None] + np.arange(3)).reshape(t, 3 * p)
                rows.append(((np.arange(start, start + t)[:, None] * 3 * self.n_atoms) + cols).ravel())
                start += t
            cached = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
            object.__setattr__(self, "_flat", cached)
        return cached

    def evaluate(self, positions: np.ndarray, with_b: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Values q [n_coords] and B-matrix ∂q/∂x [n_coords, 3·n_atoms] at ``positions`` [n_atoms, 3] Å
        (B is ``None`` when ``with_b`` is false)."""
        return CoordinateBatch([self]).evaluate([positions], with_b)[0]


def sparse_b_matrix(coords: InternalCoordinates, positions: np.ndarray):
    """B-matrix ∂q/∂x [n_coords, 3·n_atoms] of ``coords`` at ``positions`` [n_atoms, 3] Å as a
    ``scipy.sparse.csr_matrix`` (6, 9, 12 or 18 entries per row): for sums over many terms, such as Bᵀ K B."""
    from scipy.sparse import csr_matrix
    defs = {"bonds": coords.bonds, "bends": coords.bends, "torsions": coords.torsions, "linear": coords.linear}
    _, grads = _evaluate_blocks(np.asarray(positions, dtype=np.float64), defs, coords.linear_axes, True)
    rows, cols = np.divmod(coords._layout(), 3 * coords.n_atoms)
    return csr_matrix((grads, (rows, cols)), shape=(coords.n_coords, 3 * coords.n_atoms))


class CoordinateBatch:
    """Several molecules' coordinate sets evaluated together: one pass of array operations over all of their
    bonds, bends, torsions and linear bends (the per-molecule cost of a relaxation step is then a few slices)."""

    def __init__(self, sets: Sequence[InternalCoordinates]) -> None:
        self.sets = list(sets)
        offsets = np.concatenate([[0], np.cumsum([c.n_atoms for c in self.sets])])
        self.atom_offsets = offsets
        blocks = ("bonds", "bends", "torsions", "linear")
        self.defs = {}
        counts = {}
        for name in blocks:
            arrays = [getattr(c, name) + offsets[m] for m, c in enumerate(self.sets)]
            width = {"bonds": 2, "bends": 3, "torsions": 4, "linear": 3}[name]
            self.defs[name] = np.concatenate(arrays) if arrays else np.zeros((0, width), dtype=np.int64)
            counts[name] = np.array([len(getattr(c, name)) for c in self.sets], dtype=np.int64)
        axes = [c.linear_axes for c in self.sets]
        self.linear_axes = np.concatenate(axes) if axes else np.zeros((0, 2, 3))
        # rows of each block in the global q order [bonds | bends | torsions | linear (2 per triple)] and the
        # entries of each block in the flat derivative array, per molecule
        rows_per = {"bonds": 1, "bends": 1, "torsions": 1, "linear": 2}
        entries_per = {"bonds": 6, "bends": 9, "torsions": 12, "linear": 18}
        q_start, g_start = 0, 0
        self.q_index: List[List[np.ndarray]] = [[] for _ in self.sets]
        self.g_index: List[List[np.ndarray]] = [[] for _ in self.sets]
        for name in blocks:
            first = np.concatenate([[0], np.cumsum(counts[name])])
            for m in range(len(self.sets)):
                a, b = first[m], first[m + 1]
                self.q_index[m].append(np.arange(q_start + a * rows_per[name], q_start + b * rows_per[name]))
                self.g_index[m].append(np.arange(g_start + a * entries_per[name], g_start + b * entries_per[name]))
            q_start += first[-1] * rows_per[name]
            g_start += first[-1] * entries_per[name]
        self.q_index = [np.concatenate(ix) for ix in self.q_index]
        self.g_index = [np.concatenate(ix) for ix in self.g_index]

    def evaluate(self, positions: Sequence[np.ndarray], with_b: bool = True) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """(q [n_coords], B [n_coords, 3n] or ``None``) of each molecule at its ``positions`` [n, 3] Å."""
        x = np.concatenate([np.asarray(p, dtype=np.float64) for p in positions])
        q, grads = _evaluate_blocks(x, self.defs, self.linear_axes, with_b)
        out = []
        for m, c in enumerate(self.sets):
            qm = q[self.q_index[m]]
            if not with_b:
                out.append((qm, None))
                continue
            bm = np.zeros(len(qm) * 3 * c.n_atoms)
            bm[c._layout()] = grads[self.g_index[m]]
            out.append((qm, bm.reshape(len(qm), 3 * c.n_atoms)))
        return out


def _evaluate_blocks(x: np.ndarray, defs: Dict[str, np.ndarray], linear_axes: np.ndarray,
                     with_b: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """All coordinate values [bonds | bends | torsions | linear bends] and, with ``with_b``, the flat derivative
    entries (per coordinate, its atoms' x, y, z in order) for atom positions ``x`` [N, 3]."""
    values = []
    grads = []
    bonds, bends, torsions, linear = defs["bonds"], defs["bends"], defs["torsions"], defs["linear"]
    if len(bonds):
        u = x[bonds[:, 0]] - x[bonds[:, 1]]
        r = np.sqrt(np.einsum("ij,ij->i", u, u))
        values.append(r)
        if with_b:
            u = u / r[:, None]
            grads.append(np.concatenate([u, -u], 1).ravel())
    if len(bends):
        a, j, c = bends.T
        u, w = x[a] - x[j], x[c] - x[j]
        lu, lw = np.sqrt(np.einsum("ij,ij->i", u, u)), np.sqrt(np.einsum("ij,ij->i", w, w))
        u, w = u / lu[:, None], w / lw[:, None]
        cos = np.clip(np.einsum("ij,ij->i", u, w), -1.0, 1.0)
        values.append(np.arccos(cos))
        if with_b:
            sin = np.sqrt(np.maximum(1.0 - cos * cos, 1e-300))[:, None]
            ga = (cos[:, None] * u - w) / (lu[:, None] * sin)
            gc = (cos[:, None] * w - u) / (lw[:, None] * sin)
            grads.append(np.concatenate([ga, -ga - gc, gc], 1).ravel())
    if len(torsions):
        i, j, k, l = torsions.T
        b1, b2, b3 = x[j] - x[i], x[k] - x[j], x[l] - x[k]
        m, n = _cross(b1, b2), _cross(b2, b3)
        lb2 = np.sqrt(np.einsum("ij,ij->i", b2, b2))
        values.append(np.arctan2(lb2 * np.einsum("ij,ij->i", b1, n), np.einsum("ij,ij->i", m, n)))
        if with_b:
            gi = -(lb2 / np.einsum("ij,ij->i", m, m))[:, None] * m
            gl = (lb2 / np.einsum("ij,ij->i", n, n))[:, None] * n
            p = (np.einsum("ij,ij->i", b1, b2) / lb2 ** 2)[:, None]
            s = (np.einsum("ij,ij->i", b3, b2) / lb2 ** 2)[:, None]
            gj = s * gl - (1.0 + p) * gi
            gk = p * gi - (1.0 + s) * gl
            grads.append(np.concatenate([gi, gj, gk, gl], 1).ravel())
    if len(linear):
        a, j, c = linear.T
        mid = 0.5 * (x[a] + x[c]) - x[j]                             # [nl, 3]
        values.append(np.einsum("lmx,lx->lm", linear_axes, mid).ravel())
        if with_b:
            axes = linear_axes.reshape(-1, 3)                        # [2nl, 3]
            grads.append(np.concatenate([0.5 * axes, -axes, 0.5 * axes], 1).ravel())
    q = np.concatenate(values) if values else np.zeros(0)
    if not with_b:
        return q, None
    return q, (np.concatenate(grads) if grads else np.zeros(0))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of [T, 3] arrays (np.cross without its axis handling, ~5x faster here)."""
    out = np.empty_like(a)
    out[:, 0] = a[:, 1] * b[:, 2] - a[:, 2] * b[:, 1]
    out[:, 1] = a[:, 2] * b[:, 0] - a[:, 0] * b[:, 2]
    out[:, 2] = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return out


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected-component label [n] of each atom for the bond list ``pairs`` [nb, 2]."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else \
        coo_matrix((n, n))
    return connected_components(graph, directed=False)[1]


def build_internal_coordinates(positions: np.ndarray, numbers: np.ndarray) -> InternalCoordinates:
    """Bonds (covalent radii × :data:`BOND_FACTOR`, fragments joined by their closest pairs), every bend between
    two bonds of an atom (linear ones as two linear bends), and every torsion about a bond whose two outer bends
    are not linear, for a molecule at ``positions`` [n, 3] Å with atomic ``numbers`` [n].

    The set may miss a degree of freedom (torsions along a linear chain such as C−C≡C−C); callers check the rank
    of the B-matrix (:func:`internal_rank_deficit`) before relying on it.
    """
    x = np.asarray(positions, dtype=np.float64)
    z = np.asarray(numbers)
    n = len(x)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    rcov = covalent_radii[z]
    bonded = dist < BOND_FACTOR * (rcov[:, None] + rcov[None, :])
    np.fill_diagonal(bonded, False)
    pairs = np.argwhere(np.triu(bonded, 1))
    labels = _components(n, pairs)
    while labels.max() > 0:                        # join the fragment of atom 0 to its nearest other fragment
        inside = labels == labels[0]
        sub = np.where(inside[:, None] & ~inside[None, :], dist, np.inf)
        a, b = np.unravel_index(np.argmin(sub), sub.shape)
        bonded[a, b] = bonded[b, a] = True
        pairs = np.argwhere(np.triu(bonded, 1))
        labels = _components(n, pairs)
    neighbours = [np.nonzero(bonded[i])[0] for i in range(n)]

    bends, linear, axes = [], [], []
    straight = {}
    cos_linear = np.cos(np.radians(LINEAR_DEG))
    for j in range(n):
        nb = neighbours[j]
        for p in range(len(nb)):
            for r in range(p + 1, len(nb)):
                a, c = nb[p], nb[r]
                u, w = x[a] - x[j], x[c] - x[j]
                cos = u @ w / np.sqrt((u @ u) * (w @ w))
                if cos < cos_linear:
                    straight[(a, j, c)] = straight[(c, j, a)] = True
                    line = x[c] - x[a]
                    line /= np.linalg.norm(line)
                    trial = np.eye(3)[np.argmin(np.abs(line))]
                    e1 = np.cross(line, trial)
                    e1 /= np.linalg.norm(e1)
                    linear.append((a, j, c))
                    axes.append((e1, np.cross(line, e1)))
                else:
                    bends.append((a, j, c))

    cos_max = np.cos(np.radians(TORSION_MAX_BEND_DEG))

    def _bent(a: int, j: int, c: int) -> bool:
        u, w = x[a] - x[j], x[c] - x[j]
        return u @ w / np.sqrt((u @ u) * (w @ w)) > cos_max

    # torsion axes: every bond, and every linear chain (A−j−…−C through linear apexes) by its two ends, so that
    # the twist about C−C≡C−C is a coordinate too
    apexes = {j for (_, j, _) in linear}
    axes_pairs = [(int(j), int(k), int(k), int(j)) for j, k in pairs if j not in apexes and k not in apexes]
    for a, j, c in linear:
        if a in apexes and (a, j) > (c, j):      # each chain once: start from a non-apex end
            continue
        ends = []
        for start in (a, c):
            prev, cur = j, start
            while cur in apexes:
                nxt = [m for m in neighbours[cur] if m != prev and straight.get((prev, cur, m), False)]
                if not nxt:
                    break
                prev, cur = cur, nxt[0]
            ends.append((cur, prev))          # chain end and its neighbour inside the chain
        (end_a, in_a), (end_c, in_c) = ends
        if end_a != end_c and end_a not in apexes and end_c not in apexes:
            axes_pairs.append((end_a, end_c, in_a, in_c))
    torsions = set()
    for j, k, j_in, k_in in axes_pairs:          # j_in / k_in: the atom next to j / k along the axis
        for i in neighbours[j]:
            if i == j_in or i == k or not _bent(i, j, j_in):
                continue
            for l in neighbours[k]:
                if l == k_in or l == j or l == i or not _bent(k_in, k, l):
                    continue
                key = (i, j, k, l) if (i, j) < (l, k) else (l, k, j, i)
                torsions.add(key)
    # out-of-plane motion of a three-coordinated atom moves its bends only to second order when it is planar:
    # one improper torsion (a, j, b, c) about j−b carries it to first order
    for j in range(n):
        nb = neighbours[j]
        if len(nb) == 3 and j not in apexes:
            a, b_, c = (int(v) for v in nb)
            if _bent(a, j, b_) and _bent(j, b_, c):
                torsions.add((a, j, b_, c))
    torsions = sorted(torsions)
    as_array = lambda rows, p: np.asarray(rows, dtype=np.int64).reshape(-1, p)   # noqa: E731
    return InternalCoordinates(n_atoms=n, bonds=pairs.astype(np.int64), bends=as_array(bends, 3),
                               torsions=as_array(torsions, 4), linear=as_array(linear, 3),
                               linear_axes=np.asarray(axes, dtype=np.float64).reshape(-1, 2, 3))


def internal_rank_deficit(coords: InternalCoordinates, positions: np.ndarray, tol: float = 1e-6) -> int:
    """How many internal degrees of freedom (3n − 6, or 3n − 5 for a linear molecule) the coordinate set does not
    span at ``positions`` (0 when complete)."""
    x = np.asarray(positions, dtype=np.float64)
    n = coords.n_atoms
    if n < 2:
        return 0
    _, b = coords.evaluate(x)
    b = b @ rigid_projector(x)
    singular = np.linalg.svd(b, compute_uv=False) if b.size else np.zeros(0)
    rank = int((singular > tol * max(singular.max(initial=0.0), 1.0)).sum())
    centred = x - x.mean(0)
    inertia = np.linalg.eigvalsh(centred.T @ centred)
    linear_molecule = inertia[1] < 1e-6 * max(inertia[2], 1e-12)
    return (3 * n - (5 if linear_molecule or n == 2 else 6)) - rank


def rigid_basis(positions: np.ndarray) -> np.ndarray:
    """[3n, k] orthonormal basis of the rigid translations and rotations of ``positions`` [n, 3] (k = 6, or 5
    for a linear molecule): see :func:`rigid_bases`."""
    return rigid_bases([positions])[0]


def rigid_bases(positions: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Rigid-motion bases [3n, k] of several molecules at once: translations e_a / √n and rotations about the
    principal axes, which are orthogonal to the translations (centred coordinates) and to each other (their Gram
    matrix is the inertia tensor); k = 6, or 5 for a linear molecule."""
    sizes = np.array([len(p) for p in positions])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    x = np.concatenate([np.asarray(p, dtype=np.float64) for p in positions])
    mol = np.repeat(np.arange(len(sizes)), sizes)
    c = x - (np.add.reduceat(x, starts, axis=0) / sizes[:, None])[mol]
    second = np.add.reduceat(c[:, :, None] * c[:, None, :], starts, axis=0)          # [M, 3, 3] Σ c cᵀ
    inertia = np.trace(second, axis1=1, axis2=2)[:, None, None] * np.eye(3) - second
    moments, axes = np.linalg.eigh(inertia)                                           # [M, 3], [M, 3, 3]
    ax = axes[mol]                                                                    # [N, 3 (xyz), 3 (axis)]
    # rotation about axis a moves atom i by a × c_i: [N, 3 (axis), 3 (xyz)]
    rot = np.stack([_cross(ax[:, :, a], c) for a in range(3)], 1)
    out = []
    for m, (s, n) in enumerate(zip(starts, sizes)):
        keep = moments[m] > 1e-8 * max(moments[m, -1], 1e-300)
        basis = np.zeros((3 * n, 3 + int(keep.sum())))
        for a in range(3):
            basis[a::3, a] = 1.0 / np.sqrt(n)
        r = rot[s:s + n][:, keep, :] / np.sqrt(moments[m, keep])[None, :, None]       # [n, k_rot, 3]
        basis[:, 3:] = r.transpose(0, 2, 1).reshape(3 * n, -1)
        out.append(basis)
    return out


def rigid_projector(positions: np.ndarray) -> np.ndarray:
    """[3n, 3n] orthogonal projector onto Cartesian displacements with no rigid translation or rotation."""
    u = rigid_basis(positions)
    return np.eye(u.shape[0]) - u @ u.T
