"""The best-on-validation weights kept in the training state, so that a resume on another machine (the state
committed, the ignored ``model.pt`` beside it absent) still ends with the best model, not a crash or a later one.

The trainer writes the best weights to its ``best_path`` when a validation beats the best so far and keeps a copy
(:func:`snapshot`) in its state; on resume :func:`restore_best` rewrites a missing ``best_path`` from that copy.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch


def snapshot(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A CPU copy of ``model``'s state dict (the weights as they are now)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def restore_best(best_path: Optional[Path], saved: Optional[Dict[str, torch.Tensor]], model: torch.nn.Module,
                 save_model_fn: Optional[Callable[[torch.nn.Module, Path], None]], best_value: float
                 ) -> Tuple[str, float]:
    """Rewrite a missing ``best_path`` from the state's copy ``saved`` of the best weights (loaded into a copy of
    ``model``, the run's final model; ``best_path`` None: nothing to write, e.g. on a rank other than 0). Returns a
    note for the resume log (empty when nothing was missing) and the best value to go on from: ``best_value``, or
    infinity for a state that kept no copy (best-on-validation restarts at this resume)."""
    if best_path is None or save_model_fn is None or best_path.exists() or best_value == float("inf"):
        return "", best_value
    if saved is None:
        return (f"the best-on-validation model {best_path} is missing and this state keeps no copy of it: "
                "best-on-validation restarts at this resume"), float("inf")
    best = copy.deepcopy(model)
    best.load_state_dict(saved)
    save_model_fn(best, best_path)
    return f"the best-on-validation model {best_path} was missing: rewritten from the state's copy", best_value
