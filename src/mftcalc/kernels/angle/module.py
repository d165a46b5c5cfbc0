"""``AngleBlock``: the angle block as a TorchScript-friendly module whose backend is fixed when it is built."""
from typing import Final, Tuple

import torch
from torch import Tensor, nn

from .dispatch import choose_backend
from .fused import angle_block_fused
from .reference import angle_block_reference


class AngleBlock(nn.Module):
    """Angle update and angle-to-edge reduction with SiLUT(threshold); no parameters of its own.

    ``backend`` (``auto`` | ``fused`` | ``reference``) is resolved once in ``__init__`` (building the library for
    ``auto``/``fused``). With the fused backend, float32/float64 CPU inputs run the C++ op and anything else (e.g.
    CUDA) the reference; a scripted module then contains ``mftcalc::angle_block`` and needs
    :func:`~mftcalc.kernels.angle.load_library` before ``torch.jit.load``. With the reference backend the fused
    branch is left out of TorchScript entirely.
    """

    fused: Final[bool]  # a TorchScript constant, so the unused branch is not compiled (no postponed annotations here)

    def __init__(self, e_dim: int, threshold: float, backend: str = "auto") -> None:
        super().__init__()
        self.e_dim = int(e_dim)
        self.threshold = float(threshold)
        self.fused = choose_backend(backend) == "fused"

    def forward(self, angle: Tensor, p_ij: Tensor, p_ik: Tensor, w: Tensor, b: Tensor, a_sw: Tensor, res: Tensor,
                a_ij: Tensor, a_ik: Tensor) -> Tuple[Tensor, Tensor]:
        """Shapes as :func:`~mftcalc.kernels.angle.reference.angle_block_reference`: ``red`` [Ea, e_dim],
        ``angle_new`` [A, a]."""
        if self.fused:
            if angle.device.type == "cpu" and (angle.dtype == torch.float32 or angle.dtype == torch.float64):
                return angle_block_fused(angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik, self.e_dim, self.threshold)
        return angle_block_reference(angle, p_ij, p_ik, w, b, a_sw, res, a_ij, a_ik, self.e_dim, self.threshold)

    def extra_repr(self) -> str:
        return f"e_dim={self.e_dim}, threshold={self.threshold}, backend={'fused' if self.fused else 'reference'}"
