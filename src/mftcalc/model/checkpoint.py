"""Checkpoint format: save/load an ``MFTModel`` with its config and metadata, and TorchScript export.

A checkpoint is a ``torch.save`` of a plain dict (tensors, strings, numbers, lists, dicts only) so it loads with
``weights_only=True``: ``{"format": "mftcalc-model", "version": 1, "config": ..., "state_dict": ...,
"metadata": {...}, "sha256": "..."}``. Metadata holds the element list, dataset names, head units and kinds,
training provenance and the package version. Files are written atomically (temporary file + rename).

Trust: ``sha256`` is :func:`content_hash` of config, weights and metadata, checked on every load, so a modified
file is refused instead of giving wrong energies (files written before the hash existed load without it), and
the zip members' CRC-32 (written by ``torch.save``/``torch.jit.save``, ignored by ``torch.load``) are checked
first, so flipped bytes are caught in old files too. Non-finite weights are refused. TorchScript exports carry
the hash in an extra file (``weights.sha256``). Every load error names the file and what to do.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from mftcalc import __version__
from mftcalc.files import atomic_write
from mftcalc.model.config import ModelConfig
from mftcalc.model.mft_model import MFTModel

FORMAT = "mftcalc-model"
VERSION = 1
HASH_KEY = "sha256"                 # checkpoint field (and TorchScript extra file "weights.sha256") of the hash
PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The file is not a readable mftcalc checkpoint (wrong format, version, corrupt, modified or non-finite)."""


def _canonical(obj: Any) -> Any:
    """JSON-ready copy of a config/metadata value: dict keys as sorted strings, tuples as lists, tensors as lists."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _canonical(obj.tolist())
    return obj


def content_hash(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any]) -> str:
    """sha256 (hex) of a model's content: config and metadata as canonical JSON, then every tensor of
    ``state_dict`` in name order (name, dtype, shape and raw bytes). Independent of the file layout."""
    h = hashlib.sha256()
    h.update(json.dumps([_canonical(config), _canonical(metadata)], sort_keys=True, default=repr).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_finite(tensors: Mapping[str, torch.Tensor], path: PathLike, fix: str) -> None:
    """Raise :class:`CheckpointError` naming ``path`` and the first floating tensor holding NaN or inf."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{path}: tensor {name!r} holds {bad} non-finite value(s) (NaN/inf) of "
                                  f"{t.numel()}; the model would predict NaN. {fix}")


def _check_hash(stored: Optional[str], actual: str, path: PathLike, fix: str) -> None:
    """Compare a stored content hash with the recomputed one; no stored hash (older files) -> no check."""
    if stored is None:
        log.debug("%s carries no content hash (written before mftcalc stored one); loaded unchecked", path)
        return
    if stored != actual:
        raise CheckpointError(f"{path} is corrupt or modified: its content hash is {actual[:16]}…, the file "
                              f"records {str(stored)[:16]}…; {fix}")


def _check_zip(path: PathLike, fix: str) -> None:
    """Raise :class:`CheckpointError` when a zip-format file (``torch.save``, ``torch.jit.save``) has a member whose
    CRC-32 does not match its bytes; files that are not zips (truncated, legacy pickles) are left to the loader."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{path} is corrupt ({type(exc).__name__}: {exc}); {fix}") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt or modified: its member {bad!r} fails its CRC-32 check; {fix}")


CHECKPOINT_FIX = "re-download the file or re-export it from the training run (save_model / mftcalc finetune)"
EXPORT_FIX = "re-download the file or re-export it with `mftcalc export CKPT -o FILE`"
STATE_FIX = ("delete it to restart the run from step 0, or restore the last committed copy from git "
             "(git checkout -- {path}) to resume from there")
NONFINITE_FIX = ("do not use it; re-export the model from a training state saved before the weights diverged, "
                 "or re-download the file")


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path`` (never a half file)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def model_metadata(model: MFTModel, elements: Optional[list] = None, **extra: Any) -> Dict[str, Any]:
    """Default metadata of a model: heads with kind and unit, datasets, elements, version."""
    heads = {k: {"kind": h.kind, "unit": h.unit, "extensive": h.extensive} for k, h in model.config.heads.items()}
    for k, h in model.config.heads.items():
        if h.frame_params:
            heads[k]["frame_params"] = dict(h.frame_params)
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
    payload[HASH_KEY] = content_hash(payload["config"], payload["state_dict"], payload["metadata"])
    atomic_save(payload, path)


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """Read and check a checkpoint payload (``weights_only=True``): format, version, content hash (when the file
    has one) and finite weights; raise :class:`CheckpointError` naming the file and the fix otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    _check_zip(path, CHECKPOINT_FIX)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated/foreign files
        raise CheckpointError(f"{path} is not a readable mftcalc checkpoint ({type(exc).__name__}: {exc}); "
                              "if it is a TorchScript export, load it with MFTCalculator or torch.jit.load; "
                              f"if it is truncated or corrupt, {CHECKPOINT_FIX}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mftcalc checkpoint (format field "
                              f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this mftcalc reads {VERSION}")
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path} is corrupt or modified: it has no state_dict of weights; {CHECKPOINT_FIX}")
    try:
        actual = content_hash(payload.get("config", {}), payload["state_dict"], payload.get("metadata", {}))
    except Exception as exc:  # a non-tensor among the weights, unserialisable metadata
        raise CheckpointError(f"{path} is corrupt or modified ({type(exc).__name__}: {exc}); "
                              f"{CHECKPOINT_FIX}") from None
    _check_hash(payload.get(HASH_KEY), actual, path, CHECKPOINT_FIX)
    check_finite(payload["state_dict"], path, NONFINITE_FIX)
    payload[HASH_KEY] = actual                     # checked (or, for older files, computed) content hash
    return payload


