"""The Triton cell-list search (backend 'triton') against ASE and the torch search.

Without CUDA the kernels run on CPU tensors through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before triton is imported), which runs every program in Python: the structures here are small on purpose.
"""
import os
import subprocess
import sys
from typing import List, Set, Tuple

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mftcalc.kernels import _triton, neighbor_list

Pair = Tuple[int, int, Tuple[int, int, int]]


@pytest.fixture(scope="module")
def device(triton_device) -> str:
    """CUDA when present, else CPU through Triton's interpreter (the root conftest's ``triton_device``)."""
    return triton_device


def _inputs(structures: List[Atoms], dtype: torch.dtype = torch.float64):
    positions = torch.tensor(np.concatenate([a.positions for a in structures]).reshape(-1, 3), dtype=dtype)
    batch = torch.cat([torch.full((len(a),), k, dtype=torch.long) for k, a in enumerate(structures)])
    cell = torch.tensor(np.stack([np.asarray(a.cell) for a in structures]), dtype=dtype)
    pbc = torch.tensor(np.stack([a.pbc for a in structures]))
    return positions, batch, cell, pbc


def _pairs(edge_index: torch.Tensor, shifts: torch.Tensor) -> List[Pair]:
    return list(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, shifts.long().tolist())))


def _ase_pairs(structures: List[Atoms], cutoff: float) -> Set[Pair]:
    expected: Set[Pair] = set()
    offset = 0
    for atoms in structures:
        if len(atoms) > 0:
            i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
            expected |= {(a + offset, b + offset, tuple(c)) for a, b, c in zip(i.tolist(), j.tolist(), s.tolist())}
        offset += len(atoms)
    return expected


def _search(structures: List[Atoms], cutoff: float, device: str, dtype: torch.dtype = torch.float64):
    """Triton result (on CPU), checked well formed and equal to the torch search as a set, with equal distances."""
    positions, batch, cell, pbc = _inputs(structures, dtype)
    on = [t.to(device) for t in (positions, batch, cell, pbc)]
    edge_index, shifts, distances = (t.cpu() for t in neighbor_list(on[0], cutoff, *on[1:], backend="triton"))
    assert edge_index.dtype == torch.long and shifts.dtype == dtype and distances.dtype == dtype
    assert edge_index.shape == (2, shifts.shape[0]) and distances.shape == (shifts.shape[0],)
    i, j = edge_index
    assert bool((i[1:] >= i[:-1]).all()), "pairs must be sorted by centre atom"
    assert bool((batch[i] == batch[j]).all())
    vectors = positions[j] - positions[i] + torch.einsum("ek,ekl->el", shifts, cell[batch[i]])
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(vectors.norm(dim=1), distances, atol=tolerance, rtol=0.0)
    got = _pairs(edge_index, shifts)
    assert len(got) == len(set(got)), "duplicate pairs"
    ref_index, ref_shifts, ref_distances = neighbor_list(positions, cutoff, batch, cell, pbc, backend="torch")
    reference = _pairs(ref_index, ref_shifts)
    if dtype == torch.float64:  # float32: pairs at the cutoff up to rounding may differ between the searches
        assert set(got) == set(reference)
        order = sorted(range(len(got)), key=got.__getitem__)
        ref_order = sorted(range(len(reference)), key=reference.__getitem__)
        torch.testing.assert_close(distances[order], ref_distances[ref_order], atol=1e-12, rtol=0.0)
    return edge_index, shifts, distances


def _rattled(atoms: Atoms, seed: int, unwrap: bool = True) -> Atoms:
    """Rattled copy, atoms moved by random lattice translations (the search must not need wrapped input)."""
    atoms = atoms.copy()
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    if unwrap:
        periodic = np.asarray(atoms.pbc, dtype=float)
        atoms.positions += (rng.integers(-2, 3, (len(atoms), 3)) * periodic) @ np.asarray(atoms.cell)
    return atoms


def test_periodic_cubic_and_triclinic_cells_match_ase(device: str) -> None:
    copper = _rattled(bulk("Cu", "fcc", a=3.61, cubic=True), 0)                   # 1 bin, 27 images
    triclinic = Atoms("SiOO", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.7], [0.9, 0.1, 0.5]],
                      cell=[[4.1, 0.0, 0.0], [1.2, 3.8, 0.0], [-0.7, 0.9, 4.4]], pbc=True)
    structures = [copper, _rattled(triclinic, 1)]
    edge_index, shifts, _ = _search(structures, 3.2, device)
    assert set(_pairs(edge_index, shifts)) == _ase_pairs(structures, 3.2)


