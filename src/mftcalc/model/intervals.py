"""Prediction intervals: split-conformal half-widths of a property, scaled by the applicability score.

A model with a property head ``gap`` and the applicability head ``ood_score`` can carry an ``interval`` head
``gap_pi90``: the half-width, in the property's unit, of the interval ``gap ± gap_pi90`` that holds the true value
with probability 0.9 for structures drawn like the calibration set. It is normalised split-conformal prediction
(Papadopoulos et al. 2002; Lei et al. 2018): on labelled calibration structures never trained on, the
nonconformity is ``|y − ŷ| / ood_score``; the head stores ``q``, the ⌈(n + 1)·coverage⌉-th smallest of the n
values, and returns ``q · ood_score``. The coverage holds on average over calibration sets drawn like the
structures it is applied to (exchangeability); it is not a promise for a structure unlike them, where the score
widens the interval but need not widen it enough (``benchmarks/prediction_intervals.py`` measures both). A
structure with an element no training structure had has ``ood_score = inf`` and so an infinite half-width.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from mftcalc.model.config import HeadConfig


class TooFewCalibrationStructures(ValueError):
    """Too few labelled calibration structures for the conformal quantile at the asked coverage."""


class IntervalHead(nn.Module):
    """``q · out[score]``: half-width [B] of the conformal interval (the bounded property's unit).

    Buffer ``q`` [1]: the calibrated quantile of ``|y − ŷ| / score`` (NaN until calibrated).
    """

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.score_name: str = cfg.score
        self.register_buffer("q", torch.full((1,), float("nan")))

    def forward(self, out: Dict[str, Tensor]) -> Tensor:
        return out[self.score_name] * self.q


def intervals_by_property(heads: Dict[str, Dict[str, Any]]) -> Dict[str, str]:
    """``{property: interval head}`` from checkpoint metadata ``heads`` (the heads with an ``interval`` record)."""
    return {h["interval"]["of"]: name for name, h in heads.items() if h.get("interval")}


def interval_name(prop: str, coverage: float) -> str:
    """Default head name, e.g. ``gap_pi90`` for a 90 % interval of ``gap``."""
    percent = 100.0 * coverage
    return f"{prop}_pi{int(round(percent))}" if abs(percent - round(percent)) < 1e-9 else f"{prop}_pi{percent:g}"


def conformal_quantile(nonconformity: np.ndarray, coverage: float) -> float:
    """The ⌈(n + 1)·coverage⌉-th smallest of n nonconformity values: the split-conformal quantile whose interval
    covers a new exchangeable point with probability ≥ ``coverage``.

    Raises ValueError for a coverage outside (0, 1), and :class:`TooFewCalibrationStructures` (a ValueError) when n
    is too small for that rank to exist (n < coverage / (1 − coverage), e.g. 9 at 0.9).
    """
    values = np.sort(np.asarray(nonconformity, dtype=np.float64))
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie in (0, 1), e.g. 0.9; got {coverage}")
    n = values.size
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n:
        need = math.ceil(coverage / (1.0 - coverage) - 1e-9)
        raise TooFewCalibrationStructures(f"a {coverage:g} interval needs at least {need} labelled calibration structures; got {n}")
    return float(values[rank - 1])


def calibrate_interval(model: nn.Module, structures: Sequence[Any], prop: str, coverage: float = 0.9,
                       score: str = "ood_score", name: Optional[str] = None, source: str = "",
                       metadata: Optional[Dict[str, Any]] = None,
                       predictions: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Dict[str, Any]:
    """Add (or recalibrate) the interval head of property ``prop`` on labelled ``structures`` not trained on.

    Args:
        model: an ``MFTModel`` with property head ``prop`` and applicability head ``score`` (fitted).
        structures: calibration structures carrying ``prop`` labels (in the head's unit).
        coverage: the nominal probability that the interval holds the true value, in (0, 1).
        name: the head's name (default :func:`interval_name`, e.g. ``gap_pi90``).
        source: where the calibration structures came from, for the record.
        metadata: checkpoint metadata to enter the head in (``metadata["heads"][name]``, with the record).
        predictions: the model's ``(prop, score)`` values [L] on the ``L`` structures that carry a ``prop`` label, in
            their order, when the caller has them already (saves a second pass); default: predicted here.
    Returns:
        The record: ``name``, ``of``, ``score``, ``coverage``, ``q``, ``median_half_width`` (on the calibration
        structures, the property's unit), ``n_calibration``, ``n_unscored`` (calibration structures left out because
        their score is infinite), ``source``.
    """
    from mftcalc.model.inference import predict_structures
    heads = model.config.heads
    if prop not in heads or heads[prop].kind in ("forcefield", "knn_ood", "interval"):
        have = [k for k, h in heads.items() if h.kind not in ("forcefield", "knn_ood", "interval")]
        raise KeyError(f"model has no property head {prop!r} to bound; its property heads: {have}")
    if heads[prop].kind == "group":
        raise ValueError(f"{prop!r} is a group property (one value per assembly of structures): the interval is "
                         "scaled by one applicability score per structure, so a group property gets none")
    if score not in heads or heads[score].kind != "knn_ood":
        raise KeyError(f"model has no applicability head {score!r} (kind knn_ood) to scale the interval: fine-tune "
                       "it with mftcalc finetune, which fits one")
    labelled = [s for s in structures if prop in s.properties]
    if not labelled:
        raise ValueError(f"none of the {len(structures)} calibration structures carries a {prop!r} label")
    name = name or interval_name(prop, coverage)
    cfg = HeadConfig(kind="interval", unit=heads[prop].unit, hidden=(), of=prop, score=score, coverage=coverage)
    if predictions is None:
        rows = predict_structures(model, labelled, 0, compute_forces=False, compute_stress=False)
        predictions = (np.array([float(r[prop]) for r in rows]), np.array([float(r[score]) for r in rows]))
    predicted, scores = (np.asarray(a, dtype=np.float64) for a in predictions)
    if predicted.shape != (len(labelled),) or scores.shape != (len(labelled),):
        raise ValueError(f"predictions must be two arrays of shape ({len(labelled)},), one value per labelled "
                         f"calibration structure; got {predicted.shape} and {scores.shape}")
    truth = np.array([float(s.properties[prop]) for s in labelled])
    finite = np.isfinite(scores) & (scores > 0)
    q = conformal_quantile(np.abs(truth - predicted)[finite] / scores[finite], coverage)
    first = next(model.parameters())
    head = IntervalHead(cfg).to(device=first.device, dtype=first.dtype)
    head.q.fill_(q)
    heads[name] = cfg
    model.interval_heads[name] = head
    record = {"name": name, "of": prop, "score": score, "coverage": float(coverage), "q": q,
              "median_half_width": q * float(np.median(scores[finite])),
              "n_calibration": int(finite.sum()), "n_unscored": int((~finite).sum()), "source": source}
    if metadata is not None:
        metadata.setdefault("heads", {})[name] = {"kind": "interval", "unit": cfg.unit, "extensive": False,
                                                  "interval": {k: v for k, v in record.items() if k != "name"}}
    return record


def calibrate_on_validation(model: nn.Module, validation: Sequence[Any], prop: str, coverage: float,
                            metadata: Dict[str, Any],
                            predictions: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Optional[Dict[str, Any]]:
    """The fine-tuning's interval head: :func:`calibrate_interval` on its validation structures, or ``None`` with
    a warning naming the reason and the fix when there are too few of them (``coverage`` 0: no head, no warning).
    Every other error (a coverage outside [0, 1), predictions of the wrong shape) is raised, not warned about.

    The validation set also picked the best checkpoint, a mild optimism for the ID coverage that the measured
    coverages on the test parts (``interval_coverage`` in the fine-tuning's results) show.
    """
    if coverage == 0:
        return None
    try:
        return calibrate_interval(model, validation, prop, coverage, source="the fine-tuning's validation set",
                                  metadata=metadata, predictions=predictions)
    except TooFewCalibrationStructures as exc:
        import warnings
        warnings.warn(f"the model gets no prediction interval for {prop!r}: {exc}. Give more validation "
                      "structures, lower interval_coverage, or set it to 0 to go without one", stacklevel=2)
        return None


def interval_coverage(truth: np.ndarray, predicted: np.ndarray, half_width: np.ndarray) -> float:
    """Fraction [0, 1] of structures with ``|truth − predicted| ≤ half_width`` (NaN for none)."""
    truth = np.asarray(truth, dtype=np.float64)
    return float(np.mean(np.abs(truth - predicted) <= half_width)) if truth.size else float("nan")
