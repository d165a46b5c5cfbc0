"""``mftcalc train`` (pretraining from a YAML config) and ``mftcalc evaluate`` (errors and parity plots)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _train(args: argparse.Namespace) -> int:
    from mftcalc.training.pretrain import PretrainConfig, pretrain
    from mftcalc.training.distributed import distributed_session
    pairs = list(args.set or []) + ([f"device={args.device}"] if args.device else [])
    pairs += [f"init={args.init}"] if args.init else []
    if args.time_budget is not None and not args.time_budget > 0:
        raise ValueError(f"--time-budget must be a positive number of minutes, got {args.time_budget:g} (leave it "
                         "out to train to the config's steps)")
    if args.export_only and args.time_budget is not None:
        raise ValueError("--export-only trains no step; leave out --time-budget (or leave out --export-only to train)")
    cfg = PretrainConfig.from_yaml(args.config, set_pairs=pairs)
    if args.export_only and not Path(cfg.state_path).exists():
        raise ValueError(f"--export-only writes the model of the training state {cfg.state_path}, which does not "
                         "exist; train first (without --export-only), or point state_path at a state with --set")
    with distributed_session(cfg.device) as (rank, world):
        if args.export_only:          # stop at step 0: resume the state, train nothing, validate and export
            card = pretrain(cfg, stop_at=0)
        else:
            card = pretrain(cfg, time_budget_s=args.time_budget * 60 if args.time_budget is not None else None)
        if rank == 0:
            print(json.dumps({k: card[k] for k in ("steps", "train_wall_s", "parameters", "validation")}, indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mftcalc.cli_evaluate import evaluate_files
    evaluate_files(args.model, args.data, dataset=args.dataset, plot=args.plot, max_structures=args.max_structures,
                   device=args.device, group_by=args.group_by, detail=args.detail)
    return 0


def add_train_parsers(subparsers: Any) -> None:
    """Register ``train`` and ``evaluate``."""
    p = subparsers.add_parser("train", help="pretrain a force field on several datasets (YAML config)")
    p.add_argument("config", help="YAML file mapped onto mftcalc.training.pretrain.PretrainConfig")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config keys, dotted for nested ones (steps=1000, datasets.0.prob=0.9)")
    p.add_argument("--device", default=None, help="cpu, cuda[:k] or auto (default: the config's device, else auto: CUDA when torch sees one, else CPU)")
    p.add_argument("--init", default=None, metavar="MODEL.pt",
                   help="fine-tune the force field of a trained model on the config's datasets: its datasets keep "
                        "their embeddings (add them with prob 0 to report their retention, or > 0 to replay them), "
                        "new ones are appended (init_from: start from a named one)")
    p.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="stop (with a checkpoint and the model written) after this many minutes; rerun to resume")
    p.add_argument("--export-only", action="store_true",
                   help="train no step: load the config's training state (state_path), validate it and write the "
                        "model, its card, replay and held-out sets as a finished run would (a snapshot of a run "
                        "in progress; the state is left as it is)")
    p.set_defaults(func=_train)
    p = subparsers.add_parser("evaluate", help="energy/force errors of a model on labelled data, with parity plot")
    p.add_argument("model", help="checkpoint (.pt) or TorchScript export")
    p.add_argument("data", nargs="+", help="labelled structure files (extxyz, db, deepmd dirs)")
    p.add_argument("--dataset", default=None, help="force-field dataset for every structure (default: the model's "
                   "only one, the structure's info['dataset'], or the unique dataset covering it; ambiguous "
                   "structures are refused naming the candidates)")
    p.add_argument("--plot", default="parity.png", help="parity plot output path")
    p.add_argument("--max-structures", type=int, default=None, help="evaluate only the first N structures of "
                   "each file (default: all)")
    p.add_argument("--group-by", default=None, metavar="KEY", help="also give the energy and force errors per "
                   "value of this info key of the structures (e.g. config_type), under each file")
    p.add_argument("--detail", default=None, metavar="FILE.csv", help="also write one row per structure: reference "
                   "and predicted energy, energy error per atom, force MAE and largest force error, properties "
                   "(deepmd-kit's dp test --detail-file, one table); names the worst structures")
    p.set_defaults(func=_evaluate)