def test_grid_of_several_bins_per_direction_matches_ase(device: str) -> None:
    """27 bins: rows wrap across the box faces, ranges of consecutive bins are merged along the last direction."""
    rng = np.random.default_rng(2)
    cell = np.array([[7.6, 0.0, 0.0], [0.4, 7.5, 0.0], [-0.3, 0.5, 7.7]])
    atoms = _rattled(Atoms("C16", scaled_positions=rng.uniform(0.0, 1.0, (16, 3)), cell=cell, pbc=True), 3)
    edge_index, shifts, _ = _search([atoms], 2.4, device)
    assert set(_pairs(edge_index, shifts)) == _ase_pairs([atoms], 2.4)


def test_small_cells_with_cutoff_beyond_half_the_cell_match_ase(device: str) -> None:
    """Many periodic images of every atom, itself included: search ranges of 2 bins and more."""
    two = Atoms("HeNe", positions=[[0.1, 0.2, 0.3], [1.4, 1.1, 1.2]],
                cell=[[2.5, 0.0, 0.0], [0.9, 2.4, 0.0], [0.6, -0.7, 2.3]], pbc=True)
    one = Atoms("Ar", positions=[[0.3, 0.0, 0.0]], cell=np.diag([1.9, 2.2, 2.6]), pbc=[True, True, False])
    structures = [two, one]
    edge_index, shifts, _ = _search(structures, 3.9, device)
    assert set(_pairs(edge_index, shifts)) == _ase_pairs(structures, 3.9)


def test_mixed_periodicity_matches_ase(device: str) -> None:
    rng = np.random.default_rng(4)
    slab = Atoms("C6", positions=rng.uniform(0.0, 4.0, (6, 3)), cell=[[3.9, 0, 0], [1.0, 4.2, 0], [0, 0, 0]],
                 pbc=[True, True, False])                                  # zero non-periodic vector
    wire = Atoms("C5", positions=rng.uniform(0.0, 5.0, (5, 3)), cell=[[9.0, 0, 0], [0, 3.1, 0.4], [0, 0, 8.0]],
                 pbc=[False, True, False])
    structures = [_rattled(slab, 5), _rattled(wire, 6)]
    edge_index, shifts, _ = _search(structures, 3.0, device)
    assert set(_pairs(edge_index, shifts)) == _ase_pairs(structures, 3.0)


def test_strongly_sheared_cell_is_reduced_and_matches_ase(device: str) -> None:
    from mftcalc.kernels._triton_bins import GEO, INFO, bin_structures
    cell = np.array([[3.0, 0.0, 0.0], [9.4, 2.6, 0.0], [-7.1, 5.3, 2.9]])    # b ~ 3a + ..., c ~ -2a + 2b' + ...
    atoms = Atoms("CO", scaled_positions=[[0.2, 0.3, 0.1], [0.7, 0.6, 0.5]], cell=cell, pbc=True)
    edge_index, shifts, _ = _search([atoms], 3.4, device)
    assert set(_pairs(edge_index, shifts)) == _ase_pairs([atoms], 3.4)
    positions, batch, cell_t, pbc = (t.to(device) for t in _inputs([atoms]))
    geo = torch.empty((1, GEO.value), dtype=torch.float64, device=device)
    info = torch.empty((1, INFO.value), dtype=torch.long, device=device)
    status = torch.zeros(2, dtype=torch.long, device=device)
    wrapped, image = torch.empty((3, 2), dtype=torch.float64, device=device), torch.empty((3, 2), dtype=torch.int32,
                                                                                          device=device)
    bin_structures[(1,)](positions, batch, cell_t, pbc, torch.full((1,), 3.4, dtype=torch.float64, device=device), 2,
                         1, geo, info, torch.empty(2, dtype=torch.int32, device=device), wrapped, image, status,
                         BLOCK=32)
    geo, info, wrapped, image = geo.cpu(), info.cpu(), wrapped.cpu(), image.cpu()
    reduced, transform = geo[0, :9].view(3, 3), geo[0, 9:].view(3, 3)
    assert status.tolist() == [0, 0]
    assert abs(float(torch.linalg.det(transform))) == pytest.approx(1.0)
    torch.testing.assert_close(transform @ cell_t[0].cpu(), reduced)
    gram = reduced @ reduced.T
    projections = (gram / gram.diagonal()).abs() - torch.eye(3, dtype=torch.float64)
    assert bool((projections <= 0.5 + 1e-9).all())                          # Gauss-reduced
    assert info[0, 3:6].tolist() == [2, 2, 2]                               # not the ~12 bins of the sheared cell
    torch.testing.assert_close(wrapped.T + image.T.double() @ reduced, positions.cpu())


