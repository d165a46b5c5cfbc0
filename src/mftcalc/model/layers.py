"""Small building blocks of the network: the SiLUT activation, the smooth cutoff switches and the MLP."""
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


def exp_switch(r: Tensor, r_smth: float, r_cut: float) -> Tensor:
    """deepmd-kit's exponential switch (``use_exp_switch``): ``s(r) = exp(−exp(20 (r − r_s) / r_s))`` with r
    clamped to [0, ``r_cut``].

    Unlike :func:`smooth_switch` it is not 1 below ``r_smth`` (s(r_s) = 1/e, s(0.8 r_s) ≈ 0.98) and not 0 at the
    cutoff (≈ 8e-7 at r_c = 6, r_s = 5.3), so the energy has a tiny step where a neighbour crosses r_cut, exactly
    as in deepmd-kit (``deepmd.pt.utils.preprocess.compute_exp_sw``).

    Args:
        r: distances, any shape, Å.
    Returns:
        switch values, same shape, in (0, 1).
    """
    x = r.clamp(0.0, r_cut)
    return torch.exp(-torch.exp((20.0 / r_smth) * (x - r_smth)))


SWITCHES = ("poly", "exp")


def switch_function(name: str, r: Tensor, r_inner: float, r_cut: float) -> Tensor:
    """The switch called ``name`` (``poly``: :func:`smooth_switch`, ``exp``: :func:`exp_switch`) of distances
    ``r`` (any shape, Å) with its inner radius ``r_inner`` and cutoff ``r_cut`` (Å)."""
    if name == "exp":
        return exp_switch(r, r_inner, r_cut)
    if name == "poly":
        return smooth_switch(r, r_inner, r_cut)
    raise ValueError("unknown switch '" + name + "'; use 'poly' or 'exp'")   # plain string: TorchScript


class ResNetDtLayer(nn.Module):
    """One hidden layer with deepmd-kit's residual skip: ``y = act(W x + b) ⊙ idt``, plus ``x`` when the widths are
    equal, or ``[x, x]`` when the output is twice as wide (no skip otherwise).

    Two layouts, chosen by ``deepmd``:

    * ``deepmd=False`` (mftcalc's first layout, kept so that checkpoints written with it load unchanged): ``idt``
      [n_out] on every layer, also where there is no skip; ``timestep`` must be True.
    * ``deepmd=True``: exactly deepmd-kit's fitting-net layer (``MLPLayer(resnet=True, use_timestep=resnet_dt)``):
      the skip on equal or doubled widths always, and ``idt`` only on those skip layers and only with
      ``timestep`` (``resnet_dt``); elsewhere ``y = act(W x + b)`` (+ skip).

    ``idt`` (the "timestep") starts near 0.1 (normal, mean 0.1, std 0.001), as in deepmd-kit, so a fresh skip layer
    is close to the identity. Shapes: x [..., n_in] -> [..., n_out].
    """

    def __init__(self, n_in: int, n_out: int, activation: str, timestep: bool = True, deepmd: bool = False) -> None:
        super().__init__()
        if not deepmd and not timestep:
            raise ValueError("ResNetDtLayer without timestep exists only in the deepmd layout; pass deepmd=True")
        self.linear = nn.Linear(n_in, n_out)
        self.act = make_activation(activation)
        self.skip = 1 if n_out == n_in else (2 if n_out == 2 * n_in else 0)
        if timestep and (self.skip != 0 or not deepmd):
            self.idt = nn.Parameter(torch.empty(n_out).normal_(0.1, 0.001))
        else:
            self.register_parameter("idt", None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.linear(x))
        idt = self.idt
        if idt is not None:
            y = y * idt
        if self.skip == 1:
            y = y + x
        elif self.skip == 2:
            y = y + torch.cat([x, x], -1)
        return y


class MLP(nn.Module):
    """Fully connected network ``in -> hidden... -> out`` with an activation between layers (none at the end).

    ``deepmd_fitting=False`` (default): with ``resnet_dt=True`` the hidden layers are :class:`ResNetDtLayer` in
    mftcalc's first layout (``idt`` on every hidden layer), else plain ``Linear`` + activation.
    ``deepmd_fitting=True``: the hidden layers are exactly deepmd-kit's fitting net (``FittingNet``): a skip on
    equal or doubled widths whatever ``resnet_dt`` says, and ``idt`` on those layers only when ``resnet_dt``.
    The last layer is linear in every case. Shapes: x [..., n_in] -> [..., n_out].
    """

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str = "tanh",
                 bias_out: bool = True, resnet_dt: bool = False, deepmd_fitting: bool = False) -> None:
        super().__init__()
        sizes: List[int] = [n_in] + list(hidden) + [n_out]
        layers: List[nn.Module] = []
        for k in range(len(sizes) - 1):
            last = k == len(sizes) - 2
            if (resnet_dt or deepmd_fitting) and not last:
                layers.append(ResNetDtLayer(sizes[k], sizes[k + 1], activation, timestep=resnet_dt,
                                            deepmd=deepmd_fitting))
                continue
            layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=bias_out or not last))
            if not last:
                layers.append(make_activation(activation))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_activation(name: str) -> nn.Module:
    """Activation module by name: ``tanh``, ``silu`` or ``silut[:T]`` (e.g. ``silut:10``; bare ``silut`` means
    T = 10), also written ``custom_silu:T`` (deepmd-kit's alias; the threshold is required there, because
    deepmd-kit's bare ``silut``/``custom_silu`` means T = 3 while mftcalc's bare ``silut`` means T = 10)."""
    key = name.strip().lower()
    if key == "tanh":
        return nn.Tanh()
    if key == "silu":
        return nn.SiLU()
    if key.startswith("silut") or key.startswith("custom_silu"):
        base, _, value = key.partition(":")
        if base not in ("silut", "custom_silu"):
            raise ValueError(f"unknown activation {name!r}; use 'tanh', 'silu', 'silut[:T]' or 'custom_silu:T'")
        if not value:
            if base == "custom_silu":
                raise ValueError(f"activation {name!r} needs its threshold: write 'custom_silu:3.0' (deepmd-kit's "
                                 "default T = 3) or 'silut:T'")
            return SiLUT(10.0)
        try:
            threshold = float(value)
        except ValueError:
            raise ValueError(f"activation {name!r}: the threshold after ':' must be a number, e.g. 'silut:3.0'") \
                from None
        return SiLUT(threshold)
    raise ValueError(f"unknown activation {name!r}; use 'tanh', 'silu', 'silut[:T]' or 'custom_silu:T'")
