"""Pretraining: several force-field datasets, one model with a dataset-embedded force-field head.

``PretrainConfig`` is mapped once from YAML (``mftcalc train CONFIG.yaml``); :func:`pretrain` reads the datasets,
splits off validation structures, fits the per-dataset element energy shifts, runs the shared
:class:`~mftcalc.training.loop.Trainer` and writes the model checkpoint with its card data and a replay subset.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
    exclude_splits: Optional[str] = None   # BOOM split file: drop molecules (info["qm9_index"]) in its test sets
    exclude_properties: Optional[List[str]] = None   # ... of these properties (default: every split in the file)
    init_from: Optional[str] = None     # with PretrainConfig.init, a NEW dataset starts from this one's embedding


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
    energy_norm: str = "deepmd"   # "deepmd": λ_E·MSE(E)/N as deepmd-kit; "per_atom": λ_E·MSE(E/N) (N× weaker)
    device: str = "cpu"           # "cpu", "cuda[:k]" or "auto"
    init: Optional[str] = None    # start from this trained model: its datasets keep their embeddings, new ones are
                                  # appended (force-field fine-tuning on your own DFT data)
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 50
    dtype: str = "float32"
    out_dir: str = "runs/pretrain"
    state_path: str = "runs/pretrain/state.pt"
    model_out: str = "models/pretrained.pt"
    replay: bool = True        # write the replay subsets beside model_out, one file per domain (replay_path)
    heldout_out: Optional[str] = None      # validation structures of every dataset (info["dataset"]), for retention tests
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Optional[Dict[str, Any]] = None,
                  set_pairs: Sequence[str] = ()) -> "PretrainConfig":
        """Load strictly (:mod:`mftcalc.schema`): top-level ``overrides`` and ``--set`` pairs (``a.b=value``,
        ``datasets.0.prob=0.9``) applied first; unknown keys and wrong types are refused naming the key."""
        from mftcalc.schema import ConfigError, apply_overrides, from_mapping
        data = read_yaml(path)
        data.update(overrides or {})
        data = apply_overrides(data, set_pairs)
        if not data.get("datasets"):
            raise ConfigError(f"{path}: the config needs a non-empty 'datasets' list")
        return from_mapping(cls, data, str(path))


def read_yaml(path: str | Path) -> Dict[str, Any]:
    """A YAML mapping from ``path``; a missing file, a parse error or a non-mapping names the file."""
    from mftcalc.schema import ConfigError
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}")
    return data


def task_domain(structures: Sequence[Structure]) -> str:
    """``materials`` when any structure is periodic, else ``molecules``: which replay set matches a task."""
    return "materials" if any(bool(np.any(s.pbc)) for s in structures) else "molecules"


def replay_path(model_path: str | Path, domain: str) -> Path:
    """``<checkpoint stem>_replay_<domain>.extxyz.gz`` beside a pretrained checkpoint (``domain``: molecules or
    materials), where pretraining writes its replay subsets and MFT looks for its default auxiliary data."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}_replay_{domain}.extxyz.gz")


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


def drop_test_molecules(structures: List[Structure], splits_path: str, properties: Optional[List[str]],
                        name: str = "") -> List[Structure]:
    """Structures whose ``info["qm9_index"]`` is in no ID/OOD test set of ``properties`` in a BOOM split file.

    Raises when a structure has no ``qm9_index`` (it could not be checked) or a property has no split."""
    from mftcalc.data.boom import load_splits, test_union

    splits = load_splits(splits_path)
    names = list(splits) if properties is None else list(properties)
    unknown = [p for p in names if p not in splits]
    if unknown:
        raise ValueError(f"dataset {name!r}: exclude_properties {unknown} have no split in {splits_path} "
                         f"(it has {sorted(splits)})")
    excluded = set(test_union({p: splits[p] for p in names}).tolist())
    unkeyed = sum("qm9_index" not in s.info for s in structures)
    if unkeyed:
        raise ValueError(f"dataset {name!r}: {unkeyed} structures have no info['qm9_index'], so exclude_splits "
                         "cannot check them; drop exclude_splits for this dataset or label it with mftcalc label")
    return [s for s in structures if int(s.info["qm9_index"]) not in excluded]


