"""Tests of the fused angle-block op against the plain-torch reference: values, first and second derivatives."""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple

import pytest
import torch

from mftcalc.model.graph import angle_index
from torch import Tensor

from mftcalc.kernels.angle import (AngleBlock, angle_backend_in_use, angle_block, angle_block_fused,
                                   angle_block_reference, load_library, silut)
from mftcalc.model.layers import SiLUT

THRESHOLD = 0.5  # low, so that many z fall above it and both SiLUT branches are exercised
E_DIM = 3
A_DIM = 2
Case = Tuple[List[Tensor], Tensor, Tensor]


@pytest.fixture(scope="module")
def fused() -> None:
    """Builds (first run) and loads the op library once; skips the fused tests if it cannot be built."""
    try:
        load_library()
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=["auto", "default"])
def isa(request, monkeypatch, fused) -> str:
    """Runs a test with the run-time chosen loops (AVX2 where available) and with the portable loops."""
    monkeypatch.setenv("MFTCALC_ANGLE_ISA", request.param)
    return request.param


def block_angles(m: Tensor) -> Tuple[Tensor, Tensor]:
    """Angle lists of centres with m[k] angle-edges each (all m[k]² ordered pairs, a_ij sorted), built by the
    model's own :func:`mftcalc.model.graph.angle_index`; ``a_ij``, ``a_ik`` [A] index the Σm angle-edges."""
    a_centre = torch.repeat_interleave(torch.arange(m.shape[0]), m)                 # [Ea]
    a_ij, a_ik, _, _ = angle_index(a_centre, int(m.shape[0]))
    return a_ij, a_ik


def make_case(ms: Sequence[int], dtype: torch.dtype = torch.float64, a: int = A_DIM, e: int = E_DIM,
              seed: int = 0, edge_order: Optional[Tensor] = None) -> Case:
    """Random valid inputs: centre k has ms[k] angle-edges and all ms[k]² ordered pairs of them as angles.

    ``edge_order`` (a permutation of the angle-edges) relabels the edges so that a centre's edges need not be
    contiguous; the angles are then re-sorted by a_ij as the op requires.
    """
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor(list(ms), dtype=torch.long)
    a_ij, a_ik = block_angles(m)
    if edge_order is not None:
        a_ij, a_ik = edge_order[a_ij], edge_order[a_ik]
        order = torch.argsort(a_ij, stable=True)
        a_ij, a_ik = a_ij[order], a_ik[order]
    n_angles, n_edges, c = a_ij.shape[0], int(m.sum()), e + a

    def rnd(*shape: int, scale: float = 1.0) -> Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    floats = [rnd(n_angles, a), rnd(n_edges, c, scale=0.8), rnd(n_edges, c, scale=0.8), rnd(a, c, scale=0.7),
              rnd(c, scale=0.3), torch.rand(n_angles, generator=g, dtype=torch.float64).to(dtype), rnd(a)]
    return floats, a_ij, a_ik


SMALL_CASES = {
    "mixed": [2, 0, 1, 3, 4, 0, 2],
    "single_edges": [1, 1, 1],
    "empty": [],
    "one_big_centre": [7],
}


def run(backend: str, floats: Sequence[Tensor], a_ij: Tensor, a_ik: Tensor) -> Tuple[Tensor, Tensor]:
    """One backend on the 7 float inputs (e_dim = c − a from the weight's shape)."""
    fn = angle_block_fused if backend == "fused" else angle_block_reference
    return fn(*floats, a_ij, a_ik, floats[3].shape[1] - floats[0].shape[1], THRESHOLD)


def derivatives(backend: str, case: Case) -> List[Tensor]:
    """Outputs, first derivatives (create_graph) and second derivatives w.r.t. inputs and output cotangents."""
    floats, a_ij, a_ik = case
    g = torch.Generator().manual_seed(7)
    inputs = [t.detach().clone().requires_grad_() for t in floats]
    red, angle_new = run(backend, inputs, a_ij, a_ik)
    v = [torch.randn(red.shape, generator=g, dtype=torch.float64).to(red.dtype).requires_grad_(),
         torch.randn(angle_new.shape, generator=g, dtype=torch.float64).to(red.dtype).requires_grad_()]
    first = torch.autograd.grad((red, angle_new), inputs, v, create_graph=True)
    u = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) for t in first]
    second = torch.autograd.grad(first, inputs + v, u)
    return [red, angle_new] + list(first) + list(second)


def test_silut_matches_model_activation() -> None:
    z = torch.linspace(-12, 14, 301, dtype=torch.float64)
    for threshold in (0.5, 10.0):
        torch.testing.assert_close(silut(z, threshold), SiLUT(threshold)(z))


def test_cases_exercise_both_activation_branches() -> None:
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    angle, p_ij, p_ik, w, b = floats[:5]
    z = angle @ w + b + p_ij[a_ij] + p_ik[a_ik]
    assert (z > THRESHOLD).sum() > 5 and (z <= THRESHOLD).sum() > 5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(SMALL_CASES))
