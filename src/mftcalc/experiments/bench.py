"""``mftcalc bench``: strategies × tasks × seeds × training fractions, one resumable results file.

Every finished cell is written to ``<out_dir>/results.json`` at once (atomically) and skipped on restart, so
a run killed at any moment resumes across sessions; an unfinished cell resumes from its own training state.
The summary is a Markdown table in the paper's layout (QM9: ID and OOD RMSE; MatBench: test MAE per fold
kind; mean ± std over seeds and folds) and, in data-efficiency mode, a plot of error against training size.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mftcalc.training.finetune import STRATEGIES, FinetuneSettings, finetune


@dataclass
class TaskSpec:
    """A task: ``kind`` qm9 (``property``), matbench (``dataset``, ``folds`` kind, ``fold_indices``) or file (the
    user's own labelled structures: ``path``, ``property``, ``unit``, ``intensive``, ``val_path`` or
    ``val_fraction``, optional ``test_path``)."""

    kind: str
    property: Optional[str] = None
    dataset: Optional[str] = None
    folds: str = "random"
    fold_indices: List[int] = field(default_factory=lambda: [0])
    train_fraction: float = 1.0
    path: Optional[str] = None
    unit: str = ""
    intensive: bool = True
    val_path: Optional[str] = None
    val_fraction: float = 0.1
    test_path: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in ("qm9", "matbench", "file"):
            raise ValueError(f"task kind {self.kind!r}; use qm9, matbench or file")
        if self.kind == "file" and not (self.path and self.property):
            raise ValueError("a file task needs path and property")
        from mftcalc.schema import suggest
        if self.kind == "qm9":
            from mftcalc.data.qm9 import QM9_PROPERTIES
            if self.property not in QM9_PROPERTIES:
                raise ValueError(f"QM9 has no property {self.property!r}{suggest(str(self.property), list(QM9_PROPERTIES))}"
                                 f" (choose one of {list(QM9_PROPERTIES)})")
        if self.kind == "matbench":
            from mftcalc.data.matbench import MATBENCH_DATASETS
            if self.dataset not in MATBENCH_DATASETS:
                raise ValueError(f"MatBench has no dataset {self.dataset!r}"
                                 f"{suggest(str(self.dataset), list(MATBENCH_DATASETS))} (choose one of "
                                 f"{list(MATBENCH_DATASETS)})")


@dataclass
class BenchConfig:
    """The bench grid and where its inputs are."""

    pretrained: str
    out_dir: str
    tasks: List[TaskSpec]
    strategies: List[str] = field(default_factory=lambda: ["scratch", "ft", "lp", "mft"])
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    strategy_seeds: Dict[str, List[int]] = field(default_factory=dict)   # per-strategy seeds (else ``seeds``)
    fractions: Optional[List[float]] = None        # data-efficiency mode: overrides each task's train_fraction
    settings: Dict[str, Any] = field(default_factory=dict)
    qm9_splits: Optional[str] = None
    qm9_max_eval: Optional[int] = None
    matbench_path: Optional[str] = None
    ff_eval: Dict[str, str] = field(default_factory=dict)   # dataset name -> held-out file (filtered by info["dataset"])
    #: MFT's auxiliary force-field data, ``{dataset: path or spec}`` (``pretrain.load_forcefield_set``); default:
    #: the domain-matched replay set beside the pretrained checkpoint
    ff_data: Dict[str, Any] = field(default_factory=dict)
    keep_states: bool = False      # keep each finished cell's training state (deleted by default: a few MB each)
    #: named strategy variants usable in ``strategies`` (ablations): ``{name: {strategy: mft, settings: {...},
    #: ff_data: {dataset: file}}}``; ``settings`` override the bench settings, ``ff_data`` replaces the replay set
    variants: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, variant in self.variants.items():
            unknown = set(variant) - {"strategy", "settings", "ff_data"}
            if unknown or variant.get("strategy") not in STRATEGIES:
                raise ValueError(f"variant {name!r}: needs strategy in {STRATEGIES} and only the keys strategy, "
                                 f"settings, ff_data (got {sorted(variant)})")
        for name in self.strategies:
            if name not in self.variants and name not in STRATEGIES:
                raise ValueError(f"unknown strategy {name!r}: use {STRATEGIES} or a name under variants")
        stray = set(self.strategy_seeds) - set(self.strategies)
        if stray:
            raise ValueError(f"strategy_seeds names {sorted(stray)}, which are not in strategies {self.strategies}")

    @classmethod
    def from_yaml(cls, path: str | Path, set_pairs: Sequence[str] = ()) -> "BenchConfig":
        """Load strictly (:mod:`mftcalc.schema`) and validate the whole grid (every strategy's and variant's
        fine-tuning settings, every force-field data spec) before any data is read."""
        from mftcalc.schema import apply_overrides, from_mapping
        from mftcalc.training.pretrain import read_yaml
        cfg = from_mapping(cls, apply_overrides(read_yaml(path), set_pairs), str(path))
        cfg.validate(str(path))
        return cfg

    def validate(self, where: str = "bench config") -> None:
        """Build the fine-tuning settings of every strategy once, so a typo fails now, not hours in."""
        from mftcalc.schema import ConfigError, from_mapping
        for name in self.strategies:
            variant = self.variants.get(name, {"strategy": name})
            merged = {**self.settings, **variant.get("settings", {}), "strategy": variant["strategy"]}
            from_mapping(FinetuneSettings, merged, f"{where}: settings of strategy {name!r}")
            for ds, spec in (variant.get("ff_data") or self.ff_data).items():
                if isinstance(spec, dict) and "path" not in spec:
                    raise ConfigError(f"{where}: ff_data.{ds} needs a path")



@dataclass
class FinetuneConfig:
    """The YAML of ``mftcalc finetune``: one task, its settings (``FinetuneSettings`` keys), inputs, outputs."""

    out_dir: str
    task: TaskSpec
    pretrained: Optional[str] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    qm9_splits: Optional[str] = None
    qm9_max_eval: Optional[int] = None
    matbench_path: Optional[str] = None
    ff_data: Dict[str, Any] = field(default_factory=dict)


def _cells(cfg: BenchConfig):
    fractions = cfg.fractions
    for task in cfg.tasks:
        for frac in (fractions or [task.train_fraction]):
            folds = task.fold_indices if task.kind == "matbench" else [None]
            for fold in folds:
                for strategy in cfg.strategies:
                    for seed in cfg.strategy_seeds.get(strategy, cfg.seeds):
                        name = (f"{task.dataset}-{task.folds}-{fold}" if task.kind == "matbench"
                                else task.property)
                        key = f"{task.kind}:{name}|{strategy}|seed{seed}|frac{frac:g}"
                        yield key, task, frac, fold, strategy, seed


def _save_json(path: Path, data: Dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def _read_results(path: Path) -> Dict[str, Dict]:
    return json.loads(path.read_text()) if path.exists() else {}


@contextmanager
def _results_lock(path: Path):
    """Exclusive lock shared by every shard writing ``path`` (results.json) or the files derived from it."""
    import fcntl
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _merge_result(path: Path, key: str, value: Dict) -> Dict[str, Dict]:
    """Add one entry to the results file under the lock (re-read first, so concurrent shards that write the same
    file keep each other's cells); returns the merged results."""
    with _results_lock(path):
        results = _read_results(path)
        results[key] = value
        _save_json(path, results)
    return results


def parse_shard(text: Optional[str]) -> Tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N; ``None`` → (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need 0 <= I < N")
    return i, n


def run_bench(cfg: BenchConfig, progress: bool = True, shard: Tuple[int, int] = (0, 1)) -> Dict[str, Dict]:
    """Run every unfinished cell; returns all results (``results.json``) and writes ``summary.md``.

    ``shard=(i, n)`` runs only cells number i, i+n, i+2n, … (in config order), so n processes, e.g. one per core,
    can share one ``out_dir``: each finished cell is merged into ``results.json`` under a file lock.
    """
    from mftcalc.schema import from_mapping
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = _read_results(results_path)
    cache: Dict[str, Any] = {}
    for number, (key, task_spec, frac, fold, strategy, seed) in enumerate(_cells(cfg)):
        if key in results or number % shard[1] != shard[0]:
            continue
        task = _load_task(cfg, task_spec, frac, fold, seed, cache)
        variant = cfg.variants.get(strategy, {"strategy": strategy})
        base = variant["strategy"]
        settings = from_mapping(FinetuneSettings, {**cfg.settings, **variant.get("settings", {}), "strategy": base,
                                                   "seed": seed, "progress": progress}, f"settings of {key}")
        ff = None
        ff_spec = variant.get("ff_data") or (cfg.ff_data if base == "mft" else None)
        if ff_spec:
            ff = {name: _cached_ff(name, spec, cache) for name, spec in ff_spec.items()}
        cell_dir = out / "cells" / key.replace("|", "__").replace(":", "_")
        result = finetune(task, settings, cell_dir, cfg.pretrained if base != "scratch" else None, ff_structures=ff,
                          backbone_cfg=_pretrained_backbone(cfg, cache) if base == "scratch" else None)
        if cfg.ff_eval:
            result["forcefield"] = _ff_retention(cell_dir / "model.pt", cfg, cache)
        result.update(train_fraction=frac, seed=seed, fold=fold)
        results = _merge_result(results_path, key, result)
        if not cfg.keep_states:       # a finished cell is skipped on restart: its optimiser state is dead weight
            (cell_dir / "state.pt").unlink(missing_ok=True)
    results = _read_results(results_path)
    if cfg.ff_eval and "pretrained" not in results.get("_forcefield_reference", {}):
        results = _merge_result(results_path, "_forcefield_reference",
                                {"pretrained": _ff_retention(Path(cfg.pretrained), cfg, cache)})
    # Re-read and write the summary under the lock: a shard that finishes first must not overwrite the summary of
    # a shard that finished later with its older view of results.json.
    with _results_lock(results_path):
        results = _read_results(results_path)
        (out / "summary.md").write_text(summary_markdown(results, cfg))
        if cfg.fractions:
            plot_data_efficiency(results, out / "data_efficiency.png")
    return results


def _cached_ff(name: str, spec: Any, cache: Dict[str, Any]):
    """Force-field set ``name`` read once per bench process (``pretrain.load_forcefield_set``)."""
    from mftcalc.training.pretrain import load_forcefield_set
    key = f"ffdata:{name}:{json.dumps(spec, sort_keys=True)}"
    if key not in cache:
        cache[key] = load_forcefield_set(name, spec)
    return cache[key]


def _pretrained_backbone(cfg: BenchConfig, cache: Dict[str, Any]):
    if "backbone" not in cache:
        from mftcalc.model.checkpoint import read_checkpoint
        from mftcalc.model.config import ModelConfig
        cache["backbone"] = ModelConfig.from_dict(read_checkpoint(cfg.pretrained)["config"]).backbone
    return cache["backbone"]


def _load_task(cfg: BenchConfig, spec: TaskSpec, frac: float, fold: Optional[int], seed: int, cache: Dict):
    from mftcalc.experiments.tasks import matbench_task, qm9_task
    if spec.kind == "qm9":
        if "qm9" not in cache:
            from mftcalc.data.boom import boom_splits, load_splits
            from mftcalc.data.qm9 import load_qm9
            ds = load_qm9()
            cache["qm9"] = ds
            cache["splits"] = load_splits(cfg.qm9_splits) if cfg.qm9_splits else boom_splits(ds)
        return qm9_task(cache["qm9"], cache["splits"], spec.property, frac, seed, cfg.qm9_max_eval)
    if spec.kind == "file":
        from mftcalc.experiments.tasks import file_task
        return file_task(spec.path, spec.property, spec.unit, spec.intensive, spec.val_path, spec.val_fraction,
                         spec.test_path, seed, train_fraction=frac, model_path=cfg.pretrained or None)
    if spec.kind == "matbench":
        from mftcalc.data.matbench import load_folds, load_matbench
        if cfg.matbench_path is None:
            raise ValueError("matbench tasks need matbench_path in the bench config")
        key = f"mb:{spec.dataset}"
        if key not in cache:
            cache[key] = load_matbench(spec.dataset, cfg.matbench_path)
        fkey = f"folds:{spec.dataset}:{spec.folds}"
        if fkey not in cache:
            cache[fkey] = load_folds(spec.dataset, spec.folds, cfg.matbench_path)
        return matbench_task(cache[key], spec.dataset, cache[fkey][fold], frac, seed)
    raise ValueError(f"unknown task kind {spec.kind!r}; use qm9, matbench or file")


def _ff_retention(model_path: Path, cfg: BenchConfig, cache: Dict) -> Dict[str, Dict[str, float]]:
    """Energy/force errors of a model's force-field head on held-out force-field data, per dataset."""
    import torch
    from mftcalc.data.io import read_structures
    from mftcalc.model.checkpoint import load_model
    from mftcalc.training.evaluate import forcefield_errors
    model = load_model(model_path, torch.float32)
    if not len(model.ff_heads):
        return {}
    names = list(model.config.datasets)
    out = {}
    for name, path in cfg.ff_eval.items():
        key = f"ff:{path}"
        if key not in cache:
            cache[key] = read_structures(path)
        structures = [s for s in cache[key] if s.info.get("dataset", name) == name]
        if not structures:
            raise ValueError(f"{path} holds no structures of dataset {name!r}")
        out[name] = forcefield_errors(model, structures, names.index(name))
    return out


def _mean_std(values: List[float]) -> str:
    if not values:
        return "–"
    arr = np.asarray(values)
    return f"{arr.mean():.4g} ± {arr.std():.2g}" if len(arr) > 1 else f"{arr.mean():.4g}"


def summary_markdown(results: Dict[str, Dict], cfg: BenchConfig) -> str:
    """Paper-layout tables: QM9 ID/OOD RMSE and MatBench test MAE per (task, strategy), mean ± std."""
    rows: Dict[tuple, Dict[str, List[float]]] = {}
    for key, r in results.items():
        if key.startswith("_"):
            continue
        task, strategy, _, frac = key.split("|")
        base = task.rsplit("-", 1)[0] if task.startswith("matbench") else task
        cell = rows.setdefault((base, frac, strategy), {})
        for part in ("id_test", "ood_test", "test"):
            if part in r:
                metric = "rmse" if task.startswith("qm9") else "mae"
                cell.setdefault(f"{part}_{metric}", []).append(r[part][metric])
        if "drift_w1" in r:
            cell.setdefault("drift", []).append(r["drift_w1"])
        for ds, errs in r.get("forcefield", {}).items():
            if "f_mae" in errs:
                cell.setdefault(f"ff:{ds}", []).append(errs["f_mae"])
        cell.setdefault("runs", []).append(1.0)
    lines = [f"Settings: {cfg.settings}; seeds {cfg.seeds}; mean ± std over the runs of each row.", "",
             "| task | train fraction | strategy | runs | ID RMSE | OOD RMSE | test MAE | drift (sliced W1) | "
             "FF force MAE (eV/Å) |",
             "|---|---|---|---:|---|---|---|---|---|"]
    for (task, frac, strategy), cell in sorted(rows.items()):
        lines.append(f"| {task} | {frac[4:]} | {strategy} | {len(cell['runs'])} | "
                     f"{_mean_std(cell.get('id_test_rmse', []))} | "
                     f"{_mean_std(cell.get('ood_test_rmse', []))} | {_mean_std(cell.get('test_mae', []))} | "
                     f"{_mean_std(cell.get('drift', []))} | {_ff_column(cell)} |")
    lines += _mft_vs_ft(rows)
    ref = results.get("_forcefield_reference", {}).get("pretrained", {})
    if ref:
        lines += ["", "Pretrained model on the same force-field data: " +
                  ", ".join(f"{k}: force MAE {v.get('f_mae', float('nan')):.4f} eV/Å" for k, v in ref.items())]
    return "\n".join(lines) + "\n"


def _ff_column(cell: Dict[str, List[float]]) -> str:
    """Force MAE per force-field dataset (``name mean ± std``), one entry per held-out set, never mixed."""
    parts = [(k[3:], v) for k, v in sorted(cell.items()) if k.startswith("ff:")]
    if not parts:
        return "–"
    if len(parts) == 1:
        return _mean_std(parts[0][1])
    return "; ".join(f"{name} {_mean_std(v)}" for name, v in parts)


def _mft_vs_ft(rows: Dict[tuple, Dict[str, List[float]]]) -> List[str]:
    """One line per (task, fraction) with both strategies: MFT/FT ratios of the mean ID and OOD errors, against the
    paper's claim (OOD ≤ 0.9 × FT with ID within ±5 %)."""
    out: List[str] = []
    for (task, frac, strategy), cell in sorted(rows.items()):
        if strategy != "mft" or (task, frac, "ft") not in rows:
            continue
        ft = rows[(task, frac, "ft")]
        if cell.get("ood_test_rmse") and ft.get("ood_test_rmse"):
            r_id = np.mean(cell["id_test_rmse"]) / np.mean(ft["id_test_rmse"])
            r_ood = np.mean(cell["ood_test_rmse"]) / np.mean(ft["ood_test_rmse"])
            verdict = "meets" if (r_ood <= 0.9 and abs(r_id - 1.0) <= 0.05) else "does not meet"
            out.append(f"- {task}, fraction {frac[4:]}: MFT/FT ID RMSE {r_id:.3f}, OOD RMSE {r_ood:.3f} "
                       f"({len(cell['runs'])} vs {len(ft['runs'])} runs): {verdict} the target OOD ≤ 0.9× with "
                       "ID within ±5 %")
        elif cell.get("test_mae") and ft.get("test_mae"):
            out.append(f"- {task}, fraction {frac[4:]}: MFT/FT test MAE "
                       f"{np.mean(cell['test_mae']) / np.mean(ft['test_mae']):.3f}")
    return ([""] + out) if out else []


def plot_data_efficiency(results: Dict[str, Dict], path: Path) -> None:
    """ID and OOD error against the number of training molecules, per (task, strategy) with cells at two or more
    training sizes (QM9 cells; single-size cells of other grids sharing the results file are left out)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series: Dict[tuple, List[tuple]] = {}
    for key, r in results.items():
        if key.startswith("_") or "ood_test" not in r:
            continue
        task, strategy, _, _ = key.split("|")
        series.setdefault((task, strategy), []).append((r["n_train"], r["id_test"]["rmse"], r["ood_test"]["rmse"]))
    series = {key: pts for key, pts in series.items() if len({p[0] for p in pts}) >= 2}
    for (task, strategy), pts in sorted(series.items()):
        pts.sort()
        n = sorted({p[0] for p in pts})
        for ax, col in ((axes[0], 1), (axes[1], 2)):
            ax.loglog(n, [np.mean([p[col] for p in pts if p[0] == k]) for k in n], marker="o",
                      label=f"{task} {strategy}")
    for ax, title in zip(axes, ("ID test RMSE", "OOD test RMSE")):
        ax.set_xlabel("training molecules")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
