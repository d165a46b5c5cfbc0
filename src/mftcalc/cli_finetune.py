"""``mftcalc finetune | bench | analyze``: the fine-tuning strategies, their benchmark grid, the analysis."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict


def _shipped_pretrained() -> str:
    """``models/pretrained.pt`` of the source tree this package is installed from (``$MFTCALC_PRETRAINED``
    overrides)."""
    import os
    if os.environ.get("MFTCALC_PRETRAINED"):
        return os.environ["MFTCALC_PRETRAINED"]
    path = Path(__file__).resolve().parents[2] / "models" / "pretrained.pt"
    if not path.exists():
        raise SystemExit(f"no shipped pretrained model at {path}; pass --pretrained PATH")
    return str(path)


def _data_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The config of a ``--data FILE --property NAME`` run (no YAML): a file task, the strategy and budget."""
    if not args.property:
        raise SystemExit("--data needs --property NAME (the info key holding the value in each frame)")
    if not args.output:
        raise SystemExit("--data needs -o OUT.pt (where the fine-tuned model goes)")
    out = Path(args.output)
    settings: Dict[str, Any] = {"strategy": args.strategy}
    if args.steps:
        settings["steps"] = args.steps
    return {"pretrained": args.pretrained or _shipped_pretrained(), "out_dir": str(out.with_name(out.stem + "_run")),
            "task": {"kind": "file", "path": args.data, "property": args.property, "unit": args.unit,
                     "intensive": not args.extensive, "val_path": args.val, "val_fraction": args.val_fraction,
                     "test_path": args.test, "frame_params": frame_param_args(args.frame_param),
                     "group_key": args.group_key, "weight_key": args.weight_key},
            "settings": settings}


ANCHOR_HELP = ("on ft or mft: hold the fine-tuned backbone near the prior by a penalty, with no force-field data: "
               "'features' (the drift of its per-atom features on the property batches) or 'weights' (L2-SP), "
               "the weight after ':' (default 1), e.g. features:10")


def anchor_args(value: Any) -> Dict[str, Any]:
    """Settings of ``--anchor KIND[:WEIGHT]`` (``features:10`` -> anchor features, anchor_weight 10); {} without."""
    if not value:
        return {}
    kind, _, weight = str(value).partition(":")
    out: Dict[str, Any] = {"anchor": kind.strip()}
    if weight.strip():
        try:
            out["anchor_weight"] = float(weight)
        except ValueError:
            raise SystemExit(f"--anchor {value!r}: the weight after ':' must be a number, e.g. --anchor "
                             "features:10") from None
    return out


def frame_param_args(values: Any) -> Dict[str, str]:
    """``{key: unit}`` of ``--frame-param KEY[:UNIT]`` options (unit empty when not given)."""
    out: Dict[str, str] = {}
    for value in values or []:
        key, _, unit = str(value).partition(":")
        if not key.strip():
            raise SystemExit(f"--frame-param {value!r}: give the info key, e.g. --frame-param temperature:K")
        out[key.strip()] = unit.strip()
    return out


