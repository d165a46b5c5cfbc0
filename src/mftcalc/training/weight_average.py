"""A moving average of the weights during training (``ema_decay``), with torch's ``AveragedModel``.

After every optimiser step the average moves towards the trained weights, ``avg ← d·avg + (1 − d)·w`` (the first
update copies them); buffers are not trained and are copied as they are. The trainer validates the average beside
the trained weights, keeps it in the training state and exports it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 = no weight average), got {decay!r}")


def weight_average(model: torch.nn.Module, decay: float) -> Optional[AveragedModel]:
    """The average of ``model``'s weights with ``decay`` per step; ``None`` for decay 0 (no average)."""
    check_decay(decay)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None


@torch.no_grad()
def update_weight_average(average: AveragedModel, model: torch.nn.Module) -> None:
    """One step of the average towards ``model``'s weights; ``model``'s buffers are copied."""
    average.update_parameters(model)
    for averaged, current in zip(average.module.buffers(), model.buffers()):
        averaged.copy_(current)


def resume_weight_average(average: Optional[AveragedModel], model: torch.nn.Module,
                          saved: Optional[Dict[str, Any]]) -> Tuple[Optional[AveragedModel], str]:
    """The average after a resume from a state whose average is ``saved`` (``None`` if it kept none), with
    ``model`` already holding the resumed weights; and a note for the resume log when averaging starts or
    stops at this resume (empty otherwise)."""
    if average is None:
        return None, ("the state's weight average is dropped (ema_decay is 0 now); the raw weights train on"
                      if saved is not None else "")
    if saved is not None:
        average.load_state_dict(saved)
        return average, ""
    # switched on at this resume: a fresh average of the resumed model (its first update copies the weights)
    return AveragedModel(model, multi_avg_fn=average.multi_avg_fn), "the weight average starts at this resume"


AVERAGE_PREFIX = "ema/"      # validation metrics of the average: ema/val/<source>/<metric>


def final_metrics(metrics: Dict[str, float], averaged: bool) -> Dict[str, float]:
    """The validation metrics of the weights a run keeps: with an average (``averaged``), its ``ema/val/...``
    entries renamed ``val/...`` (the trained weights' ``val/...`` left out); without, ``metrics`` as they are.
    Other entries (``step``, ``wall_s``) stay."""
    if not averaged:
        return dict(metrics)
    out = {k: v for k, v in metrics.items() if not k.startswith(("val/", AVERAGE_PREFIX))}
    out.update({k[len(AVERAGE_PREFIX):]: v for k, v in metrics.items() if k.startswith(AVERAGE_PREFIX)})
    return out
