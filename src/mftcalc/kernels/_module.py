"""The TorchScript module form of the neighbour list, which carries its backend choice into scripts."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._backend import resolve_backend
from ._neighbors import cpp_search, neighbor_list, prepare_inputs


class _TorchKernel(torch.nn.Module):
    """Pure-torch search on any device."""

    def forward(
        self, positions: Tensor, cutoff: float, batch: Optional[Tensor], cell: Optional[Tensor], pbc: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        return neighbor_list(positions, cutoff, batch, cell, pbc, "torch")


class _CppKernel(torch.nn.Module):
    """C++ kernel on CPU tensors; other devices use pure torch under 'auto' and raise under 'cpp'."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend

    def forward(
        self, positions: Tensor, cutoff: float, batch: Optional[Tensor], cell: Optional[Tensor], pbc: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, Tensor]:
        if positions.device.type != "cpu":
            if self.backend == "cpp":
                raise RuntimeError("neighbor_list: backend 'cpp' runs on CPU tensors only")
            return neighbor_list(positions, cutoff, batch, cell, pbc, "torch")
        positions, batch, cell, pbc = prepare_inputs(positions, cutoff, batch, cell, pbc)
        return cpp_search(positions, batch, cell, pbc, cutoff)


class NeighborList(torch.nn.Module):
    """``neighbor_list`` with a fixed cutoff (Å) and backend, scriptable with either backend.

    The backend for CPU tensors is resolved at construction (building the C++ kernel if needed, and
    raising if 'cpp' is unavailable). Only the chosen kernel is compiled when scripted: a scripted
    'torch' module loads with plain ``torch.jit.load``; a scripted C++ one needs ``mftcalc.kernels``
    imported (and the kernel built) in the loading process.
    """

    def __init__(self, cutoff: float, backend: str = "auto") -> None:
        super().__init__()
        self.cutoff = cutoff
        self.cpu_backend = resolve_backend(backend, torch.device("cpu"))
        self.kernel = _CppKernel(backend) if self.cpu_backend == "cpp" else _TorchKernel()

    def forward(
        self, positions: Tensor, batch: Optional[Tensor] = None, cell: Optional[Tensor] = None, pbc: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor, Tensor]:
        """Same shapes and units as ``neighbor_list``."""
        return self.kernel(positions, self.cutoff, batch, cell, pbc)
