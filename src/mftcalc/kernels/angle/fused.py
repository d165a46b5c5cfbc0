"""TorchScript-scriptable call of the fused C++ op ``torch.ops.mftcalc.angle_block`` (CPU, float32/float64)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def angle_block_fused(angle: Tensor, p_ij: Tensor, p_ik: Tensor, w: Tensor, b: Tensor, a_sw: Tensor, res: Tensor,
                      a_ij: Tensor, a_ik: Tensor, e_dim: int, threshold: float) -> Tuple[Tensor, Tensor]:
    """Same arguments and results as :func:`~mftcalc.kernels.angle.reference.angle_block_reference`.

    Differentiable twice (third derivatives raise). Needs :func:`~mftcalc.kernels.angle.load_library` to have run
    in this process, also before ``torch.jit.script`` of code that calls it.
    """
    return torch.ops.mftcalc.angle_block(angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik, e_dim, threshold)
