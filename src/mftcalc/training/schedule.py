"""Learning-rate schedule and the learning-rate-tied loss prefactors (DeePMD style)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ExponentialLR:
    """``lr(step) = lr0 · r^floor((step − start_step) / decay_steps)`` with r chosen so that lr reaches ``lr_end``
    at ``num_steps``; ``lr0`` before ``start_step``.

    ``start_step`` > 0 restarts the decay part-way through a run (e.g. a resumed pretraining given a new, shorter
    step budget): the learning rate stays at ``lr0`` until ``start_step`` and decays to ``lr_end`` over the rest.
    """

    lr0: float = 1e-3
    lr_end: float = 1e-5
    num_steps: int = 100_000
    decay_steps: int = 5_000
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.lr0 <= 0 or self.lr_end <= 0 or self.num_steps <= 0 or self.decay_steps <= 0:
            raise ValueError("lr0, lr_end, num_steps and decay_steps must be positive")
        if not 0 <= self.start_step < self.num_steps:
            raise ValueError(f"start_step must lie in [0, num_steps={self.num_steps}), got {self.start_step}")

    @property
    def decay_rate(self) -> float:
        n_decays = max((self.num_steps - self.start_step) / self.decay_steps, 1.0)
        return math.exp(math.log(self.lr_end / self.lr0) / n_decays)

    def __call__(self, step: int) -> float:
        n = max(step - self.start_step, 0) // self.decay_steps
        return max(self.lr0 * self.decay_rate ** n, self.lr_end)


def prefactor(start: float, limit: float, lr: float, lr0: float) -> float:
    """``pref = limit + (start − limit) · lr / lr0`` (start at lr0, tends to limit as lr → 0)."""
    return limit + (start - limit) * lr / lr0
