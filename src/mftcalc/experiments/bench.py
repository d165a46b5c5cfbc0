"""``mftcalc bench``: run a grid of fine-tuning cells (:class:`~mftcalc.experiments.config.BenchConfig`) into
one resumable results file.

Every finished cell is written to ``<out_dir>/results.json`` at once (atomically, under a file lock shared by
``--shard`` processes) and skipped on restart, so a run killed at any moment resumes across sessions; an unfinished
cell resumes from its own training state. The summary (:mod:`mftcalc.experiments.bench_summary`) is a Markdown
table in the paper's layout and, in data-efficiency mode, a plot of error against training size.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mftcalc.analysis.plots import plot_data_efficiency
from mftcalc.experiments.bench_summary import summary_markdown
from mftcalc.experiments.config import BenchConfig
from mftcalc.experiments.tasks import load_task
from mftcalc.filehash import sha256_file
from mftcalc.files import atomic_write_text
from mftcalc.schema import ConfigError
from mftcalc.training.finetune import finetune
from mftcalc.training.strategies import get_strategy


def _save_json(path: Path, data: Dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


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
    can share one ``out_dir``: each finished cell is merged into ``results.json`` under a file lock. Every file the
    grid names is checked before any is read.
    """
    missing = cfg.missing_paths()
    if missing:
        raise ConfigError(f"bench {cfg.out_dir}: these inputs do not exist: {missing}; fix the paths in the config "
                          "(relative paths start from the working directory)")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = _read_results(results_path)
    cache: Dict[str, Any] = {}
    unchecked = []
    for number, (key, task_spec, frac, fold, strategy, seed) in enumerate(cfg.cells()):
        if number % shard[1] != shard[0]:
            continue
        if key in results:
            if "provenance" not in results[key]:
                unchecked.append(key)
            else:
                check_provenance(key, results[key]["provenance"], cell_provenance(cfg, strategy, seed, cache),
                                 results_path)
            continue
        task = load_task(task_spec, frac, fold, seed, cache, cfg.qm9_splits, cfg.qm9_max_eval, cfg.matbench_path,
                         cfg.pretrained or None)
        settings = cfg.cell_settings(strategy, seed, progress)
        from_pretrained = get_strategy(settings.strategy).from_pretrained
        ff_spec = cfg.forcefield_data(strategy)
        ff = {name: _cached_ff(name, spec, cache) for name, spec in ff_spec.items()} if ff_spec else None
        cell_dir = out / "cells" / key.replace("|", "__").replace(":", "_")
        result = finetune(task, settings, cell_dir, cfg.pretrained if from_pretrained else None, ff_structures=ff,
                          backbone_cfg=None if from_pretrained else pretrained_backbone(cfg.pretrained, cache))
        if cfg.ff_eval:
            result["forcefield"] = forcefield_retention(cell_dir / "model.pt", cfg, cache)
        result.update(train_fraction=frac, seed=seed, fold=fold,
                      provenance=cell_provenance(cfg, strategy, seed, cache))
        results = _merge_result(results_path, key, result)
        if not cfg.keep_states:       # a finished cell is skipped on restart: its optimiser state is dead weight
            (cell_dir / "state.pt").unlink(missing_ok=True)
    if unchecked and progress:
        import sys
        print(f"bench {cfg.out_dir}: {len(unchecked)} finished cell(s) predate provenance records and were kept "
              f"unchecked: {', '.join(unchecked)}", file=sys.stderr)
    results = _read_results(results_path)
    reference = results.get("_forcefield_reference", {})
    prior_sha = _sha256(cfg.pretrained, cache) if cfg.pretrained else None
    if cfg.ff_eval and ("pretrained" not in reference or reference.get("pretrained_sha256", prior_sha) != prior_sha):
        results = _merge_result(results_path, "_forcefield_reference",
                                {"pretrained": forcefield_retention(Path(cfg.pretrained), cfg, cache),
                                 "pretrained_sha256": prior_sha})
    # Re-read and write the summary under the lock: a shard that finishes first must not overwrite the summary of
    # a shard that finished later with its older view of results.json.
    with _results_lock(results_path):
        results = _read_results(results_path)
        (out / "summary.md").write_text(summary_markdown(results, cfg.settings, cfg.seeds))
        if cfg.fractions:
            plot_data_efficiency(results, out / "data_efficiency.png")
    return results


