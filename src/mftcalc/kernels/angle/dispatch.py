"""Backend choice of the angle block (``reference`` | ``fused`` | ``auto``) and the record of which one ran."""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
from torch import Tensor

from .fused import angle_block_fused
from .library import build_error, fused_available, load_library
from .reference import angle_block_reference

BACKENDS = ("auto", "fused", "reference")
_log = logging.getLogger(__name__)
_in_use: Optional[str] = None


def resolve_backend(backend: str, angle: Tensor) -> str:
    """The backend that ``angle_block`` runs for these features: ``fused`` or ``reference``.

    ``auto`` picks ``fused`` for float32/float64 CPU tensors when the library builds, else ``reference``.
    ``fused`` raises RuntimeError (with the build error) if the library cannot be built, ValueError for
    non-CPU or non-float32/64 tensors.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown angle-block backend {backend!r}; use one of {BACKENDS}")
    supported = angle.device.type == "cpu" and angle.dtype in (torch.float32, torch.float64)
    if backend == "fused":
        if not supported:
            raise ValueError(f"the fused angle block needs float32/float64 CPU tensors, got {angle.dtype} on "
                             f"{angle.device}; use backend='reference' or 'auto'")
        load_library()
        return "fused"
    if backend == "auto" and supported and fused_available():
        return "fused"
    return "reference"


def choose_backend(backend: str = "auto") -> str:
    """Backend for float32/float64 CPU features, decided once (e.g. when a model is built); logs the choice.

    Builds the library for ``auto``/``fused`` (first time). Raises like :func:`resolve_backend` for ``fused``.
    """
    cpu_features = torch.empty(0, dtype=torch.float32)
    use = resolve_backend(backend, cpu_features)
    _record(use, backend, cpu_features)
    return use


def angle_block(angle: Tensor, p_ij: Tensor, p_ik: Tensor, w: Tensor, b: Tensor, a_sw: Tensor, res: Tensor,
                a_ij: Tensor, a_ik: Tensor, e_dim: int, threshold: float,
                backend: str = "auto") -> Tuple[Tensor, Tensor]:
    """Angle block of a ``RepFlowLayer`` on the chosen backend (eager only; for TorchScript call
    :func:`angle_block_fused` or :func:`angle_block_reference` directly).

    Shapes and units as :func:`~mftcalc.kernels.angle.reference.angle_block_reference`: returns ``red`` [Ea, e_dim]
    and ``angle_new`` [A, a]. Both backends are differentiable twice (forces in the loss).
    """
    use = resolve_backend(backend, angle)
    _record(use, backend, angle)
    if use == "fused":
        return angle_block_fused(angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik, e_dim, threshold)
    return angle_block_reference(angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik, e_dim, threshold)


def angle_backend_in_use() -> Optional[str]:
    """``fused`` or ``reference``: the latest choice of :func:`angle_block` or :func:`choose_backend` (None before)."""
    return _in_use


def _record(use: str, backend: str, angle: Tensor) -> None:
    """Remembers the backend in use and logs it at INFO whenever it changes."""
    global _in_use
    if use != _in_use:
        reason = "" if use == "fused" or backend == "reference" else _fallback_reason(angle)
        _log.info("angle block backend: %s (requested %r)%s", use, backend, reason)
        _in_use = use


def _fallback_reason(angle: Tensor) -> str:
    if angle.device.type != "cpu" or angle.dtype not in (torch.float32, torch.float64):
        return f"; fused needs float32/float64 CPU tensors, got {angle.dtype} on {angle.device}"
    return f"; fused library unavailable: {build_error()}"
