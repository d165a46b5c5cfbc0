"""``mftcalc finetune | bench | analyze``: the fine-tuning strategies, their benchmark grid, the analysis."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

import yaml


def _overrides(pairs) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        if not _:
            raise SystemExit(f"override {pair!r} must look like key=value")
        out[key] = yaml.safe_load(value)
    return out


def _finetune(args: argparse.Namespace) -> int:
    from mftcalc.data.io import read_structures
    from mftcalc.training.bench import BenchConfig, TaskSpec, _load_task, _pretrained_backbone
    from mftcalc.training.finetune import FinetuneSettings, finetune
    data = yaml.safe_load(Path(args.config).read_text())
    settings_dict = {**data.get("settings", {}), **_overrides(args.set)}
    task_spec = TaskSpec(**data["task"])
    cfg = BenchConfig(pretrained=data.get("pretrained", ""), out_dir=data["out_dir"], tasks=[task_spec],
                      qm9_splits=data.get("qm9_splits"), qm9_max_eval=data.get("qm9_max_eval"),
                      matbench_path=data.get("matbench_path"))
    settings = FinetuneSettings(**settings_dict)
    fold = task_spec.fold_indices[0] if task_spec.kind == "matbench" else None
    task = _load_task(cfg, task_spec, task_spec.train_fraction, fold, settings.seed, {})
    ff = None
    if data.get("ff_data"):
        ff = {name: read_structures(path) for name, path in data["ff_data"].items()}
    result = finetune(task, settings, data["out_dir"], cfg.pretrained or None, ff_structures=ff,
                      backbone_cfg=_pretrained_backbone(cfg, {}) if settings.strategy == "scratch" else None)
    print(json.dumps(result, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mftcalc.training.bench import BenchConfig, parse_shard, run_bench
    from dataclasses import replace
    cfg = BenchConfig.from_yaml(args.config)
    if args.strategies:
        cfg = replace(cfg, strategies=[v.strip() for v in args.strategies.split(",") if v.strip()])
    if args.seeds:
        cfg = replace(cfg, seeds=[int(v) for v in args.seeds.split(",")])
    run_bench(cfg, shard=parse_shard(args.shard))
    print((Path(cfg.out_dir) / "summary.md").read_text())
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from mftcalc.analysis.report import analyze, markdown_table
    from mftcalc.data.boom import load_splits
    from mftcalc.data.qm9 import load_qm9
    import numpy as np
    ds = load_qm9()
    split = load_splits(args.splits)[args.property]
    rng = np.random.default_rng(args.seed)
    sets = {}
    for part, name in (("train", "train"), ("id_test", "id"), ("ood_test", "ood")):
        idx = getattr(split, part)
        idx = np.sort(rng.choice(idx, min(args.molecules, len(idx)), replace=False))
        sets[name] = ds.structures(ds.rows(idx), properties=[])
    finetuned = dict(item.split("=", 1) for item in args.finetuned)
    results = analyze(args.pretrained, finetuned, sets, args.out_dir, n_samples=args.samples, tsne=not args.no_tsne)
    print(markdown_table(results))
    return 0


def add_finetune_parsers(subparsers: Any) -> None:
    """Register ``finetune``, ``bench`` and ``analyze``."""
    p = subparsers.add_parser("finetune", help="fine-tune a pretrained model on a property (scratch/ft/lp/mft)")
    p.add_argument("config", help="YAML: pretrained, out_dir, task, settings (FinetuneSettings), optional ff_data")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override settings keys")
    p.set_defaults(func=_finetune)
    p = subparsers.add_parser("bench", help="strategies x tasks x seeds x fractions, resumable results + tables")
    p.add_argument("config")
    p.add_argument("--shard", metavar="I/N", help="run only cells I, I+N, I+2N, ... (start N processes, e.g. one per "
                   "core, with I = 0..N-1 on the same config; they share the results file)")
    p.add_argument("--strategies", metavar="A,B", help="run only these strategies (names from the config's strategies "
                   "or variants), e.g. mft,ft first and the rest later; the summary covers every finished cell")
    p.add_argument("--seeds", metavar="0,1", help="run only these seeds")
    p.set_defaults(func=_bench)
    p = subparsers.add_parser("analyze", help="representation drift and Davies-Bouldin indices vs the pretrained model")
    p.add_argument("pretrained")
    p.add_argument("finetuned", nargs="+", metavar="NAME=CHECKPOINT")
    p.add_argument("--splits", required=True, help="BOOM split file (mftcalc data qm9 --splits-out)")
    p.add_argument("--property", default="gap")
    p.add_argument("--molecules", type=int, default=300, help="molecules per set (train, ID, OOD)")
    p.add_argument("--samples", type=int, default=5000, help="atoms per feature cloud")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-tsne", action="store_true")
    p.add_argument("--out-dir", default="analysis")
    p.set_defaults(func=_analyze)