def load_forcefield_set(name: str, spec: Any) -> List[Structure]:
    """Force-field structures of dataset ``name`` for fine-tuning (MFT's auxiliary task).

    ``spec`` is a path (any reader, or a glob) or a mapping with ``path`` and optionally ``exclude_splits`` and
    ``exclude_properties`` (drop molecules in BOOM test sets), ``max_force`` (eV/Å), ``max_structures`` and
    ``holdout: {val_fraction, max_val, seed}`` (drop the validation molecules of pretraining: use the pretraining
    config's values, ``seed`` = its seed + 100 + the dataset's position). ``max_structures`` (with
    ``subsample_seed``; pretraining's is its seed + the dataset's position) subsamples before the holdout, as
    pretraining does. Structures carrying ``info["dataset"]`` are kept only when it equals ``name`` (a mixed file
    never lends one dataset's structures to another's embedding); none left is an error.
    """
    if isinstance(spec, (str, Path)):
        spec = {"path": str(spec)}
    if not isinstance(spec, dict) or "path" not in spec:
        raise ValueError(f"force-field data {name!r}: give a path or a mapping with 'path', got {spec!r}")
    allowed = {"path", "exclude_splits", "exclude_properties", "max_force", "max_structures", "subsample_seed",
               "holdout"}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"force-field data {name!r}: unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
    structures = read_dataset(spec["path"])
    tagged = [s for s in structures if "dataset" in s.info]
    if tagged:
        structures = [s for s in structures if s.info.get("dataset", name) == name]
        if not structures:
            raise ValueError(f"{spec['path']} holds no structures of dataset {name!r} (info['dataset'] values: "
                             f"{sorted({str(s.info['dataset']) for s in tagged})})")
    if spec.get("exclude_splits"):
        structures = drop_test_molecules(structures, spec["exclude_splits"], spec.get("exclude_properties"), name)
    if spec.get("max_force") is not None:
        structures = [s for s in structures
                      if s.forces is None or np.sqrt((s.forces ** 2).sum(1)).max() <= float(spec["max_force"])]
    if spec.get("max_structures") is not None and len(structures) > int(spec["max_structures"]):
        rng = np.random.default_rng(int(spec.get("subsample_seed", 0)))
        keep = np.sort(rng.permutation(len(structures))[: int(spec["max_structures"])])
        structures = [structures[i] for i in keep]
    if spec.get("holdout"):
        h = dict(spec["holdout"])
        structures, _ = split_train_val(structures, float(h.get("val_fraction", 0.05)), int(h.get("max_val", 200)),
                                        int(h["seed"]))
    if not structures:
        raise ValueError(f"force-field data {name!r}: no structures left after the filters of {spec}")
    return structures


def load_sources(cfg: PretrainConfig) -> Tuple[List[Source], List[Source], List[Structure]]:
    """Read every dataset; return training sources, validation sources and the replay subset."""
    sources: List[Source] = []
    val_sources: List[Source] = []
    replay: List[Structure] = []
    for k, spec in enumerate(cfg.datasets):
        structures = read_dataset(spec.path)
        tagged = [s for s in structures if "dataset" in s.info]
        if tagged:                        # a mixed file (e.g. a replay set): only this dataset's structures
            structures = [s for s in structures if s.info.get("dataset", spec.name) == spec.name]
            if not structures:
                raise ValueError(f"{spec.path} holds no structures of dataset {spec.name!r} (its info['dataset'] "
                                 f"values: {sorted({str(s.info['dataset']) for s in tagged})})")
        if spec.exclude_splits is not None:
            structures = drop_test_molecules(structures, spec.exclude_splits, spec.exclude_properties, spec.name)
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


def source_domains(sources: Sequence[Source]) -> Dict[str, Dict[str, Any]]:
    """``{dataset: {"elements": [Z...], "periodic": bool}}`` of the training sources (``metadata["dataset_domains"]``,
    which the calculator's dataset rule reads); a source mixing molecules and crystals is left out."""
    from mftcalc.calculators.domains import domain_of
    domains = {src.name: domain_of(src.structures) for src in sources}
    return {name: domain for name, domain in domains.items() if domain is not None}


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
    base_elements: List[int] = []
    if cfg.init:
        from mftcalc.model.checkpoint import load_model
        from mftcalc.model.datasets import extend_datasets
        base = load_model(cfg.init, DTYPES[cfg.dtype])
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
        energy_norm=cfg.energy_norm, device=cfg.device,
        log_every=cfg.log_every, val_every=cfg.val_every, checkpoint_every=cfg.checkpoint_every,
        dtype=DTYPES[cfg.dtype], progress=cfg.progress)
    trainer = Trainer(model, sources, settings, cfg.out_dir, cfg.state_path, val_sources)
    metrics = trainer.run(stop_at=stop_at, time_budget_s=time_budget_s)
    if not metrics and val_sources and trainer.rank == 0:   # stopped between validations: validate now
        metrics = {"step": float(trainer.step), **trainer.validate()}
    elements = sorted({int(z) for src in sources for s in src.structures for z in np.unique(s.numbers)}
                      | set(base_elements))
    domains = dict(getattr(base, "metadata", {}).get("dataset_domains", {})) if cfg.init else {}
    domains.update(source_domains(sources))
    card = {"config": {**asdict(cfg), "datasets": [asdict(d) for d in cfg.datasets]},
            "steps": trainer.step, "train_wall_s": trainer.wall, "parameters": count_parameters(model),
            "datasets": {s.name: {"train": len(s.structures), "batch_size": s.batch_size} for s in sources},
            "validation": metrics, "elapsed_this_call_s": time.time() - started}
    if trainer.rank == 0:
        save_model(model, cfg.model_out, model_metadata(model, elements, pretraining=card, dataset_domains=domains))
        if cfg.replay:
            by_domain: Dict[str, List[Structure]] = {}
            for s in replay:
                by_domain.setdefault(task_domain([s]), []).append(s)
            for domain, structures in by_domain.items():
                write_extxyz(structures, replay_path(cfg.model_out, domain))
        if cfg.heldout_out:
            write_extxyz([s.with_labels(info={**s.info, "dataset": src.name}) for src in val_sources
                          for s in src.structures], cfg.heldout_out)
    return card
