"""The YAML schema of ``mftcalc finetune`` (:class:`FinetuneConfig`) and ``mftcalc bench`` (:class:`BenchConfig`),
each validated whole when it loads, before any data is read.

A bench grid is every (task, training fraction, fold, strategy or variant, seed) cell; loading it builds the
fine-tuning settings of every strategy and variant once, checks every task, fraction, seed list and force-field
data spec, so that a typo in the last variant fails now with a "did you mean", not hours into the run.
:meth:`BenchConfig.missing_paths` lists the files it names that do not exist (checked before a run starts).
"""
from __future__ import annotations

import glob
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from mftcalc.schema import ConfigError, from_mapping, load_config, option, suggest
from mftcalc.training.finetune import FinetuneSettings
from mftcalc.training.forcefield_data import ForceFieldData
from mftcalc.training.strategies import get_strategy, strategy_names

TASK_KINDS = ("qm9", "matbench", "file")


@dataclass
class TaskSpec:
    """One property task: ``kind`` qm9 (a QM9 property on its BOOM split), matbench (a MatBench dataset on folds
    of one kind) or file (your own labelled structures, or a SMILES CSV)."""

    kind: str = option(help=f"one of {', '.join(TASK_KINDS)}")
    property: Optional[str] = option(None, "qm9: the QM9 property; file: the info key (or CSV column) holding it")
    dataset: Optional[str] = option(None, "matbench: the MatBench dataset")
    folds: str = option("random", "matbench: the fold kind (random, LOCO, SparseXcluster, SparseXsingle, "
                                  "SparseYcluster, SparseYsingle)")
    fold_indices: List[int] = option(factory=lambda: [0], help="matbench: which folds of that kind")
    train_fraction: float = option(1.0, "share of the training part used, in (0, 1] (bench: fractions overrides)")
    path: Optional[str] = option(None, "file: the labelled structures (any format read_structures reads)")
    unit: str = option("", "file: the property's unit")
    intensive: bool = option(True, "file: the head averages per-atom terms (false: sums them)")
    val_path: Optional[str] = option(None, "file: validation structures (default: val_fraction of path)")
    val_fraction: float = option(0.1, "file: seeded validation share of path, in (0, 1)")
    test_path: Optional[str] = option(None, "file: test structures, scored at the end")
    frame_params: Dict[str, str] = option(factory=dict, help="file: {info key: unit} of per-structure conditions "
                                          "the property depends on (temperature, pressure, charge, ...), read "
                                          "from every frame and fed to the property head beside the structure")
    group_key: Optional[str] = option(None, "file: one label per group of frames (assemblies): the info key naming "
                                            "each frame's group; its components are pooled by a group head")
    weight_key: str = option("weight", "file, with group_key: the info key of each component's weight in its "
                                       "group (default 1 when a frame lacks it)")

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task kind {self.kind!r}{suggest(str(self.kind), list(TASK_KINDS))}; use qm9, "
                             "matbench or file")
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.kind == "file" and not (self.path and self.property):
            raise ValueError("a file task needs path and property")
        if self.frame_params and self.kind != "file":
            raise ValueError(f"frame_params are for file tasks (your own data); a {self.kind} task has none")
        if self.group_key and self.kind != "file":
            raise ValueError(f"group_key is for file tasks (your own data); a {self.kind} task has one structure "
                             "per label")
        if self.kind == "file" and not self.val_path and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.kind == "qm9":
            from mftcalc.data.qm9 import QM9_PROPERTIES
            if self.property not in QM9_PROPERTIES:
                raise ValueError(f"QM9 has no property {self.property!r}{suggest(str(self.property), list(QM9_PROPERTIES))}"
                                 f" (choose one of {list(QM9_PROPERTIES)})")
        if self.kind == "matbench":
            from mftcalc.data.matbench import FOLD_KINDS, MATBENCH_DATASETS
            if self.dataset not in MATBENCH_DATASETS:
                raise ValueError(f"MatBench has no dataset {self.dataset!r}"
                                 f"{suggest(str(self.dataset), list(MATBENCH_DATASETS))} (choose one of "
                                 f"{list(MATBENCH_DATASETS)})")
            if self.folds not in FOLD_KINDS:
                raise ValueError(f"MatBench has no fold kind {self.folds!r}{suggest(self.folds, list(FOLD_KINDS))} "
                                 f"(choose one of {list(FOLD_KINDS)})")
            if not self.fold_indices or min(self.fold_indices) < 0:
                raise ValueError(f"fold_indices must be a non-empty list of folds >= 0, got {self.fold_indices}")

    def paths(self) -> List[str]:
        """The files this task names."""
        return [p for p in (self.path, self.val_path, self.test_path) if p]


