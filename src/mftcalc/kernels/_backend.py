"""Backend choice of the neighbour search ('auto', 'torch', 'cpp', 'triton'): resolved, logged, never silent."""
import logging
from typing import Set, Tuple

import torch

from . import _cpp

BACKENDS = ("auto", "torch", "cpp", "triton")
_LOG = logging.getLogger("mftcalc.kernels")
_logged: Set[Tuple[str, str, str]] = set()


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ('torch', 'cpp' or 'triton') for tensors on ``device``.

    'auto' is the C++ kernel on CPU when it builds (compiled on first use), else pure torch; on
    CUDA it is the Triton kernels when ``triton`` imports, else pure torch; on other devices pure
    torch. An explicit 'cpp' or 'triton' raises RuntimeError where that kernel is unavailable
    (not built or not installed, or tensors on a device it does not serve) instead of falling
    back; 'triton' also accepts CPU tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter,
    for tests). The choice is logged at INFO once per (requested backend, device type).
    """
    if backend not in BACKENDS:
        raise ValueError(f"neighbor_list: backend must be one of {BACKENDS}, got {backend!r}")
    reason = ""
    if backend == "torch":
        chosen = "torch"
    elif backend == "triton" or (backend == "auto" and device.type == "cuda"):
        from ._triton import usable_on
        usable, why = usable_on(device)
        if usable:
            chosen = "triton"
        elif backend == "triton":
            raise RuntimeError(f"neighbor_list: backend 'triton' unavailable: {why}")
        else:
            chosen, reason = "torch", why
    elif device.type != "cpu":
        if backend == "cpp":
            raise RuntimeError(f"neighbor_list: backend 'cpp' runs on CPU tensors only, got {device}; use 'torch' or 'auto'")
        chosen, reason = "torch", f"no C++ kernel for {device.type}"
    elif _cpp.available():
        chosen = "cpp"
    elif backend == "cpp":
        raise RuntimeError(f"neighbor_list: backend 'cpp' requested but the C++ kernel could not be built: {_cpp.error()}")
    else:
        chosen, reason = "torch", f"C++ kernel unavailable: {_cpp.error()}"
    key = (backend, device.type, chosen)
    if key not in _logged:
        _logged.add(key)
        _LOG.info("neighbor_list: backend %r on %s uses %s%s", backend, device.type, chosen, f" ({reason})" if reason else "")
    return chosen
