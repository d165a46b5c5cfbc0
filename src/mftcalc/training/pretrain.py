"""Pretraining: several force-field datasets, one model with a dataset-embedded force-field head.

``PretrainConfig`` is mapped once from YAML (``mftcalc train CONFIG.yaml``); :func:`pretrain` reads the datasets,
splits off validation structures, fits the per-dataset element energy shifts, runs the shared
:class:`~mftcalc.training.loop.Trainer` and writes the model checkpoint with its card data and a replay subset.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import model_metadata, save_model
from mftcalc.model.config import PRESETS, BackboneConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.fitting import fit_forcefield_shift, refit_forcefield_shift
from mftcalc.model.mft_model import MFTModel, count_parameters
from mftcalc.schema import option, suggest
from mftcalc.training.forcefield_data import (read_dataset, replay_path, select_structures, split_train_val,
                                              task_domain)
from mftcalc.training.distributed import rank_and_world
from mftcalc.training.evaluate import validation_metrics
from mftcalc.training.loop import Trainer, TrainSettings
from mftcalc.training.losses import ForceFieldPrefactors, check_force_huber
from mftcalc.training.sampler import Source, resolve_batch_size
from mftcalc.training.schedule import ExponentialLR
from mftcalc.training.weight_average import check_decay, final_metrics

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class DatasetSpec:
    """One force-field dataset of pretraining: where it is, how often it is drawn, its batch size and split."""

    name: str = option(help="the dataset's name (its embedding column; info['dataset'] of mixed files)")
    path: str = option(help="a file any reader understands, or a glob pattern of such files (read in sorted order)")
    prob: float = option(1.0, "sampling probability of a step (relative to the other datasets)")
    batch_size: Union[int, str] = option("auto:128", "structures per batch: an integer, or 'auto:N' = N atoms on average")
    val_fraction: float = option(0.05, "share of the molecules (info['qm9_index']) or structures held out")
    max_structures: Optional[int] = option(None, "keep a seeded subsample of this many (seed: seed + position)")
    max_val: int = option(200, "at most this many validation structures")
    replay: int = option(500, "structures of the training part copied into the replay set")
    max_force: Optional[float] = option(None, "drop structures with an atomic force above this (eV/Å)")
    exclude_splits: Optional[str] = option(None, "BOOM split file: drop molecules (info['qm9_index']) in its "
                                                 "ID/OOD test sets")
    exclude_properties: Optional[List[str]] = option(None, "with exclude_splits: only these properties' test sets "
                                                           "(default: every split in the file)")
    init_from: Optional[str] = option(None, "with init: a NEW dataset starts from this dataset's embedding")

    def __post_init__(self) -> None:
        if self.prob < 0:
            raise ValueError(f"dataset {self.name!r}: prob must be >= 0, got {self.prob}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"dataset {self.name!r}: val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class PretrainConfig:
    """The YAML of ``mftcalc train``: the datasets, the model size, the schedule and the outputs (paths relative
    to the working directory)."""

    datasets: List[DatasetSpec] = option(help="the force-field datasets (at least one)")
    preset: str = option("cpu", f"backbone size preset: {', '.join(PRESETS)}")
    backbone: Dict[str, Any] = option(factory=dict, keys_of=BackboneConfig, help="backbone keys overriding the "
                                      "preset's")
    ff_hidden: Tuple[int, ...] = option((128, 128), "hidden widths of the force-field head")
    steps: int = option(10_000, "optimiser steps of the whole run")
    lr0: float = option(1e-3, "start learning rate")
    lr_end: float = option(1e-5, "learning rate at the last step (exponential decay)")
    decay_steps: int = option(500, "steps between learning-rate decays")
    lr_start_step: int = option(0, "the decay starts here (lr0 before): set it to restart the decay of a resumed "
                                   "run")
    prefactors: Dict[str, float] = option(factory=dict, keys_of=ForceFieldPrefactors, help="loss prefactors "
                                          "overriding the defaults")
    grad_clip: float = option(10.0, "gradient norm clip")
    energy_norm: str = option("deepmd", "'deepmd': λ_E·MSE(E)/N as deepmd-kit; 'per_atom': λ_E·MSE(E/N) (N× "
                                        "weaker)")
    ema_decay: float = option(0.0, "> 0: keep an exponential moving average of the weights with this decay per "
                                   "step (0.999: about the last 1,000 steps); val.csv gets its ema/val/... "
                                   "columns beside the raw weights' and model_out holds the average; 0 = off")
    force_huber: float = option(0.0, "force loss: 0 = squared error; > 0 = Huber with this threshold (eV/Å), equal "
                                     "to the squared error below it and linear above (leans the fit towards the MAE)")
    device: str = option("auto", "'cpu', 'cuda[:k]' or 'auto' (CUDA when available)")
    init: Optional[str] = option(None, "start from this trained model: its datasets keep their embeddings, new ones "
                                       "are appended (force-field fine-tuning on your own DFT data); its architecture "
                                       "trains, and where preset, backbone or ff_hidden differ from it, that is said")
    seed: int = option(0, "seed of the model, the splits, the subsamples and the batches")
    log_every: int = option(10, "steps between rows of train.csv")
    val_every: int = option(500, "steps between validations (val.csv, learning_curve.png)")
    checkpoint_every: int = option(50, "steps between training-state writes")
    dtype: str = option("float32", "'float32' or 'float64'")
    out_dir: str = option("runs/pretrain", "train.csv, val.csv and the learning curve go here")
    state_path: str = option("runs/pretrain/state.pt", "the training state (resumed from when it exists)")
    model_out: str = option("models/pretrained.pt", "the model checkpoint")
    replay: bool = option(True, "write the replay subsets beside model_out, one file per domain")
    refit_energy_shift: bool = option(True, "before writing model_out, refit each trained dataset's (prob > 0) "
                                            "per-element energy shift to the model's energy residuals on its "
                                            "training split (least squares, deepmd-kit's change-bias; forces "
                                            "unchanged); the training state keeps the trained shifts")
    heldout_out: Optional[str] = option(None, "write every dataset's validation structures (info['dataset']) here, "
                                              "for retention tests")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("the config needs a non-empty 'datasets' list")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}{suggest(self.preset, list(PRESETS))} (choose one of "
                             f"{', '.join(PRESETS)})")
        backbone_preset(self.preset, **self.backbone)       # the backbone's own checks, now rather than later
        ForceFieldPrefactors(**self.prefactors)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.energy_norm not in ("deepmd", "per_atom"):
            raise ValueError(f"energy_norm must be 'deepmd' or 'per_atom', got {self.energy_norm!r}")
        check_decay(self.ema_decay)
        check_force_huber(self.force_huber)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[Dict[str, Any]] = None,
                  set_pairs: Sequence[str] = ()) -> "PretrainConfig":
        """Load strictly (:mod:`mftcalc.schema`): top-level ``overrides`` and ``--set`` pairs (``a.b=value``,
        ``datasets.0.prob=0.9``) applied first; unknown keys and wrong types are refused naming the key."""
        from mftcalc.schema import apply_overrides, from_mapping, read_yaml
        data = read_yaml(path)
        data.update(overrides or {})
        return from_mapping(cls, apply_overrides(data, set_pairs), str(path))


def load_sources(cfg: PretrainConfig) -> Tuple[List[Source], List[Source], List[Structure]]:
    """Read every dataset; return training sources, validation sources and the replay subset."""
    sources: List[Source] = []
    val_sources: List[Source] = []
    replay: List[Structure] = []
    for k, spec in enumerate(cfg.datasets):
        structures = select_structures(read_dataset(spec.path), spec.name, spec.path, spec.exclude_splits,
                                       spec.exclude_properties, spec.max_force, spec.max_structures, cfg.seed + k)
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


def source_domains(sources: Sequence[Source], cutoff: Optional[float] = None) -> Dict[str, Dict[str, Any]]:
    """``{dataset: {"elements": [Z...], "periodic": bool}}`` of the training sources (``metadata["dataset_domains"]``,
    which the calculator's dataset rule reads); a source mixing molecules and crystals is left out. ``cutoff``
    (Å, the model's): molecules in periodic boxes wider than it count as molecules."""
    from mftcalc.calculators.domains import domain_of
    domains = {src.name: domain_of(src.structures, cutoff) for src in sources}
    return {name: domain for name, domain in domains.items() if domain is not None}


def build_model(cfg: PretrainConfig) -> MFTModel:
    """A fresh model of the configured size with one force-field head over the configured datasets."""
    torch.manual_seed(cfg.seed)
    model_cfg = ModelConfig(backbone=backbone_preset(cfg.preset, **cfg.backbone),
                            heads={"forcefield": default_forcefield_head(len(cfg.datasets), tuple(cfg.ff_hidden))},
                            datasets=[d.name for d in cfg.datasets])
    return MFTModel(model_cfg)


def architecture_notice(cfg: PretrainConfig, base: MFTModel) -> Optional[str]:
    """A line saying which of the config's architecture keys (``preset``, ``backbone``, ``ff_hidden``) differ from
    the ``init`` model's, whose architecture is the one trained; None when they agree."""
    wanted = asdict(backbone_preset(cfg.preset, **cfg.backbone))
    have = asdict(base.config.backbone)
    differ = [f"{k} {have.get(k)!r} (config: {v!r})" for k, v in wanted.items() if have.get(k) != v]
    head = base.config.heads.get("forcefield")
    if head is not None and tuple(head.hidden) != tuple(cfg.ff_hidden):
        differ.append(f"ff_hidden {list(head.hidden)} (config: {list(cfg.ff_hidden)})")
    if not differ:
        return None
    return (f"init {cfg.init}: training its own architecture, not the config's (preset {cfg.preset!r}, backbone, "
            f"ff_hidden): " + ", ".join(differ))


def pretrain(cfg: PretrainConfig, stop_at: Optional[int] = None, time_budget_s: Optional[float] = None
             ) -> Dict[str, Any]:
    """Run (or resume) pretraining, until ``cfg.steps`` or earlier (``stop_at`` step, ``time_budget_s`` seconds);
    writes the model checkpoint (also when stopped early) and returns the card data stored in its metadata."""
    started = time.time()
    sources, val_sources, replay = load_sources(cfg)
    base_elements: List[int] = []
    if cfg.init:
        from mftcalc.model.checkpoint import load_model
        from mftcalc.model.datasets import extend_datasets
        base = load_model(cfg.init, DTYPES[cfg.dtype])
        notice = architecture_notice(cfg, base)
        if notice and rank_and_world()[0] == 0:
            print(notice, file=sys.stderr)
        base_elements = list(getattr(base, "metadata", {}).get("elements", []))
        model = extend_datasets(base, [d.name for d in cfg.datasets],
                                {d.name: d.init_from for d in cfg.datasets if d.init_from})
        names = list(model.config.datasets)
        for source in sources + val_sources:          # embedding index = position in the extended model
            source.dataset_index = names.index(source.name)
        refit = [s for s in sources if s.name not in base.config.datasets]   # old datasets keep their shifts
    else:
        model = build_model(cfg)
        refit = sources
    for source in refit:
        fit_forcefield_shift(model.ff_heads["forcefield"], source.structures,
                             [source.dataset_index] * len(source.structures))
    settings = TrainSettings(
        num_steps=cfg.steps, lr=ExponentialLR(cfg.lr0, cfg.lr_end, cfg.steps, cfg.decay_steps, cfg.lr_start_step),
        prefactors=ForceFieldPrefactors(**cfg.prefactors), grad_clip=cfg.grad_clip, seed=cfg.seed,
        energy_norm=cfg.energy_norm, force_huber=cfg.force_huber, ema_decay=cfg.ema_decay, device=cfg.device,
        log_every=cfg.log_every, val_every=cfg.val_every, checkpoint_every=cfg.checkpoint_every,
        dtype=DTYPES[cfg.dtype], progress=cfg.progress)
    origin = {"init": base.content_sha256} if cfg.init else {}
    trainer = Trainer(model, sources, settings, cfg.out_dir, cfg.state_path, val_sources, origin=origin)
    # the card states the exported weights' errors: with ema_decay the average's, not the trained weights'
    metrics = final_metrics(trainer.run(stop_at=stop_at, time_budget_s=time_budget_s), trainer.ema is not None)
    refit: Dict[str, Dict[str, float]] = {}
    if cfg.refit_energy_shift and trainer.rank == 0:
        # the exported model is a copy: the training state (already written) keeps the shifts it trained with
        model = copy.deepcopy(trainer.final_model)
        trained = [s for s in sources if s.prob > 0]          # prob 0: validation only, keeps its shift
        iterator = trained
        if cfg.progress:
            from tqdm.auto import tqdm
            iterator = tqdm(trained, desc="refit energy shifts", unit="dataset")
        for source in iterator:
            refit[source.name] = refit_forcefield_shift(model, source.structures, source.dataset_index,
                                                        seed=cfg.seed)
        if val_sources:
            metrics = {"step": float(trainer.step), **validation_metrics(model, val_sources)}
    else:
        model = trainer.final_model
    if not metrics and val_sources and trainer.rank == 0:   # stopped between validations: validate now
        metrics = final_metrics({"step": float(trainer.step), **trainer.validate()}, trainer.ema is not None)
    elements = sorted({int(z) for src in sources for s in src.structures for z in np.unique(s.numbers)}
                      | set(base_elements))
    domains = dict(getattr(base, "metadata", {}).get("dataset_domains", {})) if cfg.init else {}
    domains.update(source_domains(sources, float(model.e_rcut)))
    card = {"config": {**asdict(cfg), "datasets": [asdict(d) for d in cfg.datasets]},
            "steps": trainer.step, "train_wall_s": trainer.wall, "parameters": count_parameters(model),
            "datasets": {s.name: {"train": len(s.structures), "batch_size": s.batch_size} for s in sources},
            "validation": metrics, "energy_shift_refit": refit, "elapsed_this_call_s": time.time() - started}
    if cfg.init:
        # the lineage: the init's own pretraining card (which holds its init, and so on) and its growth, if any
        base_meta = getattr(base, "metadata", {})
        card["init"] = {"path": str(cfg.init), "content_sha256": base.content_sha256,
                        "pretraining": base_meta.get("pretraining"), "grown_from": base_meta.get("grown_from")}
    if trainer.rank == 0:
        save_model(model, cfg.model_out, model_metadata(model, elements, pretraining=card, dataset_domains=domains))
        if cfg.replay:
            by_domain: Dict[str, List[Structure]] = {}
            for s in replay:     # by its dataset's domain: a crystal set's boxed atoms go with the crystals
                known = domains.get(s.info["dataset"])
                domain = task_domain([s]) if known is None else ("materials" if known["periodic"] else "molecules")
                by_domain.setdefault(domain, []).append(s)
            for domain, structures in by_domain.items():
                write_extxyz(structures, replay_path(cfg.model_out, domain))
        if cfg.heldout_out:
            write_extxyz([s.with_labels(info={**s.info, "dataset": src.name}) for src in val_sources
                          for s in src.structures], cfg.heldout_out)
    return card