@dataclass
class Variant:
    """A named strategy variant of a bench grid (an ablation), usable in ``strategies`` like a strategy name."""

    strategy: str = option(help=f"the strategy it varies: {', '.join(strategy_names())}")
    settings: Dict[str, Any] = option(factory=dict, keys_of=FinetuneSettings,
                                      help="settings overriding the bench's settings")
    ff_data: Dict[str, Union[str, ForceFieldData]] = option(
        factory=dict, help="force-field data replacing the bench's ff_data (strategies with force-field data)")

    def __post_init__(self) -> None:
        strategy = get_strategy(self.strategy)
        if self.ff_data and not strategy.forcefield_data:
            raise ValueError(f"ff_data is only used by strategies that train on force-field data; strategy "
                             f"{self.strategy!r} does not: drop it")


def _ff_paths(specs: Dict[str, Union[str, ForceFieldData]]) -> List[str]:
    return [spec if isinstance(spec, str) else spec.path for spec in specs.values()] + [
        spec.exclude_splits for spec in specs.values() if isinstance(spec, ForceFieldData) and spec.exclude_splits]


def _missing(paths: Sequence[str]) -> List[str]:
    """The paths (files, directories or glob patterns) that match nothing."""
    return [p for p in paths if not (glob.glob(p) if any(ch in p for ch in "*?[") else Path(p).exists())]


