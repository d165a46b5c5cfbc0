"""Frame parameters: per-structure conditions (temperature, pressure, charge, ...) that a property head reads.

A property head fine-tuned with frame parameters ``{"temperature": "K"}`` predicts y(structure, T). Each name is a
real scalar read from the structure's ``info`` (an extxyz comment-line key, ASE's ``atoms.info``, an ASE database
key-value pair), standardised by the training set's mean and standard deviation, and appended to every atom's
backbone features at the head's input, as deepmd-kit's fitting nets append its ``fparam``. The backbone, the
force field and the applicability score (``ood_score``) do not read them: forces do not depend on them, and the
score says nothing about a condition outside the training range.

In a batch they are one tensor ``frame_params`` [B, F] (the model's unit for each), columns in the order of
:func:`model_frame_params`.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np


def model_frame_params(heads: Mapping[str, Any]) -> Dict[str, str]:
    """``{name: unit}`` of every frame parameter any head reads, in the order heads name them (the column order
    of the batch's ``frame_params``). ``heads``: ``HeadConfig`` objects or metadata records (dicts)."""
    names: Dict[str, str] = {}
    for head in heads.values():
        params = head.get("frame_params", {}) if isinstance(head, Mapping) else getattr(head, "frame_params", {})
        for name, unit in dict(params or {}).items():
            if name in names and names[name] != unit:
                raise ValueError(f"frame parameter {name!r} has two units in one model: {names[name]!r} and "
                                 f"{unit!r}; give every head the same unit for it")
            names.setdefault(name, unit)
    return names


def _describe(structure: Any, position: int) -> str:
    label = structure.info.get("name")
    return f"structure {position}{f' ({label})' if label else ''}"


def frame_param_matrix(structures: Sequence[Any], names: Sequence[str],
                       units: Mapping[str, str] | None = None) -> np.ndarray:
    """The frame parameters [B, F] float64 of ``structures`` (each one's ``info[name]``), columns in ``names``'
    order. Raises ``ValueError`` naming the structure, the parameter, its unit and the fix when one is missing,
    not a real number, or not finite."""
    units = units or {}
    out = np.zeros((len(structures), len(names)), dtype=np.float64)
    for k, s in enumerate(structures):
        for j, name in enumerate(names):
            unit = f" ({units[name]})" if units.get(name) else ""
            if name not in s.info:
                raise ValueError(f"{_describe(s, k)} has no frame parameter {name!r}{unit}, which the model's "
                                 f"property head reads: set atoms.info[{name!r}] (in an extxyz file, the "
                                 f"comment-line key {name}=...) for every structure")
            value = s.info[name]
            try:
                number = float(np.asarray(value, dtype=np.float64).item())
            except (TypeError, ValueError):
                raise ValueError(f"{_describe(s, k)}: frame parameter {name!r}{unit} is {value!r}, not one real "
                                 "number") from None
            if not math.isfinite(number):
                raise ValueError(f"{_describe(s, k)}: frame parameter {name!r}{unit} is {number}; give a finite "
                                 "value")
            out[k, j] = number
    return out


def _varies(matrix: np.ndarray, min_std: float) -> np.ndarray:
    """Which columns [F] of ``matrix`` [B, F] vary: standard deviation above ``min_std`` relative to the mean's
    size (at least 1)."""
    return matrix.std(0) > min_std * np.maximum(1.0, np.abs(matrix.mean(0)))


def frame_stats(matrix: np.ndarray, min_std: float = 1e-6) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation [F] of a frame-parameter matrix [B, F] (the head's standardisation). A
    parameter constant in the training set gets std 1: the head cannot learn its effect, and says so through
    :func:`constant_params`."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix.mean(0), np.where(_varies(matrix, min_std), matrix.std(0), 1.0)


def constant_params(matrix: np.ndarray, names: Sequence[str], min_std: float = 1e-6) -> List[str]:
    """Names of the frame parameters that do not vary over ``matrix`` [B, F] (their effect cannot be learned)."""
    varies = _varies(np.asarray(matrix, dtype=np.float64), min_std)
    return [n for n, v in zip(names, varies) if not v]


def frame_ranges(structures: Sequence[Any], names: Sequence[str]) -> Dict[str, List[float]]:
    """``{name: [min, max]}`` of each frame parameter over ``structures`` (a head's training range, recorded in
    its domain so that a value outside it is warned about like an element outside it)."""
    matrix = frame_param_matrix(structures, names)
    return {n: [float(matrix[:, j].min()), float(matrix[:, j].max())] for j, n in enumerate(names)} \
        if len(structures) else {}


def frame_params_digest(structures: Sequence[Any], names: Sequence[str]) -> str:
    """Short content digest (16 hex characters of a SHA-1) of the frame parameters ``names`` of ``structures``,
    in order: a training state stores it, so a resume on changed conditions is stated."""
    import hashlib
    return hashlib.sha1(np.ascontiguousarray(frame_param_matrix(structures, names)).tobytes()).hexdigest()[:16]