def default_steps(n_train: int, batch: int) -> int:
    """Steps sized from the data: about 200 passes over it, at least 1,000 and at most 20,000 (the protocol's
    converged budget), rounded to hundreds."""
    per_epoch = -(-n_train // max(batch, 1))
    return int(min(20_000, max(1_000, round(200 * per_epoch, -2))))


def _finetune(args: argparse.Namespace) -> int:
    from dataclasses import fields, replace
    from mftcalc.experiments.bench import pretrained_backbone
    from mftcalc.experiments.config import FinetuneConfig
    from mftcalc.experiments.tasks import load_task
    from mftcalc.schema import ConfigError, apply_overrides, from_mapping, read_yaml
    from mftcalc.training.finetune import finetune
    from mftcalc.training.forcefield_data import load_forcefield_set
    from mftcalc.training.sampler import resolve_batch_size
    from mftcalc.training.strategies import get_strategy
    if bool(args.config) == bool(args.data):
        raise SystemExit("give a CONFIG.yaml or --data FILE --property NAME -o OUT.pt (not both)")
    # --set key=value: a bare key is a settings key (steps=500) unless it is a top-level key (out_dir=...); a dotted
    # key starts at the top (task.property=homo)
    top = {f.name for f in fields(FinetuneConfig)}
    pairs = [p if "." in p.partition("=")[0] or p.partition("=")[0] in top else f"settings.{p}"
             for p in (args.set or [])]
    pairs += [f"settings.device={args.device}"] if args.device else []
    pairs = [f"settings.{k}={v}" for k, v in anchor_args(args.anchor).items()] + pairs     # --set after: it wins
    where = args.config or "the --data options"
    spec = from_mapping(FinetuneConfig, apply_overrides(read_yaml(args.config) if args.config else _data_config(args),
                                                        pairs), where)
    missing = spec.missing_paths()
    if missing:
        raise ConfigError(f"{where}: these inputs do not exist: {missing}; fix the paths (relative paths start from "
                          "the working directory)")
    settings = spec.finetune_settings()
    task_spec = spec.task
    fold = task_spec.fold_indices[0] if task_spec.kind == "matbench" else None
    task = load_task(task_spec, task_spec.train_fraction, fold, settings.seed, {}, spec.qm9_splits, spec.qm9_max_eval,
                     spec.matbench_path, spec.pretrained or None)
    if args.data and "steps" not in spec.settings:
        steps = default_steps(len(task.train), resolve_batch_size(settings.property_batch, task.train))
        settings = replace(settings, steps=steps)
        items = "groups" if task.recipe.get("kind") == "group" else "structures"
        print(f"{len(task.train)} training and {len(task.val)} validation {items}: {steps} steps "
              "(about 200 passes, within 1,000-20,000; --steps to change)")
    ff = {name: load_forcefield_set(name, s) for name, s in spec.ff_data.items()} if spec.ff_data else None
    from_pretrained = get_strategy(settings.strategy).from_pretrained
    from mftcalc.training.distributed import distributed_session
    with distributed_session(settings.device) as (rank, world):   # under torchrun: DDP, rank 0 writes
        result = finetune(task, settings, spec.out_dir, spec.pretrained or None, ff_structures=ff,
                          backbone_cfg=None if from_pretrained else pretrained_backbone(spec.pretrained or ""))
    if rank != 0:
        return 0
    if args.output:
        import shutil
        tmp = Path(args.output).with_suffix(".tmp")
        shutil.copyfile(Path(spec.out_dir) / "model.pt", tmp)
        tmp.replace(args.output)
        result["model"] = str(args.output)
    print(json.dumps(result, indent=1))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from mftcalc.experiments.bench import parse_shard, run_bench
    from mftcalc.experiments.config import BenchConfig
    cfg = BenchConfig.from_yaml(args.config, list(args.set or []) + (
        [f"settings.device={args.device}"] if args.device else []))
    cfg = cfg.select([v.strip() for v in args.strategies.split(",") if v.strip()] if args.strategies else None,
                     [int(v) for v in args.seeds.split(",")] if args.seeds else None)
    run_bench(cfg, shard=parse_shard(args.shard))
    print((Path(cfg.out_dir) / "summary.md").read_text())
    return 0


def _cv(args: argparse.Namespace) -> int:
    from mftcalc.data.frame_params import frame_param_matrix
    from mftcalc.experiments.cv import cross_validate
    from mftcalc.experiments.tasks import read_property_file
    from mftcalc.schema import apply_overrides, from_mapping
    from mftcalc.training.finetune import FinetuneSettings
    pretrained = args.pretrained or _shipped_pretrained()     # scratch: it gives the backbone size
    overrides = apply_overrides({"strategy": args.strategy, **({"steps": args.steps} if args.steps else {}),
                                 **anchor_args(args.anchor)}, args.set or [])
    settings = from_mapping(FinetuneSettings, overrides, "cv settings")
    frame_params = frame_param_args(args.frame_param)
    structures = read_property_file(args.data, args.property, args.unit, "data", pretrained)
    frame_param_matrix(structures, list(frame_params), frame_params)          # names a frame without one
    if args.group_key:                                                        # one label per group of frames
        from mftcalc.data.assembly import group_structures
        structures = group_structures(structures, args.group_key, args.weight_key, list(frame_params), args.data)
    summary = cross_validate(structures, args.property, args.unit, not args.extensive, settings, pretrained,
                             args.out_dir, args.folds, args.group_by, seed=args.seed, frame_params=frame_params)
    print((Path(args.out_dir) / "report.md").read_text())
    print(json.dumps({k: v for k, v in summary.items() if k != "folds"}))
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
    from mftcalc.training.strategies import strategy_names
    p = subparsers.add_parser(
        "finetune", help="fine-tune a pretrained model on a property (scratch/ft/lp/mft)",
        description="Fine-tune from a YAML config, or on your own data with no YAML: "
                    "mftcalc finetune --data train.extxyz --property homo --unit eV -o homo.pt. The output is one "
                    "model that relaxes (its force field) and predicts the property.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML: pretrained, out_dir, task, settings (FinetuneSettings), ff_data")
    p.add_argument("--data", help="your labelled structures (extxyz, ASE db, DeePMD npy, ...), the property in "
                   "each frame's info")
    p.add_argument("--property", help="with --data: the info key of the property")
    p.add_argument("--unit", default="", help="with --data: the property's unit (stored in the model, shown in "
                   "every output column); default: the unit the file declares (property_units, as mftcalc writes "
                   "extxyz), else none. A unit other than the declared one is refused: nothing converts labels")
    p.add_argument("--extensive", action="store_true", help="with --data: the property grows with the structure "
                   "(summed per-atom terms); default intensive (averaged)")
    p.add_argument("--strategy", default="mft", choices=strategy_names(),
                   help="with --data; frozen-sklearn: a ridge fit on pooled pretrained features, no training")
    p.add_argument("--val", help="with --data: validation file (default: --val-fraction of the data)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="with --data: seeded validation share")
    p.add_argument("--test", help="with --data: a test file, scored at the end")
    p.add_argument("--frame-param", action="append", default=[], metavar="KEY[:UNIT]",
                   help="with --data: a per-structure condition the property depends on (temperature:K), read "
                        "from each frame's info and fed to the property head; repeat for several")
    p.add_argument("--group-key", metavar="KEY", help="with --data: the label belongs to a group of frames (a "
                   "polymer's repeat unit and end groups, a mixture's molecules): frames with the same info[KEY] are "
                   "one item, their pooled features reduced by a group head")
    p.add_argument("--weight-key", metavar="KEY", default="weight", help="with --group-key: the info key of each "
                   "component's weight in its group (1 when a frame lacks it)")
    p.add_argument("--anchor", metavar="KIND[:WEIGHT]", help=ANCHOR_HELP)
    p.add_argument("--steps", type=int, help="with --data: training steps (default: about 200 passes over the "
                   "data, 1,000-20,000)")
    p.add_argument("--pretrained", help="with --data: pretrained model (default: the shipped models/pretrained.pt)")
    p.add_argument("-o", "--output", help="write the fine-tuned model here (the run's state, curves and parity "
                   "plot go to OUT_run/ beside it)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys: a bare key is a settings key (steps=500) unless it is a top-level "
                        "key (out_dir=run2), a dotted key starts at the top (task.property=homo)")
    p.add_argument("--device", default=None, help="cpu, cuda[:k] or auto (default: the config's, else auto: CUDA when torch sees one, else CPU)")
    p.set_defaults(func=_finetune)
    p = subparsers.add_parser("cv", help="k-fold cross-validation of a strategy on your own labelled data",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="labelled structures (any format) or a SMILES CSV")
    p.add_argument("--property", required=True, help="the property's info key (or CSV column)")
    p.add_argument("--unit", default="", help="the property's unit")
    p.add_argument("--extensive", action="store_true", help="summed per-atom terms (default intensive)")
    p.add_argument("--folds", type=int, default=5, help="number of folds")
    p.add_argument("--frame-param", action="append", default=[], metavar="KEY[:UNIT]",
                   help="a per-structure condition the property depends on (temperature:K); repeat for several")
    p.add_argument("--group-by", choices=["formula", "scaffold"], default=None,
                   help="keep groups together (GroupKFold): formula, or the Murcko scaffold of info['smiles']")
    p.add_argument("--group-key", metavar="KEY", default=None, help="one label per group of frames (frames with "
                   "the same info[KEY], e.g. a mixture's molecules): folds split groups, a group head is trained")
    p.add_argument("--weight-key", metavar="KEY", default="weight", help="with --group-key: the info key of each "
                   "component's weight (1 when a frame lacks it)")
    p.add_argument("--strategy", default="mft", choices=strategy_names(),
                   help="fine-tuning strategy of every fold")
    p.add_argument("--anchor", metavar="KIND[:WEIGHT]", help=ANCHOR_HELP)
    p.add_argument("--steps", type=int, help="training steps per fold (default: the strategy's default)")
    p.add_argument("--pretrained", help="pretrained model (default: the shipped models/pretrained.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and validation draws")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="other FinetuneSettings keys")
    p.add_argument("--out-dir", required=True, help="one run directory per fold, report.md and parity.png")
    p.set_defaults(func=_cv)
    p = subparsers.add_parser("bench", help="strategies x tasks x seeds x fractions, resumable results + tables")
    p.add_argument("config")
    p.add_argument("--shard", metavar="I/N", help="run only cells I, I+N, I+2N, ... (start N processes, e.g. one per "
                   "core, with I = 0..N-1 on the same config; they share the results file)")
    p.add_argument("--strategies", metavar="A,B", help="run only these strategies (names from the config's strategies "
                   "or variants), e.g. mft,ft first and the rest later; the summary covers every finished cell")
    p.add_argument("--seeds", metavar="0,1", help="run only these seeds")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, dotted for nested ones (settings.steps=500, tasks.0.property=homo)")
    p.add_argument("--device", default=None, help="cpu, cuda[:k] or auto (default: the config's, else auto: CUDA when torch sees one, else CPU)")
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
