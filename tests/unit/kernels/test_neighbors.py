"""Tests of mftcalc.kernels.neighbor_list against ASE on seeded random structures and edge cases."""
import logging
import shutil
import subprocess
import sys
from typing import List, Set, Tuple

import numpy as np
import pytest
import torch

from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

import mftcalc.kernels._backend as backend_module
from mftcalc.kernels import NeighborList, neighbor_list
from mftcalc.kernels import _cpp

Pair = Tuple[int, int, Tuple[int, int, int]]
N_RANDOM = 240
BACKENDS = ["torch", "cpp"]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.(script|save)` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    """Each backend; 'cpp' builds the C++ kernel on first use (needs a C++ compiler)."""
    if request.param == "cpp" and not _cpp.available():
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip(f"no C++ compiler: {_cpp.error()}")
        pytest.fail(f"C++ kernel failed to build: {_cpp.error()}")
    return request.param


def _random_cell(rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "small":  # thinner than the cutoff: many images per direction
        cell = np.diag(rng.uniform(0.8, 2.5, 3)) + rng.uniform(-0.6, 0.6, (3, 3))
    elif kind == "skewed":  # strongly sheared triclinic
        length = rng.uniform(3.0, 8.0)
        cell = np.array([[length, 0.0, 0.0], [rng.uniform(2.0, 4.0) * length, rng.uniform(0.3, 1.0) * length, 0.0],
                         [rng.uniform(-3.0, 3.0) * length, rng.uniform(-3.0, 3.0) * length, rng.uniform(0.4, 1.0) * length]])
    else:  # ordinary triclinic
        cell = np.diag(rng.uniform(3.0, 9.0, 3)) + rng.uniform(-1.5, 1.5, (3, 3))
    return cell[rng.permutation(3)] if rng.random() < 0.3 else cell


def _random_structure(rng: np.random.Generator, index: int) -> Atoms:
    """Cycles through every case the search must handle; positions are never wrapped."""
    kind = ["molecule", "molecule_cell", "crystal", "skewed", "small", "slab", "wire", "one_atom", "sparse"][index % 9]
    n_atoms = int(rng.integers(2, 30))
    if kind in ("molecule", "molecule_cell", "sparse"):
        spread = 25.0 if kind == "sparse" else rng.uniform(2.0, 12.0)
        positions = rng.uniform(-spread, spread, (n_atoms, 3)) + rng.uniform(-50, 50, 3)
        cell = np.zeros((3, 3)) if kind != "molecule_cell" else _random_cell(rng, "crystal")
        return Atoms(positions=positions, cell=cell, pbc=False)
    cell = _random_cell(rng, {"skewed": "skewed", "small": "small"}.get(kind, "crystal"))
    if kind in ("small", "skewed"):  # many pairs per atom: keep ASE's reference fast
        n_atoms = int(rng.integers(1, 4 if kind == "small" else 8))
    if kind == "one_atom":
        n_atoms = 1
    pbc = np.ones(3, dtype=bool)
    if kind == "slab":
        pbc[rng.integers(3)] = False
    elif kind == "wire":
        pbc[:] = False
        pbc[rng.integers(3)] = True
    elif kind == "one_atom":
        pbc = rng.random(3) < 0.7
    frac = rng.uniform(0.0, 1.0, (n_atoms, 3)) + rng.integers(-3, 4, (n_atoms, 3))  # outside the cell
    positions = frac @ cell
    if not pbc.all():
        cell[~pbc] *= rng.integers(0, 2)  # non-periodic vectors: kept or all zero
    return Atoms(positions=positions, cell=cell, pbc=pbc)


def _cutoff(rng: np.random.Generator, index: int) -> float:
    return 0.5 if index % 9 == 8 else float(rng.uniform(2.0, 6.0))  # 'sparse' cases: few or no pairs


def _ase_pairs(atoms: Atoms, cutoff: float) -> Set[Pair]:
    i, j, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))


@pytest.fixture(scope="module")
def cases() -> List[Tuple[Atoms, float, Set[Pair]]]:
    """Seeded random structures with their cutoff and ASE's pair set."""
    rng = np.random.default_rng(20240611)
    structures = [(_random_structure(rng, k), _cutoff(rng, k)) for k in range(N_RANDOM)]
    return [(atoms, cutoff, _ase_pairs(atoms, cutoff)) for atoms, cutoff in structures]


def _as_tensors(atoms: Atoms, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(atoms.positions, dtype=dtype), torch.tensor(np.asarray(atoms.cell), dtype=dtype)[None],
            torch.tensor(atoms.pbc)[None])


def _pairs(edge_index: torch.Tensor, shifts: torch.Tensor) -> List[Pair]:
    return list(zip(edge_index[0].tolist(), edge_index[1].tolist(), map(tuple, shifts.long().tolist())))


def _batch(structures: List[Atoms], dtype: torch.dtype):
    positions = torch.tensor(np.concatenate([a.positions for a in structures]), dtype=dtype)
    batch = torch.cat([torch.full((len(a),), k, dtype=torch.long) for k, a in enumerate(structures)])
    cell = torch.tensor(np.stack([np.asarray(a.cell) for a in structures]), dtype=dtype)
    pbc = torch.tensor(np.stack([a.pbc for a in structures]))
    return positions, batch, cell, pbc


def _assert_well_formed(positions, batch, cell, edge_index, shifts, distances) -> None:
    assert edge_index.dtype == torch.long and edge_index.shape == (2, shifts.shape[0])
    assert shifts.dtype == positions.dtype and distances.dtype == positions.dtype
    i, j = edge_index
    assert bool((i[1:] >= i[:-1]).all()), "pair list must be sorted by centre atom"
    assert bool((batch[i] == batch[j]).all())
    vectors = positions[j] - positions[i] + torch.einsum("ek,ekl->el", shifts, cell[batch[i]])
    # float32: unwrapped coordinates of ~100 Å with large shifts carry ~1e-5 Å rounding
    tolerance = 1e-4 if positions.dtype == torch.float32 else 1e-9
    torch.testing.assert_close(vectors.norm(dim=1), distances, atol=tolerance, rtol=0.0)


def test_random_structures_match_ase(cases, backend: str) -> None:
    for atoms, cutoff, expected in cases:
        positions, cell, pbc = _as_tensors(atoms, torch.float64)
        edge_index, shifts, distances = neighbor_list(positions, cutoff, None, cell, pbc, backend)
        got = _pairs(edge_index, shifts)
        assert len(got) == len(set(got)), "duplicate pairs"
        assert set(got) == expected, f"mismatch for {atoms} cutoff {cutoff}"
        _assert_well_formed(positions, torch.zeros(len(atoms), dtype=torch.long), cell, edge_index, shifts, distances)


def test_batch_equals_concatenated_structures(cases, backend: str) -> None:
    for start in range(0, 120, 40):  # each batch mixes molecules, crystals, slabs and tiny cells
        structures = [a for a, _, _ in cases[start:start + 40]]
        cutoff = 4.0
        positions, batch, cell, pbc = _batch(structures, torch.float64)
        edge_index, shifts, distances = neighbor_list(positions, cutoff, batch, cell, pbc, backend)
        _assert_well_formed(positions, batch, cell, edge_index, shifts, distances)
        expected: List[Pair] = []
        offset = 0
        for atoms in structures:
            one_positions, one_cell, one_pbc = _as_tensors(atoms, torch.float64)
            ei, sh, _ = neighbor_list(one_positions, cutoff, None, one_cell, one_pbc, backend)
            expected += [(i + offset, j + offset, s) for i, j, s in _pairs(ei, sh)]
            offset += len(atoms)
        assert sorted(_pairs(edge_index, shifts)) == sorted(expected)


def test_molecule_batches_match_ase(cases, backend: str) -> None:
    """Non-periodic batches take the all-pairs search (small molecules) or the cell list (large)."""
    molecules = [atoms for atoms, _, _ in cases if not atoms.pbc.any()]
    big = Atoms(positions=np.random.default_rng(7).uniform(0.0, 30.0, (400, 3)))  # > all-pairs size limit
    for structures in (molecules, molecules + [big]):
        positions, batch, cell, pbc = _batch(structures, torch.float64)
        edge_index, shifts, distances = neighbor_list(positions, 3.5, batch, cell, pbc, backend)
        _assert_well_formed(positions, batch, cell, edge_index, shifts, distances)
        expected: Set[Pair] = set()
        offset = 0
        for atoms in structures:
            expected |= {(i + offset, j + offset, s) for i, j, s in _ase_pairs(atoms, 3.5)}
            offset += len(atoms)
        assert set(_pairs(edge_index, shifts)) == expected


def test_multi_bin_grids_match_ase(backend: str) -> None:
    """Supercells spanning several bins per direction: wrapping across bin rows and cell faces."""
    rng = np.random.default_rng(3)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    frac = ((grid + base).reshape(-1, 3) / 5 + rng.normal(0, 0.01, (500, 3))) @ np.eye(3)
    sheared = np.array([[18.0, 0.0, 0.0], [5.0, 17.0, 0.0], [-4.0, 3.0, 16.0]])
    for pbc in ([True, True, True], [True, True, False], [False, True, False]):
        frac_out = frac + rng.integers(-2, 3, frac.shape)  # unwrapped input
        atoms = Atoms(positions=frac_out @ sheared, cell=sheared, pbc=pbc)
        positions, cell, pbc_t = _as_tensors(atoms, torch.float64)
        edge_index, shifts, distances = neighbor_list(positions, 4.7, None, cell, pbc_t, backend)
        _assert_well_formed(positions, torch.zeros(len(atoms), dtype=torch.long), cell, edge_index, shifts, distances)
        assert set(_pairs(edge_index, shifts)) == _ase_pairs(atoms, 4.7)


def test_float32_matches_float64(cases, backend: str) -> None:
    structures = [a for a, _, _ in cases[:90]]
    cutoff = 4.0
    results = {}
    for dtype in (torch.float32, torch.float64):
        positions, batch, cell, pbc = _batch(structures, dtype)
        edge_index, shifts, distances = neighbor_list(positions, cutoff, batch, cell, pbc, backend)
        _assert_well_formed(positions, batch, cell, edge_index, shifts, distances)
        results[dtype] = (set(_pairs(edge_index, shifts)), distances)
    pairs32, pairs64 = results[torch.float32][0], results[torch.float64][0]
    positions, batch, cell, _ = _batch(structures, torch.float64)
    for i, j, s in pairs32 ^ pairs64:  # only pairs at the cutoff up to float32 rounding may differ
        r = positions[j] - positions[i] + torch.tensor(s, dtype=torch.float64) @ cell[batch[i]]
        assert abs(float(r.norm()) - cutoff) < 1e-4


def test_scripted_equals_eager(cases, backend: str) -> None:
    scripted = torch.jit.script(NeighborList(4.5, backend))
    eager = NeighborList(4.5, backend)
    for dtype in (torch.float32, torch.float64):
        inputs = _batch([a for a, _, _ in cases[100:140]], dtype)
        for got, want in zip(scripted(*inputs), eager(*inputs)):
            assert torch.equal(got, want)


def test_backends_agree(cases, backend: str) -> None:
    inputs = _batch([a for a, _, _ in cases[:120]], torch.float64)
    edge_index, shifts, distances = neighbor_list(*inputs[:1], 5.0, *inputs[1:], backend=backend)
    ref_index, ref_shifts, ref_distances = neighbor_list(*inputs[:1], 5.0, *inputs[1:], backend="torch")
    assert sorted(_pairs(edge_index, shifts)) == sorted(_pairs(ref_index, ref_shifts))
    torch.testing.assert_close(distances.sort().values, ref_distances.sort().values)


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="backend"):
        neighbor_list(torch.zeros((2, 3)), 3.0, backend="fortran")


def test_unavailable_cpp_backend_raises_and_auto_logs_torch(monkeypatch, caplog) -> None:
    monkeypatch.setattr(_cpp, "available", lambda: False)
    monkeypatch.setattr(_cpp, "error", lambda: "no compiler")
    monkeypatch.setattr(backend_module, "_logged", set())
    with pytest.raises(RuntimeError, match="no compiler"):
        neighbor_list(torch.zeros((2, 3)), 3.0, backend="cpp")
    with caplog.at_level(logging.INFO, logger="mftcalc.kernels"):
        neighbor_list(torch.zeros((2, 3)), 3.0, backend="auto")
    assert "uses torch (C++ kernel unavailable: no compiler)" in caplog.text


def test_scripted_function_runs_pure_torch() -> None:
    scripted = torch.jit.script(neighbor_list)
    assert scripted(torch.zeros((2, 3)), 3.0)[0].shape == (2, 2)
    with pytest.raises(Exception, match="NeighborList"):
        scripted(torch.zeros((2, 3)), 3.0, backend="cpp")


def test_scripted_torch_module_loads_with_plain_torch(tmp_path) -> None:
    """A scripted model calling neighbor_list must load where mftcalc is not importable."""
    path = tmp_path / "neighbors.pt"
    torch.jit.save(torch.jit.script(NeighborList(3.0, "torch")), str(path))
    code = ("import sys, torch; sys.modules['mftcalc'] = None; m = torch.jit.load(sys.argv[1]); "
            "print(m(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))[0].tolist())")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[0, 1], [1, 0]]"


def test_default_arguments_mean_one_molecule() -> None:
    positions = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    edge_index, shifts, distances = neighbor_list(positions, 1.5)
    assert edge_index.tolist() == [[0, 1], [1, 0]]
    assert shifts.tolist() == [[0.0] * 3] * 2
    torch.testing.assert_close(distances, torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("n_atoms", [0, 1])
def test_empty_and_single_atom_molecules(n_atoms: int) -> None:
    edge_index, shifts, distances = neighbor_list(torch.zeros((n_atoms, 3)), 5.0)
    assert edge_index.shape == (2, 0) and shifts.shape == (0, 3) and distances.shape == (0,)


def test_single_atom_periodic_self_images() -> None:
    cell = torch.eye(3, dtype=torch.float64)[None] * 2.1
    edge_index, shifts, distances = neighbor_list(torch.zeros((1, 3), dtype=torch.float64), 2.5, None, cell,
                                                  torch.tensor([[True, True, False]]))
    assert sorted(map(tuple, shifts.long().tolist())) == [(-1, 0, 0), (0, -1, 0), (0, 1, 0), (1, 0, 0)]
    assert bool((edge_index == 0).all())
    torch.testing.assert_close(distances, torch.full((4,), 2.1, dtype=torch.float64))


def test_structure_without_atoms_inside_batch() -> None:
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 5.0, 5.0], [5.5, 5.0, 5.0]])
    batch = torch.tensor([0, 0, 2, 2])  # structure 1 is empty
    edge_index, _, _ = neighbor_list(positions, 2.0, batch, torch.zeros((3, 3, 3)), torch.zeros((3, 3), dtype=torch.bool))
    assert edge_index.tolist() == [[0, 1, 2, 3], [1, 0, 3, 2]]


def test_singular_periodic_cell_is_rejected() -> None:
    with pytest.raises(ValueError, match="lattice vector"):
        neighbor_list(torch.zeros((2, 3)), 3.0, None, torch.zeros((1, 3, 3)), torch.tensor([[True, False, False]]))


def test_non_periodic_batches_match_torch_cluster(cases) -> None:
    torch_cluster = pytest.importorskip("torch_cluster")
    structures = [a for a, _, _ in cases if not a.pbc.any()][:40]
    positions, batch, cell, pbc = _batch(structures, torch.float64)
    edge_index, _, _ = neighbor_list(positions, 4.0, batch, cell, pbc)
    reference = torch_cluster.radius_graph(positions, 4.0, batch, loop=False, max_num_neighbors=10_000)
    assert set(map(tuple, reference.t().tolist())) == set(map(tuple, edge_index.t().tolist()))


@pytest.mark.parametrize("batch, cell, pbc", [
    (torch.tensor([1, 0]), torch.zeros((2, 3, 3)), torch.zeros((2, 3), dtype=torch.bool)),  # unsorted
    (torch.tensor([0, 1]), torch.zeros((1, 3, 3)), torch.zeros((1, 3), dtype=torch.bool)),  # batch beyond cell
    (torch.tensor([0, 0]), torch.zeros((1, 3, 3)), torch.zeros((2, 3), dtype=torch.bool)),  # pbc of another B
])
def test_inconsistent_inputs_are_rejected(batch, cell, pbc, backend: str) -> None:
    for run in (neighbor_list, torch.jit.script(neighbor_list)):
        with pytest.raises(Exception, match="neighbor_list"):
            run(torch.zeros((2, 3)), 3.0, batch, cell, pbc, backend)


def test_lattice_reduction_is_skipped_exactly_when_it_would_change_nothing() -> None:
    """``needs_reduction`` (the search's shortcut) agrees with what ``reduce_lattice`` does, cell by cell."""
    from mftcalc.kernels._lattice import needs_reduction, reduce_lattice
    rng = np.random.default_rng(7)
    cells = [np.diag(rng.uniform(2, 6, 3)) + rng.uniform(-s, s, (3, 3)) for s in (0.0, 0.5, 1.0, 3.0, 6.0)
             for _ in range(8)]
    cell = torch.tensor(np.stack(cells))
    for pbc_row in ([True, True, True], [True, True, False], [True, False, False]):
        pbc = torch.tensor([pbc_row] * len(cells))
        flags = needs_reduction(cell, pbc)
        reduced, transform = reduce_lattice(cell, pbc)
        changed = ~(transform == torch.eye(3, dtype=transform.dtype)).flatten(1).all(dim=1)
        assert torch.equal(flags, changed)
        assert 0 < int(flags.sum()) < len(cells) or pbc_row.count(True) < 2


# ---------------------------------------------------------------- Triton kernels (GPU path)
from mftcalc.kernels import _triton  # noqa: E402


def test_triton_matches_ase_on_random_cases(cases, triton_device: str) -> None:
    """All cases on CUDA; through the interpreter (each program runs in Python) one molecule, molecule in a cell,
    skewed cell, small cell, wire, lone atom and sparse cluster (crystals and slabs: test_triton_cells.py)."""
    chosen = range(len(cases)) if triton_device == "cuda" else (0, 1, 3, 4, 6, 7, 8)
    for atoms, cutoff, expected in (cases[k] for k in chosen):
        positions, cell, pbc = (t.to(triton_device) for t in _as_tensors(atoms, torch.float64))
        edge_index, shifts, distances = (t.cpu() for t in neighbor_list(positions, cutoff, None, cell, pbc, "triton"))
        assert set(_pairs(edge_index, shifts)) == expected, f"mismatch for {atoms} cutoff {cutoff}"
        _assert_well_formed(positions.cpu(), torch.zeros(len(atoms), dtype=torch.long), cell.cpu(), edge_index, shifts,
                            distances)


def test_triton_backend_is_chosen_on_cuda_and_refused_elsewhere(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    error = _triton.import_error()
    expected_cuda = "triton" if error is None else "torch"
    assert backend_module.resolve_backend("auto", torch.device("cuda")) == expected_cuda
    assert backend_module.resolve_backend("auto", torch.device("cpu")) in ("cpp", "torch")
    with pytest.raises(RuntimeError, match="backend 'triton' unavailable"):
        neighbor_list(torch.zeros((2, 3)), 3.0, backend="triton")