def load_model(path: PathLike, dtype: Optional[torch.dtype] = torch.float32) -> MFTModel:
    """Load a checkpoint into an ``MFTModel`` (eval mode, ``dtype``; ``None``: the dtype its weights were stored
    in, for commands that rewrite a checkpoint and must not round it), with ``model.metadata`` and
    ``model.content_sha256`` (:func:`content_hash` of the file's config, weights and metadata) set."""
    payload = read_checkpoint(path)
    if dtype is None:
        dtype = next((v.dtype for v in payload["state_dict"].values() if v.is_floating_point()), torch.float32)
    model = MFTModel(ModelConfig.from_dict(payload["config"])).to(dtype)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the stored configuration: {exc}") from None
    model.metadata = payload["metadata"]  # type: ignore[attr-defined]
    model.content_sha256 = payload[HASH_KEY]  # type: ignore[attr-defined]
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
    meta_json, config_json = json.dumps(meta), json.dumps(model.config.to_dict())
    digest = _export_hash(scripted.state_dict(), meta_json, config_json)
    atomic_write(path, lambda tmp: torch.jit.save(scripted, tmp, _extra_files={
        "metadata.json": meta_json, "config.json": config_json, "weights.sha256": digest}))


def _export_hash(state_dict: Mapping[str, torch.Tensor], meta_json: str, config_json: str) -> str:
    """:func:`content_hash` of an export from its state dict and its two JSON extra files."""
    return content_hash(json.loads(config_json or "{}"), state_dict, json.loads(meta_json or "{}"))


def load_torchscript(path: PathLike) -> tuple:
    """Load an exported file: ``(scripted_module, metadata dict)``; the content hash (exports written since it
    exists) and finite weights are checked, and every error names the file and the fix."""
    extra = {"metadata.json": "", "config.json": "", "weights.sha256": ""}
    _check_zip(path, EXPORT_FIX)
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as first:
        if "mftcalc" not in str(first):
            raise CheckpointError(f"{path} is not a readable TorchScript export ({type(first).__name__}: {first}); "
                                  f"if it is truncated or corrupt, {EXPORT_FIX}") from None
        from mftcalc.kernels.angle import load_library   # a fused export needs the operator library
        load_library()
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a readable TorchScript export ({type(exc).__name__}: {exc}); "
                                  f"if it is truncated or corrupt, {EXPORT_FIX}") from None
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}   # torch returns bytes
    try:
        actual = _export_hash(module.state_dict(), text["metadata.json"], text["config.json"])
    except ValueError as exc:  # malformed JSON (or UTF-8) in the extra files
        raise CheckpointError(f"{path} is corrupt or modified ({exc}); {EXPORT_FIX}") from None
    _check_hash(text["weights.sha256"] or None, actual, path, EXPORT_FIX)
    check_finite(module.state_dict(), path, NONFINITE_FIX)
    return module, json.loads(text["metadata.json"] or "{}")


def load_training_state(path: PathLike) -> Dict[str, Any]:
    """``torch.load`` (weights only) of a training state file (``Trainer`` resume), its model weights checked
    finite; any failure raises :class:`CheckpointError` naming the file and how to restart or restore it."""
    fix = STATE_FIX.format(path=path)
    _check_zip(path, fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, flipped bytes in the pickle, a foreign or unsafe pickle
        raise CheckpointError(f"training state {path} cannot be read, it is truncated or corrupt "
                              f"({type(exc).__name__}: {exc}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        check_finite(state["model"], path, f"Resuming from it would train NaN: {fix}")
    return state


def load_any(path: PathLike, dtype: torch.dtype = torch.float32) -> tuple:
    """Load a checkpoint or a TorchScript export: ``(module, metadata)``; the module is in eval mode.

    TorchScript exports keep the dtype they were exported with unless ``dtype`` differs, in which case
    the module is cast.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {path} does not exist")
    is_script = False
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                is_script = any(name.endswith("constants.pkl") or "/code/" in name for name in zf.namelist())
        except (zipfile.BadZipFile, OSError) as exc:
            raise CheckpointError(f"{path} is not a readable model file ({type(exc).__name__}: {exc}); "
                                  f"{CHECKPOINT_FIX}") from None
    if is_script:
        module, meta = load_torchscript(path)
        return module.to(dtype).eval(), meta
    model = load_model(path, dtype)
    return model, model.metadata  # type: ignore[attr-defined]
