"""Sums over sorted segments and gathers by sorted indices, with backward passes of any order.

Edges are sorted by centre atom and angles by their first edge, so a sum "onto the centre" is a segment sum
(``torch.segment_reduce``, ~9x faster on CPU than ``index_add_``), and the backward of a gather by a sorted
index is again a segment sum. The two autograd functions below are each other's derivative (both are linear),
so force training's double backward works. TorchScript cannot script autograd functions: scripted models take
the ``index_add_``/``index_select`` path, which gives the same values.
"""
from __future__ import annotations

import torch
from torch import Tensor


class _SegmentSum(torch.autograd.Function):
    """out[s] = Σ_{t in segment s} x[t]; ``index`` [T] (segment of each row, sorted), ``lengths`` [S]."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, lengths: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index, lengths)
        if x.shape[0] == 0:
            return x.new_zeros((lengths.shape[0],) + tuple(x.shape[1:]))
        return torch.segment_reduce(x, "sum", lengths=lengths, axis=0, unsafe=True)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        index, lengths = ctx.saved_tensors
        return _Gather.apply(grad, index, lengths), None, None


class _Gather(torch.autograd.Function):
    """out[t] = src[index[t]] for a sorted ``index`` whose segment lengths are ``lengths``."""

    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor, lengths: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(index, lengths)
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        index, lengths = ctx.saved_tensors
        return _SegmentSum.apply(grad, index, lengths), None, None


@torch.jit.unused
def _segment_sum_eager(x: Tensor, index: Tensor, lengths: Tensor) -> Tensor:
    return _SegmentSum.apply(x, index, lengths)


@torch.jit.unused
def _gather_eager(src: Tensor, index: Tensor, lengths: Tensor) -> Tensor:
    return _Gather.apply(src, index, lengths)


def segment_sum(x: Tensor, index: Tensor, lengths: Tensor) -> Tensor:
    """[T, ...] rows summed into [S, ...] segments; ``index`` [T] sorted, ``lengths`` [S] its bincount."""
    if torch.jit.is_scripting():
        out = torch.zeros((lengths.shape[0],) + x.shape[1:], dtype=x.dtype, device=x.device)
        return out.index_add_(0, index, x)
    return _segment_sum_eager(x, index, lengths)


def sorted_gather(src: Tensor, index: Tensor, lengths: Tensor) -> Tensor:
    """``src[index]`` for a sorted ``index`` (``lengths`` [len(src)] = bincount of index)."""
    if torch.jit.is_scripting():
        return src.index_select(0, index)
    return _gather_eager(src, index, lengths)


class _Involution(torch.autograd.Function):
    """out = x[perm] for a permutation that is its own inverse (so the backward is the same gather)."""

    @staticmethod
    def forward(ctx, x: Tensor, perm: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(perm)
        return x.index_select(0, perm)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (perm,) = ctx.saved_tensors
        return _Involution.apply(grad, perm), None


@torch.jit.unused
def _transposed_gather_eager(src: Tensor, index: Tensor, lengths: Tensor, transpose: Tensor) -> Tensor:
    return _Involution.apply(_Gather.apply(src, index, lengths), transpose)


def transposed_gather(src: Tensor, other: Tensor, index: Tensor, lengths: Tensor, transpose: Tensor) -> Tensor:
    """``src[other]`` where ``other = index[transpose]``, ``index`` sorted and ``transpose`` an involution.

    Angles (p, q) have ``a_ik = a_ij[a_transpose]``: gathering the second edge this way keeps every backward a
    segment sum or a permutation, never a scatter with collisions.
    """
    if torch.jit.is_scripting():
        return src.index_select(0, other)
    return _transposed_gather_eager(src, index, lengths, transpose)
