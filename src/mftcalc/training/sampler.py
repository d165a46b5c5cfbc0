"""Batch sources and their deterministic, resumable samplers (the data position is two integers)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from mftcalc.data.structure import Structure


def resolve_batch_size(spec: str | int, structures: Sequence[Structure]) -> int:
    """Structures per batch: an int, or ``"auto:N"`` = ⌈N / mean atoms per structure⌉."""
    if isinstance(spec, int):
        if spec <= 0:
            raise ValueError(f"batch size must be positive, got {spec}")
        return spec
    text = str(spec)
    if text.startswith("auto:"):
        n_atoms = float(text.split(":", 1)[1])
        mean_atoms = float(np.mean([s.n_atoms for s in structures]))
        return max(1, math.ceil(n_atoms / mean_atoms))
    if text.isdigit():
        return resolve_batch_size(int(text), structures)
    raise ValueError(f"batch size {spec!r} is neither an int nor 'auto:N'")


@dataclass
class EpochSampler:
    """Walks a fresh seeded permutation of ``n_items`` every epoch; state = (epoch, position)."""

    n_items: int
    batch_size: int
    seed: int
    epoch: int = 0
    position: int = 0
    _perm: Optional[np.ndarray] = field(default=None, repr=False)

    def _permutation(self) -> np.ndarray:
        if self._perm is None:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_items)
        return self._perm

    def next_indices(self, count: Optional[int] = None) -> np.ndarray:
        """Next ``count`` (default ``batch_size``) item indices, wrapping into a new epoch when needed."""
        count = self.batch_size if count is None else count
        out: List[np.ndarray] = []
        while count > 0:
            perm = self._permutation()
            take = min(count, self.n_items - self.position)
            out.append(perm[self.position:self.position + take])
            self.position += take
            count -= take
            if self.position >= self.n_items:
                self.epoch += 1
                self.position = 0
                self._perm = None
        return np.concatenate(out)

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.position >= self.n_items:     # the source shrank since the state was written: next epoch
            self.epoch, self.position = self.epoch + 1, 0
        self._perm = None


@dataclass
class Source:
    """One stream of training batches.

    ``kind``: ``forcefield`` (energy/forces/virial labels, dataset embedding index ``dataset_index``) or
    ``property`` (label ``property`` with loss ``loss``). ``prob``: probability of being drawn in a step.
    ``loss_scale``: property errors are divided by it inside the loss (e.g. the label standard deviation, so the
    property loss is O(1) whatever the unit and can compete with force-field losses in a shared optimizer).
    """

    name: str
    structures: List[Structure]
    kind: str = "forcefield"
    dataset_index: int = 0
    batch_size: int = 1
    prob: float = 1.0
    property: Optional[str] = None
    loss: str = "mse"
    loss_scale: float = 1.0
    reduction: str = "sum"

    def __post_init__(self) -> None:
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"source {self.name!r}: reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if not self.loss_scale > 0:
            raise ValueError(f"source {self.name!r}: loss_scale must be positive, got {self.loss_scale}")
        if not self.structures:
            raise ValueError(f"source {self.name!r} has no structures")
        if self.kind not in ("forcefield", "property"):
            raise ValueError(f"source {self.name!r}: kind must be 'forcefield' or 'property', got {self.kind!r}")
        if self.kind == "property" and not self.property:
            raise ValueError(f"property source {self.name!r} needs the property name")
        if self.kind == "forcefield" and not any(s.energy is not None or s.forces is not None
                                                 for s in self.structures):
            raise ValueError(f"force-field source {self.name!r} has no energy or force labels")
        if self.kind == "property":
            missing = sum(self.property not in s.properties for s in self.structures)
            if missing == len(self.structures):
                raise ValueError(f"property source {self.name!r}: no structure carries {self.property!r}")


def choose_source(probs: Sequence[float], seed: int, step: int) -> int:
    """Index of the source drawn at ``step`` (a pure function of seed and step, so resuming is exact)."""
    p = np.asarray(probs, dtype=float)
    if p.sum() <= 0:
        raise ValueError("source probabilities must sum to a positive number")
    rng = np.random.default_rng([seed, step, 7])
    return int(rng.choice(len(p), p=p / p.sum()))
