"""Pretraining: several force-field datasets, one model with a dataset-embedded force-field head.

``PretrainConfig`` is mapped once from YAML (``mftcalc train CONFIG.yaml``); :func:`pretrain` reads the datasets,
splits off validation structures, fits the per-dataset element energy shifts, runs the shared
:class:`~mftcalc.training.loop.Trainer` and writes the model checkpoint with its card data and a replay subset.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml

from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import model_metadata, save_model
from mftcalc.model.config import ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.fitting import fit_forcefield_shift
from mftcalc.model.mft_model import MFTModel, count_parameters
from mftcalc.training.loop import Trainer, TrainSettings
from mftcalc.training.losses import ForceFieldPrefactors
from mftcalc.training.sampler import Source, resolve_batch_size
from mftcalc.training.schedule import ExponentialLR

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class DatasetSpec:
    """One force-field dataset: a path any reader understands (or a glob pattern of such files, read in sorted
    order), its sampling probability and batch size."""

    name: str
    path: str
    prob: float = 1.0
    batch_size: Any = "auto:128"
    val_fraction: float = 0.05
    max_structures: Optional[int] = None
    max_val: int = 200
    replay: int = 500          # structures of the training part copied into the replay set
    max_force: Optional[float] = None   # drop structures with an atomic force above this (eV/Å)


@dataclass
class PretrainConfig:
    """Everything ``mftcalc train`` needs; paths are relative to the working directory."""

    datasets: List[DatasetSpec]
    preset: str = "cpu"
    backbone: Dict[str, Any] = field(default_factory=dict)
    ff_hidden: Tuple[int, ...] = (128, 128)
    steps: int = 10_000
    lr0: float = 1e-3
    lr_end: float = 1e-5
    decay_steps: int = 500
    lr_start_step: int = 0     # the decay starts here (lr0 before): set it to restart the decay of a resumed run
    prefactors: Dict[str, float] = field(default_factory=dict)
    grad_clip: float = 10.0
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 50
    dtype: str = "float32"
    out_dir: str = "runs/pretrain"
    state_path: str = "runs/pretrain/state.pt"
    model_out: str = "models/pretrained.pt"
    replay_out: Optional[str] = "models/pretrained_replay.extxyz.gz"
    heldout_out: Optional[str] = None      # validation structures of every dataset (info["dataset"]), for retention tests
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[Dict[str, Any]] = None) -> "PretrainConfig":
        data = yaml.safe_load(Path(path).read_text()) or {}
        data.update(overrides or {})
        if "datasets" not in data or not data["datasets"]:
            raise ValueError(f"{path}: the config needs a non-empty 'datasets' list")
        data["datasets"] = [DatasetSpec(**d) for d in data["datasets"]]
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        if "ff_hidden" in data:
            data["ff_hidden"] = tuple(data["ff_hidden"])
        return cls(**data)


def read_dataset(path: str) -> List[Structure]:
    """Structures of one file, or of every file matching a glob pattern (sorted); errors name the pattern."""
    if any(ch in path for ch in "*?["):
        import glob
        files = sorted(glob.glob(path))
        if not files:
            raise FileNotFoundError(f"no files match {path!r}")
        return [s for f in files for s in read_structures(f)]
    return read_structures(path)


def split_train_val(structures: List[Structure], val_fraction: float, max_val: int, seed: int
                    ) -> Tuple[List[Structure], List[Structure]]:
    """Seeded split into training and validation structures, stable when a dataset grows.

    Structures are grouped by ``info["qm9_index"]`` when present (all conformers of a molecule fall on the same
    side, so validation molecules are unseen in training), else by position in the file; a group is validation
    when a seeded integer hash of its key falls below ``val_fraction``. At most ``max_val`` validation
    structures are kept (the first ones); the rest of the validation groups are not used for training either.
    """
    val: List[Structure] = []
    train: List[Structure] = []
    for k, s in enumerate(structures):
        key = int(s.info.get("qm9_index", k))
        h = ((key * 2654435761 + seed * 40503 + 12345) % 4294967296) / 4294967296.0
        if h < val_fraction:
            if len(val) < max_val:
                val.append(s)
        else:
            train.append(s)
    if not train:
        raise ValueError("validation split left no training structures; lower val_fraction")
    return train, val


def load_sources(cfg: PretrainConfig) -> Tuple[List[Source], List[Source], List[Structure]]:
    """Read every dataset; return training sources, validation sources and the replay subset."""
    sources: List[Source] = []
    val_sources: List[Source] = []
    replay: List[Structure] = []
    for k, spec in enumerate(cfg.datasets):
        structures = read_dataset(spec.path)
        if spec.max_force is not None:
            structures = [s for s in structures
                          if s.forces is None or np.sqrt((s.forces ** 2).sum(1)).max() <= spec.max_force]
        if spec.max_structures is not None and len(structures) > spec.max_structures:
            keep = np.sort(np.random.default_rng(cfg.seed + k).permutation(len(structures))[: spec.max_structures])
            structures = [structures[i] for i in keep]
        train, val = split_train_val(structures, spec.val_fraction, spec.max_val, cfg.seed + 100 + k)
        batch_size = resolve_batch_size(spec.batch_size, train)
        sources.append(Source(spec.name, train, "forcefield", k, batch_size, spec.prob))
        if val:
            val_sources.append(Source(spec.name, val, "forcefield", k, batch_size, 1.0))
        pick = np.random.default_rng(cfg.seed + 200 + k).permutation(len(train))[: spec.replay]
        for i in np.sort(pick):
            s = train[int(i)]
            replay.append(s.with_labels(info={**s.info, "dataset": spec.name}))
    return sources, val_sources, replay


def build_model(cfg: PretrainConfig) -> MFTModel:
    """A fresh model of the configured size with one force-field head over the configured datasets."""
    torch.manual_seed(cfg.seed)
    model_cfg = ModelConfig(backbone=backbone_preset(cfg.preset, **cfg.backbone),
                            heads={"forcefield": default_forcefield_head(len(cfg.datasets), tuple(cfg.ff_hidden))},
                            datasets=[d.name for d in cfg.datasets])
    return MFTModel(model_cfg)


def pretrain(cfg: PretrainConfig, stop_at: Optional[int] = None, time_budget_s: Optional[float] = None
             ) -> Dict[str, Any]:
    """Run (or resume) pretraining, until ``cfg.steps`` or earlier (``stop_at`` step, ``time_budget_s`` seconds);
    writes the model checkpoint (also when stopped early) and returns the card data stored in its metadata."""
    started = time.time()
    sources, val_sources, replay = load_sources(cfg)
    model = build_model(cfg)
    for source in sources:
        fit_forcefield_shift(model.ff_heads["forcefield"], source.structures,
                             [source.dataset_index] * len(source.structures))
    settings = TrainSettings(
        num_steps=cfg.steps, lr=ExponentialLR(cfg.lr0, cfg.lr_end, cfg.steps, cfg.decay_steps, cfg.lr_start_step),
        prefactors=ForceFieldPrefactors(**cfg.prefactors), grad_clip=cfg.grad_clip, seed=cfg.seed,
        log_every=cfg.log_every, val_every=cfg.val_every, checkpoint_every=cfg.checkpoint_every,
        dtype=DTYPES[cfg.dtype], progress=cfg.progress)
    trainer = Trainer(model, sources, settings, cfg.out_dir, cfg.state_path, val_sources)
    metrics = trainer.run(stop_at=stop_at, time_budget_s=time_budget_s)
    if not metrics and val_sources and trainer.rank == 0:   # stopped between validations: validate now
        metrics = {"step": float(trainer.step), **trainer.validate()}
    elements = sorted({int(z) for src in sources for s in src.structures for z in np.unique(s.numbers)})
    card = {"config": {**asdict(cfg), "datasets": [asdict(d) for d in cfg.datasets]},
            "steps": trainer.step, "train_wall_s": trainer.wall, "parameters": count_parameters(model),
            "datasets": {s.name: {"train": len(s.structures), "batch_size": s.batch_size} for s in sources},
            "validation": metrics, "elapsed_this_call_s": time.time() - started}
    if trainer.rank == 0:
        save_model(model, cfg.model_out, model_metadata(model, elements, pretraining=card))
        if cfg.replay_out:
            write_extxyz(replay, cfg.replay_out)
        if cfg.heldout_out:
            write_extxyz([s.with_labels(info={**s.info, "dataset": src.name}) for src in val_sources
                          for s in src.structures], cfg.heldout_out)
    return card
