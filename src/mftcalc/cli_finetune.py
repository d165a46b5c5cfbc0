"""``mftcalc finetune | bench | analyze``: the fine-tuning strategies, their benchmark grid, the analysis."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _finetune(args: argparse.Namespace) -> int:
    from mftcalc.schema import apply_overrides, from_mapping
    from mftcalc.training.bench import BenchConfig, FinetuneConfig, _load_task, _pretrained_backbone
    from mftcalc.training.finetune import FinetuneSettings, finetune
    from mftcalc.training.pretrain import load_forcefield_set, read_yaml
    # --set key=value: a bare key is a settings key (steps=500), a dotted key starts at the top (task.property=homo)
    pairs = [p if "." in p.partition("=")[0] else f"settings.{p}" for p in (args.set or [])]
    pairs += [f"settings.device={args.device}"] if args.device else []
    data = apply_overrides(read_yaml(args.config), pairs)
    spec = from_mapping(FinetuneConfig, data, args.config)
    settings = from_mapping(FinetuneSettings, spec.settings, f"{args.config}: settings")
    task_spec = spec.task
    cfg = BenchConfig(pretrained=spec.pretrained or "", out_dir=spec.out_dir, tasks=[task_spec],
                      qm9_splits=spec.qm9_splits, qm9_max_eval=spec.qm9_max_eval, matbench_path=spec.matbench_path)
    fold = task_spec.fold_indices[0] if task_spec.kind == "matbench" else None
    task = _load_task(cfg, task_spec, task_spec.train_fraction, fold, settings.seed, {})
    ff = {name: load_forcefield_set(name, s) for name, s in spec.ff_data.items()} if spec.ff_data else None
    result = finetune(task, settings, spec.out_dir, cfg.pretrained or None, ff_structures=ff,
                      backbone_cfg=_pretrained_backbone(cfg, {}) if settings.strategy == "scratch" else None)
    print(json.dumps(result, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mftcalc.training.bench import BenchConfig, parse_shard, run_bench
    from dataclasses import replace
    cfg = BenchConfig.from_yaml(args.config, list(args.set or []) + (
        [f"settings.device={args.device}"] if args.device else []))
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
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys: a bare key is a settings key (steps=500), a dotted key starts at the "
                        "top (task.property=homo)")
    p.add_argument("--device", default=None, help="cpu, cuda[:k] or auto (default: the config's, else cpu)")
    p.set_defaults(func=_finetune)
    p = subparsers.add_parser("bench", help="strategies x tasks x seeds x fractions, resumable results + tables")
    p.add_argument("config")
    p.add_argument("--shard", metavar="I/N", help="run only cells I, I+N, I+2N, ... (start N processes, e.g. one per "
                   "core, with I = 0..N-1 on the same config; they share the results file)")
    p.add_argument("--strategies", metavar="A,B", help="run only these strategies (names from the config's strategies "
                   "or variants), e.g. mft,ft first and the rest later; the summary covers every finished cell")
    p.add_argument("--seeds", metavar="0,1", help="run only these seeds")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config keys, dotted for nested ones (settings.steps=500, tasks.0.property=homo)")
    p.add_argument("--device", default=None, help="cpu, cuda[:k] or auto (default: the config's, else cpu)")
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