@dataclass
class BenchConfig:
    """The YAML of ``mftcalc bench``: strategies × tasks × seeds × training fractions, and where the inputs are."""

    pretrained: str = option(help="the pretrained checkpoint")
    out_dir: str = option(help="results.json, summary.md and one directory per cell go here")
    tasks: List[TaskSpec] = option(help="the property tasks")
    strategies: List[str] = option(factory=lambda: ["scratch", "ft", "lp", "mft"],
                                   help="strategy names or names under variants")
    seeds: List[int] = option(factory=lambda: [0, 1], help="seeds of every strategy (each draws its own subset)")
    strategy_seeds: Dict[str, List[int]] = option(factory=dict, help="per-strategy seeds (else seeds)")
    fractions: Optional[List[float]] = option(None, "data-efficiency mode: these training fractions replace each "
                                                    "task's train_fraction")
    settings: Dict[str, Any] = option(factory=dict, keys_of=FinetuneSettings, help="settings of every cell")
    qm9_splits: Optional[str] = option(None, "BOOM split file (default: computed from QM9)")
    qm9_max_eval: Optional[int] = option(None, "cap the QM9 validation and test sets (seeded subsample)")
    matbench_path: Optional[str] = option(None, "directory of the MatBench data (matbench tasks)")
    ff_eval: Dict[str, str] = option(factory=dict, help="dataset name -> held-out force-field file (filtered by "
                                                        "info['dataset']): force-field retention of every cell")
    ff_data: Dict[str, Union[str, ForceFieldData]] = option(
        factory=dict, help="auxiliary force-field data of strategies that train on it (default: the "
                           "domain-matched replay set beside the pretrained checkpoint)")
    keep_states: bool = option(False, "keep each finished cell's training state (deleted by default: a few MB each)")
    variants: Dict[str, Variant] = option(factory=dict, help="named strategy variants (ablations)")

    def __post_init__(self) -> None:
        names = strategy_names() + list(self.variants)
        for name in self.strategies:
            if name not in names:
                raise ConfigError(f"unknown strategy {name!r}{suggest(str(name), names)}: use one of "
                                  f"{strategy_names()} or a name under variants ({sorted(self.variants)})")
        stray = set(self.strategy_seeds) - set(self.strategies)
        if stray:
            raise ConfigError(f"strategy_seeds names {sorted(stray)}, which are not in strategies {self.strategies}")
        bad = [f for f in self.fractions or [] if not 0 < f <= 1]
        if bad:
            raise ConfigError(f"fractions must lie in (0, 1], got {bad}")
        if not self.tasks:
            raise ConfigError("the grid needs at least one task")
        for name in dict.fromkeys(list(self.strategies) + list(self.variants)):
            self.cell_settings(name, 0, False)          # every strategy's and variant's settings, built once

    @classmethod
    def from_yaml(cls, path: str | Path, set_pairs: Sequence[str] = ()) -> "BenchConfig":
        """Load strictly (:mod:`mftcalc.schema`, ``--set`` pairs applied first); the whole grid is validated."""
        return load_config(cls, path, set_pairs)

    def variant(self, name: str) -> Variant:
        """The variant ``name``, or a plain strategy ``name`` as a variant without overrides."""
        return self.variants[name] if name in self.variants else Variant(strategy=name)

    def cell_settings(self, name: str, seed: int, progress: bool = True) -> FinetuneSettings:
        """The fine-tuning settings of strategy or variant ``name`` at ``seed``."""
        variant = self.variant(name)
        merged = {**self.settings, **variant.settings, "strategy": variant.strategy, "seed": seed,
                  "progress": progress}
        return from_mapping(FinetuneSettings, merged, f"settings of strategy {name!r}")

    def forcefield_data(self, name: str) -> Optional[Dict[str, Union[str, ForceFieldData]]]:
        """The force-field data of strategy or variant ``name`` (None: the replay set beside the checkpoint, or
        none for a strategy without force-field data)."""
        variant = self.variant(name)
        if not get_strategy(variant.strategy).forcefield_data:
            return None
        return variant.ff_data or self.ff_data or None

    def select(self, strategies: Optional[Sequence[str]] = None, seeds: Optional[Sequence[int]] = None
               ) -> "BenchConfig":
        """The grid restricted to some strategies (names of strategies or variants) and seeds, validated."""
        out = self
        if strategies is not None:
            out = replace(out, strategies=list(strategies),
                          strategy_seeds={k: v for k, v in out.strategy_seeds.items() if k in strategies})
        if seeds is not None:
            out = replace(out, seeds=list(seeds),
                          strategy_seeds={k: [s for s in v if s in seeds] for k, v in out.strategy_seeds.items()})
        return out

    def cells(self) -> Iterator[Tuple[str, TaskSpec, float, Optional[int], str, int]]:
        """``(key, task, fraction, fold, strategy, seed)`` of every cell, in config order."""
        for task in self.tasks:
            for frac in (self.fractions or [task.train_fraction]):
                folds = task.fold_indices if task.kind == "matbench" else [None]
                for fold in folds:
                    for strategy in self.strategies:
                        for seed in self.strategy_seeds.get(strategy, self.seeds):
                            name = (f"{task.dataset}-{task.folds}-{fold}" if task.kind == "matbench"
                                    else task.property)
                            key = f"{task.kind}:{name}|{strategy}|seed{seed}|frac{frac:g}"
                            yield key, task, frac, fold, strategy, seed

    def missing_paths(self) -> List[str]:
        """The files the grid names (checkpoint, splits, MatBench, task files, force-field data of the selected
        strategies, held-out sets) that do not exist."""
        paths = [self.pretrained] + [p for p in (self.qm9_splits, self.matbench_path) if p]
        paths += [p for t in self.tasks for p in t.paths()] + list(self.ff_eval.values())
        for name in self.strategies:
            paths += _ff_paths(self.forcefield_data(name) or {})
        return _missing(list(dict.fromkeys(paths)))


@dataclass
class FinetuneConfig:
    """The YAML of ``mftcalc finetune``: one task, its settings, inputs and outputs."""

    out_dir: str = option(help="model.pt (best on validation), curves, parity plot and the training state go here")
    task: TaskSpec = option(help="the property task")
    pretrained: Optional[str] = option(None, "the pretrained checkpoint (scratch: it gives the backbone size)")
    settings: Dict[str, Any] = option(factory=dict, keys_of=FinetuneSettings, help="the run's settings")
    qm9_splits: Optional[str] = option(None, "BOOM split file (default: computed from QM9)")
    qm9_max_eval: Optional[int] = option(None, "cap the QM9 validation and test sets (seeded subsample)")
    matbench_path: Optional[str] = option(None, "directory of the MatBench data (matbench tasks)")
    ff_data: Dict[str, Union[str, ForceFieldData]] = option(
        factory=dict, help="auxiliary force-field data (default: the replay set beside the pretrained checkpoint)")

    def __post_init__(self) -> None:
        self.finetune_settings()

    def finetune_settings(self) -> FinetuneSettings:
        """The run's :class:`FinetuneSettings`."""
        return from_mapping(FinetuneSettings, self.settings, "settings")

    def missing_paths(self) -> List[str]:
        """The files the config names that do not exist."""
        paths = [p for p in (self.pretrained, self.qm9_splits, self.matbench_path) if p] + self.task.paths()
        return _missing(paths + _ff_paths(self.ff_data))
