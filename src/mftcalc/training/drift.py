"""How far fine-tuning moved the backbone's representation from the prior's, on a fixed probe set."""
from __future__ import annotations

from typing import Dict, List

import torch

from mftcalc.analysis.features import per_atom_features
from mftcalc.analysis.metrics import relative_drift, sliced_drift
from mftcalc.data.structure import Structure


class DriftMonitor:
    """Drift of the per-atom backbone features [N_atoms, n_dim] of a probe set from those of the model it was
    built with (the prior): ``drift_w1``, the sliced 1-Wasserstein distance between the two feature clouds, and
    ``drift_rel``, the relative squared drift Σ‖h − h₀‖²/Σ‖h₀‖² atom by atom (what ``anchor: features`` penalises,
    :mod:`mftcalc.training.anchor`)."""

    def __init__(self, model: torch.nn.Module, probe: List[Structure], seed: int = 0) -> None:
        self.probe = probe
        self.seed = seed
        self.reference = per_atom_features(model, probe)

    def __call__(self, model: torch.nn.Module) -> Dict[str, float]:
        """``{"drift_w1": ..., "drift_rel": ...}`` of ``model`` against the reference."""
        features = per_atom_features(model, self.probe)
        return {"drift_w1": sliced_drift(self.reference, features, seed=self.seed),
                "drift_rel": relative_drift(self.reference, features)}
