"""Backend choice of the neighbour search ('auto', 'torch', 'cpp'): resolved, logged, never silent."""
import logging
from typing import Set, Tuple

import torch

from . import _cpp

BACKENDS = ("auto", "torch", "cpp")
_LOG = logging.getLogger("mftcalc.kernels")
_logged: Set[Tuple[str, str, str]] = set()


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ('torch' or 'cpp') for tensors on ``device``.

    'auto' is the C++ kernel on CPU when it builds (compiled on first use), else pure torch; on
    other devices it is pure torch. An explicit 'cpp' raises RuntimeError where the kernel is
    unavailable (not built, or non-CPU tensors) instead of falling back. The choice is logged at
    INFO once per (requested backend, device type).
    """
    if backend not in BACKENDS:
        raise ValueError(f"neighbor_list: backend must be one of {BACKENDS}, got {backend!r}")
    reason = ""
    if backend == "torch":
        chosen = "torch"
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