def test_fused_matches_reference(isa, name, dtype) -> None:
    case = make_case(SMALL_CASES[name], dtype=dtype)
    ref, fus = derivatives("reference", case), derivatives("fused", case)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for k, (r, f) in enumerate(zip(ref, fus)):
        torch.testing.assert_close(f, r, **tol, msg=lambda m: f"output {k}: {m}")


@pytest.mark.parametrize("name", ["mixed", "single_edges", "empty"])
def test_gradcheck_and_gradgradcheck(isa, name) -> None:
    floats, a_ij, a_ik = make_case(SMALL_CASES[name])
    inputs = tuple(t.clone().requires_grad_() for t in floats)

    def fn(*xs: Tensor) -> Tuple[Tensor, Tensor]:
        return angle_block_fused(*xs, a_ij, a_ik, E_DIM, THRESHOLD)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_interleaved_centre_blocks(fused) -> None:
    """Edges of one centre need not be contiguous: the op merges overlapping blocks into one work chunk."""
    ms = [3, 2, 4, 1]
    order = torch.randperm(sum(ms), generator=torch.Generator().manual_seed(3))
    case = make_case(ms, edge_order=order)
    for r, f in zip(derivatives("reference", case), derivatives("fused", case)):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)
    floats, a_ij, a_ik = case
    assert torch.autograd.gradgradcheck(lambda *xs: angle_block_fused(*xs, a_ij, a_ik, E_DIM, THRESHOLD),
                                        tuple(t.clone().requires_grad_() for t in floats))


def test_parallel_path_matches_reference_and_is_deterministic(fused) -> None:
    """Large enough for the OpenMP team (>= 4096 angles), with realistic widths (a = 16, e_dim = 32)."""
    ms = torch.randint(3, 9, (250,), generator=torch.Generator().manual_seed(5)).tolist()
    floats, a_ij, a_ik = make_case(ms, dtype=torch.float64, a=16, e=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = angle_block_reference(*floats, a_ij, a_ik, 32, THRESHOLD)
        fus = [angle_block_fused(*floats, a_ij, a_ik, 32, THRESHOLD) for _ in range(2)]
        inputs = [t.clone().requires_grad_() for t in floats]
        grads = [torch.autograd.grad(sum(o.sum() for o in angle_block_fused(*inputs, a_ij, a_ik, 32, THRESHOLD)),
                                     inputs) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    assert a_ij.shape[0] >= 4096
    for r, f in zip(ref, fus[0]):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)
    for x, y in zip(fus[0] + grads[0], fus[1] + grads[1]):
        assert torch.equal(x, y)


def test_single_output_used_and_transposed_weight(fused) -> None:
    """With one output unused, a_sw or res get no gradient (as in the reference); w may be ``Linear.weight.t()``."""
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    linear_weight = floats[3].t().contiguous().requires_grad_()          # [c, a] like nn.Linear.weight
    angle, p_ij, p_ik, _, b, a_sw, res = [t.clone().requires_grad_() for t in floats]
    inputs = [angle, p_ij, p_ik, linear_weight, b, a_sw, res]
    grads = {}
    for backend, fn in (("reference", angle_block_reference), ("fused", angle_block_fused)):
        red, _ = fn(angle, p_ij, p_ik, linear_weight.t(), b, a_sw, res, a_ij, a_ik, E_DIM, THRESHOLD)
        first = torch.autograd.grad(red.pow(2).sum(), [angle, a_sw, linear_weight], create_graph=True)
        assert torch.autograd.grad(sum(g.sum() for g in first), [res], allow_unused=True,
                                   retain_graph=True) == (None,)
        grads[backend] = list(first) + list(torch.autograd.grad(sum(g.sum() for g in first), inputs,
                                                                 materialize_grads=True))
    for r, f in zip(grads["reference"], grads["fused"]):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)
    for fn in (angle_block_reference, angle_block_fused):
        red, angle_new = fn(*inputs[:3], linear_weight.t(), *inputs[4:], a_ij, a_ik, E_DIM, THRESHOLD)
        assert torch.autograd.grad(red.sum(), [res], allow_unused=True, retain_graph=True) == (None,)
        assert torch.autograd.grad(angle_new.sum(), [a_sw], allow_unused=True) == (None,)


def test_third_derivative_raises(fused) -> None:
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    inputs = [t.clone().requires_grad_() for t in floats]
    red, _ = angle_block_fused(*inputs, a_ij, a_ik, E_DIM, THRESHOLD)
    (g,) = torch.autograd.grad(red.sum(), [inputs[0]], create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), [inputs[1]], create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives"):
        gg.sum().backward()


