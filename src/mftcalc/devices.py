"""Which device a model runs on: ``auto``/``cpu``/``cuda[:k]`` resolved once, and the one log line that says
what was chosen (training, the calculator and the batched paths all use these)."""
from __future__ import annotations

from typing import Any, Union

import torch


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; other names as torch reads them. An unavailable CUDA device
    is refused with the fix instead of failing inside the first step."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this torch ({torch.__version__}) sees no CUDA device; use device cpu "
                         "or auto, or install a CUDA build of torch")
    return device


def describe_device(device: torch.device, requested: Any = None) -> str:
    """One line for logs: the device (and the request, e.g. ``auto``), and on CUDA its name and whether float32
    matrix products may use TF32. mftcalc changes no precision setting: torch's default is full float32 (TF32 off)
    unless the caller turned TF32 on (``torch.set_float32_matmul_precision("high")`` or
    ``torch.backends.cuda.matmul.allow_tf32 = True``)."""
    text = str(device)
    if requested is not None and str(requested) != text:
        why = "" if device.type == "cuda" else ": torch sees no CUDA device"
        text += f" (device {str(requested)!r}{why})"
    if device.type == "cuda":
        precision = torch.get_float32_matmul_precision()
        tf32 = bool(torch.backends.cuda.matmul.allow_tf32) or precision != "highest"
        text += f", {torch.cuda.get_device_name(device)}, float32 matrix products " + (
            f"may use TF32 (set by the caller: float32 matmul precision {precision!r})" if tf32
            else "in full float32 (TF32 off, torch's default)")
    return text