def test_molecule_batches_with_empty_and_single_atom_structures_match_ase(device: str) -> None:
    """Molecules fit one bin each (searched all-pairs); empty structures and lone atoms in between."""
    rng = np.random.default_rng(7)
    structures = []
    for name in ("H2O", "CH4", "", "C6H6", "NH3", "He", "CH3CH2OH", ""):
        atoms = molecule(name) if name not in ("", "He") else Atoms(name)
        if name == "He":
            atoms = Atoms("He", positions=[[1.0, 2.0, 3.0]])
        atoms.positions += rng.uniform(-40.0, 40.0, 3)
        structures.append(atoms)
    long = Atoms("C12", positions=np.c_[np.arange(12) * 1.4, np.zeros(12), np.zeros(12)])   # several bins along x
    structures.append(long)
    edge_index, shifts, _ = _search(structures, 3.0, device)
    assert bool((shifts == 0).all())
    assert set(_pairs(edge_index, shifts)) == _ase_pairs(structures, 3.0)


def test_atoms_on_bin_and_cell_faces_match_ase(device: str) -> None:
    """Bins exactly 3 Å wide with atoms on their faces, on the cell's faces and a rounding error outside it."""
    positions = [[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 3.0], [3.0, 3.0, 0.0], [6.0, 1.5, 0.0],
                 [-1e-15, 4.5, 1.5], [6.0, 6.0, 6.0 - 1e-15], [1.5, -6.0, 3.0]]
    atoms = Atoms("C8", positions=positions, cell=np.diag([6.0, 6.0, 6.0]), pbc=True)
    edge_index, shifts, _ = _search([atoms], 2.5, device)
    assert set(_pairs(edge_index, shifts)) == _ase_pairs([atoms], 2.5)


def test_float32_matches_float64_up_to_pairs_at_the_cutoff(device: str) -> None:
    structures = [_rattled(bulk("Cu", "fcc", a=3.61, cubic=True), 8), molecule("CH3CH2OH")]
    cutoff = 3.1
    got32 = set(_pairs(*_search(structures, cutoff, device, torch.float32)[:2]))
    got64 = set(_pairs(*_search(structures, cutoff, device, torch.float64)[:2]))
    positions, batch, cell, _ = _inputs(structures)
    for i, j, s in got32 ^ got64:
        r = positions[j] - positions[i] + torch.tensor(s, dtype=torch.float64) @ cell[batch[i]]
        assert abs(float(r.norm()) - cutoff) < 1e-4
    assert len(got64) > 0


def test_output_is_deterministic(device: str) -> None:
    structures = [molecule("C6H6"), _rattled(bulk("Cu", "fcc", a=3.61, cubic=True), 9)]
    inputs = [t.to(device) for t in _inputs(structures)]
    first = neighbor_list(inputs[0], 3.0, *inputs[1:], backend="triton")
    second = neighbor_list(inputs[0], 3.0, *inputs[1:], backend="triton")
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_inputs(device: str) -> None:
    for n_atoms, n_structures in ((0, 1), (0, 3)):
        edge_index, shifts, distances = neighbor_list(
            torch.zeros((n_atoms, 3), device=device), 3.0, torch.zeros(n_atoms, dtype=torch.long, device=device),
            torch.zeros((n_structures, 3, 3), device=device),
            torch.zeros((n_structures, 3), dtype=torch.bool, device=device), backend="triton")
        assert edge_index.shape == (2, 0) and shifts.shape == (0, 3) and distances.shape == (0,)


@pytest.mark.filterwarnings("ignore:(divide by zero|invalid value):RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("batch, cell, pbc, message", [
    ([1, 1, 0], np.zeros((2, 3, 3)), [[False] * 3] * 2, "sorted"),                  # unsorted
    ([0, 0, 2], np.zeros((2, 3, 3)), [[False] * 3] * 2, "sorted"),                  # beyond the cells
    ([0, 0, 0], np.zeros((1, 3, 3)), [[True, False, False]], "lattice vector"),     # singular periodic cell
    ([0, 0, 0], np.array([[[2.0, 0, 0], [4.0, 0, 0], [0, 0, 3.0]]]), [[True] * 3], "lattice vector"),
])
def test_bad_inputs_are_rejected(device: str, batch, cell, pbc, message: str) -> None:
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, device=device)
    with pytest.raises(ValueError, match=message):
        neighbor_list(positions, 2.0, torch.tensor(batch, device=device), torch.tensor(cell, device=device),
                      torch.tensor(pbc, device=device), backend="triton")


@pytest.mark.parametrize("capability", [80, 90])
def test_kernels_compile_for_cuda_gpus(capability: int) -> None:
    """Ahead-of-time compilation to cubin (A100: 80, H100: 90) with Triton's bundled ptxas: no GPU needed."""
    if _triton.import_error() is not None:
        pytest.skip("triton not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # compile, not interpret
    script = ("from mftcalc.kernels._triton import compile_for\n"
              f"for dtype in ('fp32', 'fp64'):\n"
              f"    for name, kernel in compile_for({capability}, dtype).items():\n"
              f"        assert 'sm_{capability}' in kernel.asm['ptx'], name\n"
              f"        print(name, dtype, len(kernel.asm['cubin']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = [line.split() for line in done.stdout.splitlines()]
    assert len(sizes) == 8 and all(int(size) > 1000 for _, _, size in sizes)
