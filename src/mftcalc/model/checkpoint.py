"""Checkpoint format: save/load an ``MFTModel`` with its config and metadata, and TorchScript export.

A checkpoint is a ``torch.save`` of a plain dict (tensors, strings, numbers, lists, dicts only) so it loads with
``weights_only=True``: ``{"format": "mftcalc-model", "version": 1, "config": ..., "state_dict": ...,
"metadata": {...}}``. Metadata holds the element list, dataset names, head units and kinds, training provenance
and the package version. Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from mftcalc import __version__
from mftcalc.model.config import ModelConfig
from mftcalc.model.mft_model import MFTModel

FORMAT = "mftcalc-model"
VERSION = 1
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """The file is not a readable mftcalc checkpoint (wrong format, version or corrupt)."""


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)                # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def model_metadata(model: MFTModel, elements: Optional[list] = None, **extra: Any) -> Dict[str, Any]:
    """Default metadata of a model: heads with kind and unit, datasets, elements, version."""
    heads = {k: {"kind": h.kind, "unit": h.unit, "extensive": h.extensive} for k, h in model.config.heads.items()}
    meta: Dict[str, Any] = {"heads": heads, "datasets": list(model.config.datasets),
                            "elements": sorted(int(z) for z in (elements or [])), "mftcalc_version": __version__,
                            "units": {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3", "length": "Å"}}
    meta.update(extra)
    return meta


def save_model(model: MFTModel, path: PathLike, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write a checkpoint (atomically). ``metadata`` defaults to :func:`model_metadata`."""
    payload = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "metadata": metadata if metadata is not None else model_metadata(model)}
    atomic_save(payload, path)


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read and check a checkpoint payload (``weights_only=True``); raise :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated/foreign files
        raise CheckpointError(f"{path} is not a readable mftcalc checkpoint ({type(exc).__name__}: {exc}); "
                              "if it is a TorchScript export, load it with MFTCalculator or torch.jit.load") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mftcalc checkpoint (format field "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this mftcalc reads {VERSION}")
    return payload


def load_model(path: PathLike, dtype: torch.dtype = torch.float32) -> MFTModel:
    """Load a checkpoint into an ``MFTModel`` (eval mode, ``dtype``), with ``model.metadata`` set."""
    payload = read_checkpoint(path)
    model = MFTModel(ModelConfig.from_dict(payload["config"])).to(dtype)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored configuration: {exc}") from None
    model.metadata = payload["metadata"]  # type: ignore[attr-defined]
    return model.to(dtype).eval()


def export_torchscript(model: MFTModel, path: PathLike, metadata: Optional[Dict[str, Any]] = None,
                       fused: bool = False) -> None:
    """Script the model and save it as one file (metadata in extra files).

    ``fused=False`` (default): the portable file, on the plain-torch angle block, loadable with plain
    ``torch.jit.load``. ``fused=True``: the fast file using the C++ angle operator; it loads once
    ``mftcalc.kernels.angle.load_library()`` has run (``load_torchscript``/``MFTCalculator`` do that).
    """
    meta = metadata if metadata is not None else getattr(model, "metadata", model_metadata(model))
    config = ModelConfig.from_dict(model.config.to_dict())
    config.backbone.angle_backend = "fused" if fused else "reference"
    dtype = next(model.parameters()).dtype
    rebuilt = MFTModel(config).to(dtype)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.active_ff_head = model.active_ff_head
    scripted = torch.jit.script(rebuilt.eval())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={"metadata.json": json.dumps(meta),
                                                       "config.json": json.dumps(model.config.to_dict())})
    os.replace(tmp, path)


def load_torchscript(path: PathLike) -> tuple:
    """Load an exported file: ``(scripted_module, metadata dict)``."""
    extra = {"metadata.json": "", "config.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as first:
        if "mftcalc" not in str(first):
            raise CheckpointError(f"{path} is not a TorchScript export ({type(first).__name__}: {first})") from None
        from mftcalc.kernels.angle import load_library   # a fused export needs the operator library
        load_library()
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module, json.loads(extra["metadata.json"] or "{}")


def load_any(path: PathLike, dtype: torch.dtype = torch.float32) -> tuple:
    """Load a checkpoint or a TorchScript export: ``(module, metadata)``; the module is in eval mode.

    TorchScript exports keep the dtype they were exported with unless ``dtype`` differs, in which case
    the module is cast.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    import zipfile
    is_script = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_script = any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())
    if is_script:
        module, meta = load_torchscript(path)
        return module.to(dtype).eval(), meta
    model = load_model(path, dtype)
    return model, model.metadata  # type: ignore[attr-defined]
