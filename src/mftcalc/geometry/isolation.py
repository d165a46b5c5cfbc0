"""Whether a periodic structure is really a molecule (or cluster) in a box: vacuum wider than the cutoff.

Plane-wave codes put molecules in periodic boxes, and ASE users often give them a cell and ``pbc=True``. A model
with cutoff ``r_c`` computes such a structure exactly as the bare molecule when no atom is within ``r_c`` of a
periodic image of any atom. A sufficient test, exact for a molecule in a box and cheap (no neighbour list): along
each periodic lattice direction i, project the atoms onto the normal of the plane of the other two lattice vectors
(the cell's height there is h_i = V / |a_j × a_k|); the largest empty interval of these projections, taken around
the period (so a molecule wrapped across the cell boundary counts as one piece), must be at least ``r_c``. Every
periodic image is displaced by a multiple of h_i along some such normal, so it then lies at least ``r_c`` away.
"""
from __future__ import annotations

import numpy as np


def vacuum_widths(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """[3] widest empty slab (Å) across each periodic lattice direction (inf where not periodic).

    ``positions`` [N, 3] Å, ``cell`` [3, 3] Å (rows: lattice vectors), ``pbc`` [3] bool. A direction whose cell
    vectors are degenerate (zero volume) has width 0."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    widths = np.full(3, np.inf)
    for i, width in _widths(positions, cell, pbc):
        widths[i] = width
    return widths


def isolated_in_box(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> bool:
    """True when a structure periodic in at least one direction has vacuum ≥ ``cutoff`` (Å) across every periodic
    direction: a model of that cutoff sees no periodic image, so it computes the bare molecule or cluster. Stops
    at the first direction without such vacuum (a crystal: one direction's work)."""
    if not np.any(pbc):
        return False
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    return all(width >= cutoff for _, width in _widths(positions, cell, pbc))


def _widths(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray):
    """``(direction, widest empty slab in Å)`` for each periodic direction, lazily (see the module docs)."""
    periodic = np.flatnonzero(np.asarray(pbc, dtype=bool).reshape(3))
    volume = abs(float(np.linalg.det(cell)))
    if volume < 1e-12:
        for i in periodic:
            yield int(i), 0.0
        return
    reciprocal = np.linalg.inv(cell)        # column i: fractional coordinate i of a position; its norm is 1/h_i
    for i in periodic:
        if len(positions) == 0:
            yield int(i), np.inf
            continue
        height = 1.0 / float(np.linalg.norm(reciprocal[:, i]))          # = V / |a_j × a_k|
        f = np.sort(np.mod(positions @ reciprocal[:, i], 1.0))
        gaps = np.diff(np.append(f, f[0] + 1.0))           # around the period
        yield int(i), float(gaps.max()) * height
