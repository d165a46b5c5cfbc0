"""Small building blocks of the network: the SiLUT activation, the smooth cutoff switch and the MLP."""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
from torch import Tensor, nn


class SiLUT(nn.Module):
    """SiLU below a threshold T, a tanh continuation above it (C¹ at T, bounded growth).

    ``f(x) = silu(x)`` for x < T and ``f(x) = silu(T) + tanh(silu'(T) · (x − T))`` for x ≥ T, written as
    ``silu(min(x, T)) + tanh(slope · relu(x − T))`` so that one expression serves both sides. When no element
    exceeds T (the usual case) that expression equals ``silu(x)`` with the same derivatives of every order used
    here, so the call takes the one-kernel ``silu`` path and skips the tanh branch and its backward chain;
    otherwise the tanh term is computed only on the elements above T.
    """

    def __init__(self, threshold: float = 10.0) -> None:
        super().__init__()
        self.threshold = float(threshold)
        sig = 1.0 / (1.0 + math.exp(-threshold))
        self.slope = float(sig + threshold * sig * (1.0 - sig))

    def forward(self, x: Tensor) -> Tensor:
        # one max-reduction decides the path: ~8x cheaper than (x > T).any(), which writes a bool tensor first
        if x.numel() == 0 or float(x.detach().max()) <= self.threshold:
            return torch.nn.functional.silu(x)
        above = x.detach() > self.threshold
        # the tanh term is zero wherever x <= T, so evaluate it only on the (few) elements above T and add it
        # there: one small gather/scatter instead of tanh, relu and their derivatives over the whole tensor
        base = torch.nn.functional.silu(torch.clamp(x, max=self.threshold))
        index = torch.nonzero(above.reshape(-1)).squeeze(1)
        tail = torch.tanh(self.slope * (x.reshape(-1).index_select(0, index) - self.threshold))
        return base.reshape(-1).index_add(0, index, tail).view(base.shape)


def smooth_switch(r: Tensor, r_inner: float, r_cut: float) -> Tensor:
    """Switch that is 1 below ``r_inner``, 0 above ``r_cut`` and C² in between (quintic polynomial).

    Args:
        r: distances, any shape, Å.
    Returns:
        switch values, same shape, in [0, 1].
    """
    u = ((r - r_inner) / (r_cut - r_inner)).clamp(0.0, 1.0)
    return 1.0 + u * u * u * (-10.0 + u * (15.0 - 6.0 * u))


class MLP(nn.Module):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers (none at the end)."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "tanh",
                 bias_out: bool = True) -> None:
        super().__init__()
        sizes: List[int] = [n_in] + list(hidden) + [n_out]
        layers: List[nn.Module] = []
        for k in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=bias_out or k < len(sizes) - 2))
            if k < len(sizes) - 2:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_activation(name: str) -> nn.Module:
    """Activation module by name: ``tanh``, ``silu`` or ``silut[:T]`` (e.g. ``silut:10``)."""
    if name == "tanh":
        return nn.Tanh()
    if name == "silu":
        return nn.SiLU()
    if name.startswith("silut"):
        threshold = float(name.split(":")[1]) if ":" in name else 10.0
        return SiLUT(threshold)
    raise ValueError(f"unknown activation {name!r}; use 'tanh', 'silu' or 'silut[:threshold]'")
