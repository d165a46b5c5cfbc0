"""The fused angle-block operator of the repflow layer: reference, fused C++/OpenMP op and backend choice.

``AngleBlock`` (module, backend fixed at construction, scriptable) is what a model layer holds;
``angle_block(..., backend="auto")`` is the eager function; ``angle_block_fused`` and ``angle_block_reference`` are
the scriptable fixed-backend functions; ``load_library()`` must run before scripting or ``torch.jit.load`` of code
that uses ``torch.ops.mftcalc.angle_block``.
"""
from .dispatch import angle_backend_in_use, angle_block, choose_backend, resolve_backend
from .fused import angle_block_fused
from .library import build_error, fused_available, load_library
from .module import AngleBlock
from .reference import angle_block_reference, silut

__all__ = ["AngleBlock", "angle_block", "angle_block_fused", "angle_block_reference", "angle_backend_in_use",
           "build_error", "choose_backend", "fused_available", "load_library", "resolve_backend", "silut"]