def test_invalid_inputs_raise_clear_errors(fused) -> None:
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    with pytest.raises(RuntimeError, match="sorted ascending"):
        angle_block_fused(*floats, a_ij.flip(0), a_ik, E_DIM, THRESHOLD)
    with pytest.raises(RuntimeError, match="out of range"):
        angle_block_fused(*floats, a_ij, a_ik + 100, E_DIM, THRESHOLD)
    with pytest.raises(RuntimeError, match="p_ij must have shape"):
        angle_block_fused(*floats, a_ij, a_ik, E_DIM + 1, THRESHOLD)
    with pytest.raises(RuntimeError, match="dtype"):
        angle_block_fused(*floats[:6], floats[6].float(), a_ij, a_ik, E_DIM, THRESHOLD)


def test_backend_choice_and_logging(fused, caplog) -> None:
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    with caplog.at_level(logging.INFO, logger="mftcalc.kernels.angle.dispatch"):
        ref = angle_block(*floats, a_ij, a_ik, E_DIM, THRESHOLD, backend="reference")
        assert angle_backend_in_use() == "reference"
        out = angle_block(*floats, a_ij, a_ik, E_DIM, THRESHOLD)
        assert angle_backend_in_use() == "fused"
    assert "angle block backend: fused" in caplog.text
    for r, f in zip(ref, out):
        torch.testing.assert_close(f, r)
    with pytest.raises(ValueError, match="unknown angle-block backend"):
        angle_block(*floats, a_ij, a_ik, E_DIM, THRESHOLD, backend="cuda")
    with pytest.raises(ValueError, match="float32/float64 CPU"):
        angle_block(*[t.to(torch.bfloat16) for t in floats], a_ij, a_ik, E_DIM, THRESHOLD, backend="fused")
    half = angle_block(*[t.to(torch.bfloat16) for t in floats], a_ij, a_ik, E_DIM, THRESHOLD)
    assert angle_backend_in_use() == "reference" and half[0].dtype == torch.bfloat16


class _AngleModule(torch.nn.Module):
    """A minimal layer that calls the fused op (as RepFlowLayer would), for the TorchScript tests."""

    def __init__(self, a: int, e: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(a, e + a).double()
        self.res = torch.nn.Parameter(torch.full((a,), 0.4, dtype=torch.float64))
        self.e_dim = e
        self.threshold = THRESHOLD

    def forward(self, angle: Tensor, p_ij: Tensor, p_ik: Tensor, a_sw: Tensor, a_ij: Tensor,
                a_ik: Tensor) -> Tuple[Tensor, Tensor]:
        return angle_block_fused(angle, p_ij, p_ik, self.linear.weight.t(), self.linear.bias, a_sw, self.res, a_ij,
                                 a_ik, self.e_dim, self.threshold)


def test_torchscript_script_save_load(fused, tmp_path) -> None:
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    module = _AngleModule(A_DIM, E_DIM)
    scripted = torch.jit.script(module)
    path = tmp_path / "angle.pt"
    scripted.save(str(path))
    load_library()  # what a calculator does before torch.jit.load
    loaded = torch.jit.load(str(path))
    args = (floats[0], floats[1], floats[2], floats[5], a_ij, a_ik)
    expected = module(*args)
    for got in (scripted(*args), loaded(*args)):
        for x, y in zip(got, expected):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    # forces-style double backward through the loaded module
    p_ij = floats[1].clone().requires_grad_()
    red, angle_new = loaded(floats[0], p_ij, floats[2], floats[5], a_ij, a_ik)
    (g,) = torch.autograd.grad(red.sum() + angle_new.sum(), [p_ij], create_graph=True)
    g.pow(2).sum().backward()
    assert loaded.linear.weight.grad is not None and torch.isfinite(loaded.linear.weight.grad).all()


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_angle_block_module_scripts_with_fixed_backend(fused, backend, tmp_path) -> None:
    """AngleBlock resolves its backend once; only the fused one puts the op into the TorchScript code."""
    floats, a_ij, a_ik = make_case(SMALL_CASES["mixed"])
    block = AngleBlock(E_DIM, THRESHOLD, backend)
    assert block.fused == (backend == "fused") and angle_backend_in_use() == backend
    scripted = torch.jit.script(block)
    assert ("angle_block_fused" in scripted.code) == (backend == "fused")
    torch.jit.save(scripted, str(tmp_path / "block.pt"))
    loaded = torch.jit.load(str(tmp_path / "block.pt"))
    expected = angle_block_reference(*floats, a_ij, a_ik, E_DIM, THRESHOLD)
    for module in (block, loaded):
        for got, want in zip(module(*floats, a_ij, a_ik), expected):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_builds_run_the_packaged_ninja_whatever_path_says(monkeypatch, tmp_path):
    """Two ninja versions rebuild each other's work from scratch: every build puts the ninja package's binary
    first on PATH, and PATH is restored afterwards."""
    import os
    ninja = pytest.importorskip("ninja")
    from mftcalc.kernels.build_tools import packaged_ninja
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/usr/bin")
    with packaged_ninja():
        assert os.environ["PATH"].split(os.pathsep)[0] == str(ninja.BIN_DIR)
    assert os.environ["PATH"] == f"{tmp_path}{os.pathsep}/usr/bin"
