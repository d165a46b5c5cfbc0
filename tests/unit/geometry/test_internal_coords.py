"""The one set of B-vectors: the sparse B-matrix (used by Lindh's Hessian) equals the dense one of the optimiser."""
from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from mftcalc.geometry.internal_coords import build_internal_coordinates, sparse_b_matrix


@pytest.mark.parametrize("name", ["CH3CONH2", "CH3CN", "C6H6"])
def test_sparse_b_matrix_equals_the_dense_one(name):
    atoms = molecule(name)
    atoms.rattle(0.03, seed=4)
    coords = build_internal_coordinates(atoms.positions, atoms.numbers)
    assert name != "CH3CN" or len(coords.linear) == 1          # linear bends are covered too
    _, dense = coords.evaluate(atoms.positions)
    sparse = sparse_b_matrix(coords, atoms.positions)
    assert sparse.shape == dense.shape == (coords.n_coords, 3 * len(atoms))
    np.testing.assert_array_equal(sparse.toarray(), dense)