#: settings that do not change a cell's result (display, where it runs)
_NEUTRAL_SETTINGS = ("progress", "device")


def _sha256(path: str, cache: Dict[str, Any]) -> str:
    """Content hash of a model checkpoint (:func:`~mftcalc.model.checkpoint.content_hash`) or, for any other file,
    the sha256 of its bytes; once per cache."""
    key = f"sha256:{path}"
    if key not in cache:
        if str(path).endswith(".pt"):
            from mftcalc.model.checkpoint import read_checkpoint
            cache[key] = read_checkpoint(path)["sha256"]
        else:
            cache[key] = sha256_file(path)
    return cache[key]


def cell_provenance(cfg: BenchConfig, strategy: str, seed: int, cache: Dict[str, Any]) -> Dict[str, Any]:
    """What a cell's result depends on beyond its key: the pretrained model's content hash (strategies that start
    from its weights), the QM9 splits file's hash, the force-field data spec and the fine-tuning settings."""
    settings = asdict(cfg.cell_settings(strategy, seed, progress=False))
    ff = cfg.forcefield_data(strategy)
    from_pretrained = get_strategy(settings["strategy"]).from_pretrained
    return {"pretrained_sha256": _sha256(cfg.pretrained, cache) if cfg.pretrained and from_pretrained else None,
            "qm9_splits_sha256": _sha256(cfg.qm9_splits, cache) if cfg.qm9_splits else None,
            "ff_data": json.loads(json.dumps({k: asdict(v) if is_dataclass(v) else v for k, v in ff.items()},
                                             sort_keys=True, default=str)) if ff else None,
            "settings": json.loads(json.dumps({k: v for k, v in settings.items() if k not in _NEUTRAL_SETTINGS},
                                              default=str))}


def check_provenance(key: str, stored: Dict[str, Any], current: Dict[str, Any], results_path: Path) -> None:
    """Refuse to keep a finished cell whose inputs changed since it ran (settings are compared on the keys both
    records have, so a setting added to the code later does not void old cells)."""
    differ = [f"{name}: {stored.get(name)} -> {current.get(name)}" for name in ("pretrained_sha256",
              "qm9_splits_sha256", "ff_data") if stored.get(name) != current.get(name)]
    old, new = stored.get("settings", {}), current["settings"]
    differ += [f"settings.{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    if differ:
        raise ConfigError(f"{results_path}: finished cell {key} was computed with other inputs than this config "
                          f"gives ({'; '.join(differ)}). Its result would be reported as current: use a new out_dir "
                          f"for the changed grid, or remove the cell from {results_path.name} (and its folder) to "
                          "rerun it")


def _cached_ff(name: str, spec: Any, cache: Dict[str, Any]):
    """Force-field set ``name`` read once per bench process (:func:`~mftcalc.training.forcefield_data.load_forcefield_set`)."""
    from mftcalc.training.forcefield_data import load_forcefield_set
    key = f"ffdata:{name}:{json.dumps(asdict(spec) if is_dataclass(spec) else spec, sort_keys=True)}"
    if key not in cache:
        cache[key] = load_forcefield_set(name, spec)
    return cache[key]


def pretrained_backbone(pretrained: str, cache: Optional[Dict[str, Any]] = None):
    """The backbone config of checkpoint ``pretrained`` (the size of a ``scratch`` model), read once per cache."""
    cache = {} if cache is None else cache
    if "backbone" not in cache:
        from mftcalc.model.checkpoint import read_checkpoint
        from mftcalc.model.config import ModelConfig
        cache["backbone"] = ModelConfig.from_dict(read_checkpoint(pretrained)["config"]).backbone
    return cache["backbone"]


def forcefield_retention(model_path: Path, cfg: BenchConfig, cache: Dict) -> Dict[str, Dict[str, float]]:
    """Energy/force errors of a model's force-field head on the held-out force-field data of ``cfg.ff_eval``, per dataset
    (:func:`mftcalc.training.evaluate.forcefield_errors`: eV/atom, eV/Å, eV/Å³); ``cache`` keeps the files read."""
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
