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


class ResNetDtLayer(nn.Module):
    """One hidden layer of deepmd-kit's fitting net with ``resnet_dt``: ``y = act(W x + b) ⊙ idt``, plus ``x``
    when the widths are equal, or ``[x, x]`` when the output is twice as wide (no skip otherwise).

    ``idt`` [n_out] (the "timestep") starts near 0.1 (normal, mean 0.1, std 0.001), as in deepmd-kit, so a
    fresh layer is close to the identity on square layers. Shapes: x [..., n_in] -> [..., n_out].
    """

    def __init__(self, n_in: int, n_out: int, activation: str) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        self.act = make_activation(activation)
        self.idt = nn.Parameter(torch.empty(n_out).normal_(0.1, 0.001))
        self.skip = 1 if n_out == n_in else (2 if n_out == 2 * n_in else 0)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.linear(x)) * self.idt
        if self.skip == 1:
            y = y + x
        elif self.skip == 2:
            y = y + torch.cat([x, x], -1)
        return y


class MLP(nn.Module):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers (none at the end).

    ``resnet_dt=True``: the hidden layers are :class:`ResNetDtLayer` (deepmd-kit's fitting net, the authors'
    property and force-field heads); the last layer stays linear.
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "tanh",
                 bias_out: bool = True, resnet_dt: bool = False) -> None:
        super().__init__()
        sizes: List[int] = [n_in] + list(hidden) + [n_out]
        layers: List[nn.Module] = []
        for k in range(len(sizes) - 1):
            last = k == len(sizes) - 2
            if resnet_dt and not last:
                layers.append(ResNetDtLayer(sizes[k], sizes[k + 1], activation))
                continue
            layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=bias_out or not last))
            if not last:
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
