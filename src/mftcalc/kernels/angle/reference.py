"""Plain-torch angle block: the semantics the fused C++ operator must reproduce (any device, any float dtype)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor


def silut_slope(threshold: float) -> float:
    """``silu'(T)``, the slope of the tanh continuation of SiLUT above the threshold ``T``."""
    sig = 1.0 / (1.0 + math.exp(-threshold))
    return sig + threshold * sig * (1.0 - sig)


def silut(z: Tensor, threshold: float) -> Tensor:
    """SiLUT activation ``silu(min(z, T)) + tanh(silu'(T) · relu(z − T))`` (as ``mftcalc.model.layers.SiLUT``)."""
    slope = silut_slope(threshold)
    return torch.nn.functional.silu(torch.clamp(z, max=threshold)) + torch.tanh(slope * torch.relu(z - threshold))


def angle_block_reference(angle: Tensor, p_ij: Tensor, p_ik: Tensor, w: Tensor, b: Tensor, a_sw: Tensor,
                          res: Tensor, a_ij: Tensor, a_ik: Tensor, e_dim: int,
                          threshold: float) -> Tuple[Tensor, Tensor]:
    """Angle update and angle-to-edge reduction of one ``RepFlowLayer``, in eager torch.

    Args:
        angle: [A, a] per-angle features.
        p_ij, p_ik: [Ea, c] per-angle-edge projections of the two edges of an angle (c = e_dim + a).
        w: [a, c] angle weight; b: [c] bias.
        a_sw: [A] angle switch weights (dimensionless, depend on positions).
        res: [a] residual scale of the angle update.
        a_ij, a_ik: [A] int64 indices into the Ea angle-edges (``a_ij`` sorted ascending).
        e_dim: number of leading channels of the activation that are reduced onto edges.
        threshold: SiLUT threshold T.
    Returns:
        ``red`` [Ea, e_dim] = Σ over angles of edge p of ``a_sw · x[:, :e_dim]``, and
        ``angle_new`` [A, a] = ``angle + res · x[:, e_dim:]``, with ``x = silut(angle @ w + b + p_ij[a_ij] + p_ik[a_ik])``.
    """
    z = angle @ w + b + p_ij[a_ij] + p_ik[a_ik]
    x = silut(z, threshold)
    red = torch.zeros(p_ij.shape[0], e_dim, dtype=x.dtype, device=x.device).index_add_(
        0, a_ij, x[:, :e_dim] * a_sw.unsqueeze(1))
    return red, angle + res * x[:, e_dim:]
