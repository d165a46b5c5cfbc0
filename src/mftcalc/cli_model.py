"""``mftcalc export | info | predict | relax | screen | demo | merge``: the model and calculator commands.

``predict``, ``relax`` and ``screen`` take ``--shard I/N`` (one shard of an array job; ``mftcalc merge`` joins the
shard outputs) and ``screen`` takes ``--scheduler ADDRESS`` (a Dask cluster); ``--device`` and ``--threads`` are
added to every command that runs the model by :mod:`mftcalc.cli`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mftcalc.geometry.units import GPA
from mftcalc.relaxation.optimizers import DEVICE_OPTIMIZERS, OPTIMIZERS
from mftcalc.workflows.screening import OUTPUT_HELP

DTYPES = {"float32": torch.float32, "float64": torch.float64}

DATASET_HELP = ("force-field dataset (energy reference) for every structure; default: each structure's "
                "info['dataset'], else the unique dataset whose elements and periodicity cover it (a molecule in a "
                "periodic box with vacuum wider than the model's cutoff counts as a molecule), else an error "
                "naming the candidates (mftcalc info MODEL lists the datasets)")
SHARD_HELP = ("run shard I of N (I = 0..N-1; e.g. one per array-job task): blocks of 256 consecutive structures "
              "dealt round robin, written to OUT's name with .shard-I-of-N before the suffix (resumable CSV); "
              "mftcalc merge OUT joins the N shards into exactly the unsharded output")
OPTIMIZER_HELP = ("per-structure optimiser of the batched relaxation: ASE's FIRE or BFGS, BFGS started from "
                  "Lindh's model Hessian (bfgs-lindh: molecules, about 2/3 of BFGS's steps), or BFGS in redundant "
                  "internal coordinates (bfgs-internal: molecules, about 40%% of BFGS's steps); fire, bfgs and "
                  "bfgs-lindh take the same steps either on the host or on the model's device for all structures "
                  "at once, chosen by a measured rule (always on CUDA); fire-torch, bfgs-torch, bfgs-lindh-torch: "
                  "always on the device")


def _export(args: argparse.Namespace) -> int:
    from mftcalc.model.checkpoint import export_torchscript, load_model
    model = load_model(args.checkpoint, DTYPES[args.dtype])
    export_torchscript(model, args.output, fused=args.fused)
    kind = "fast (needs the mftcalc operator library)" if args.fused else "portable (plain torch.jit.load)"
    print(f"wrote {args.output}: {kind} TorchScript, {args.dtype}")
    return 0


def _grow(args: argparse.Namespace) -> int:
    from mftcalc.model.checkpoint import load_model, save_model
    from mftcalc.model.grow import grow_layers, widen_backbone
    widths = (args.n_dim, args.e_dim, args.a_dim)
    if args.layers is None and widths == (None, None, None):
        raise ValueError("nothing to grow: give --layers N (deeper) and/or --n-dim/--e-dim/--a-dim (wider)")
    if args.layers is not None and args.layers < 1:
        raise ValueError(f"--layers must be at least 1, got {args.layers} (the number of layers to append)")
    if args.residual_init != 0.0 and args.layers is None:
        raise ValueError("--residual-init sets the scales of appended layers: give --layers N with it")
    base = load_model(args.model, dtype=None)           # as stored: a float64 model stays float64
    bb = base.config.backbone
    model, done = base, []
    if widths != (None, None, None):
        n, e, a = (w if w is not None else old for w, old in zip(widths, (bb.n_dim, bb.e_dim, bb.a_dim)))
        model = widen_backbone(model, n, e, a, seed=args.seed)
        done.append(f"widths {bb.n_dim}/{bb.e_dim}/{bb.a_dim} -> {n}/{e}/{a} (node/edge/angle)")
    if args.layers is not None:
        model = grow_layers(model, args.layers, seed=args.seed, residual_init=args.residual_init)
        done.append(f"{bb.n_layers} -> {bb.n_layers + args.layers} layers")
    if args.layers is not None and args.residual_init != 0.0:
        init = (f"new layers' residual scales at {args.residual_init:g}, so it predicts differently from "
                f"{args.model} until trained")
    else:
        init = f"new parts initialised so that it predicts what {args.model} predicts"
    save_model(model, args.output, model.metadata)
    print(f"wrote {args.output}: {', '.join(done)}, {init}; continue its training with "
          f"mftcalc train CONFIG --init {args.output}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from mftcalc.model.card import model_card
    print(model_card(args.model), end="")
    return 0


def _predict(args: argparse.Namespace) -> int:
    if args.group_key:
        from mftcalc.workflows.group_predict import predict_groups
        if args.workers != 1 or args.shard or args.properties or args.dataset:
            raise SystemExit("--group-key predicts every group head in one process: drop --workers, --shard, "
                             "--properties and --dataset")
        rows = predict_groups(args.model, args.input, args.out, args.group_key, args.weight_key, DTYPES[args.dtype],
                              args.device or "auto")
        print(f"{len(rows)} groups\nwrote {args.out}")
        return 0
    from mftcalc.workflows.screening import screen, summary
    rows = screen(args.input, args.model, args.out, do_relax=False, properties=args.properties,
                  workers=args.workers, shard=args.shard, dtype=DTYPES[args.dtype], dataset=args.dataset,
                  device=args.device)
    print(f"{summary(rows, relaxed=False)}\nwrote {_written(args)}")
    return 0


def _relax(args: argparse.Namespace) -> int:
    if args.group_key:
        from mftcalc.workflows.group_predict import predict_groups
        if args.workers != 1 or args.shard or args.dataset:
            raise SystemExit("--group-key relaxes and predicts in one process: drop --workers, --shard and --dataset")
        rows = predict_groups(args.model, args.input, args.out, args.group_key, args.weight_key, DTYPES[args.dtype],
                              args.device or "auto", relax_options=dict(
                                  fmax=args.fmax, steps=args.steps, optimizer=args.optimizer,
                                  cell_filter=args.cell_filter, pressure=args.pressure * GPA))
        converged = sum(r["n_converged"] == r["n_components"] for r in rows)
        print(f"{len(rows)} groups, {converged} with every component relaxed to fmax {args.fmax} eV/Å\n"
              f"wrote {args.out}")
        return 0
    from mftcalc.workflows.screening import screen, summary
    rows = screen(args.input, args.model, args.out, do_relax=True, fmax=args.fmax, steps=args.steps,
                  optimizer=args.optimizer, cell_filter=args.cell_filter, pressure=args.pressure * GPA,
                  workers=args.workers, shard=args.shard,
                  dtype=DTYPES[args.dtype], dataset=args.dataset, device=args.device)
    print(f"{summary(rows, relaxed=True)}\nwrote {_written(args)}")
    return 0


def _screen(args: argparse.Namespace) -> int:
    from mftcalc.workflows.screening import default_model_path, screen, summary
    model = args.model or default_model_path()
    client = None
    if args.scheduler:
        from mftcalc.workflows.dask_screen import connect
        client = connect(args.scheduler)
        print(f"mftcalc: Dask scheduler {args.scheduler}: {len(client.scheduler_info()['workers'])} worker(s)")
    try:
        rows = screen(args.input, model, args.out, do_relax=args.relax, fmax=args.fmax, steps=args.steps,
                      optimizer=args.optimizer, cell_filter=args.cell_filter, pressure=args.pressure * GPA,
                      workers=args.workers, shard=args.shard, client=client, dtype=DTYPES[args.dtype],
                      dataset=args.dataset, device=args.device)
    finally:
        if client is not None:
            client.close()
    print(f"{summary(rows, relaxed=args.relax)}\nwrote {_written(args)}")
    return 0


def _written(args: argparse.Namespace) -> str:
    """The file a predict/relax/screen wrote: ``--out``, or its shard's name."""
    if args.shard is None:
        return args.out
    from mftcalc.workflows.shards import parse_shard, shard_path
    return f"{shard_path(args.out, parse_shard(args.shard))} (mftcalc merge {args.out} once all shards are done)"


def _demo(args: argparse.Namespace) -> int:
    from mftcalc.workflows.demo import run_demo
    from mftcalc.workflows.screening import summary
    rows = run_demo(args.model, Path(args.out_dir), dataset=args.dataset, device=args.device)
    print(summary(rows, relaxed=True))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from mftcalc.workflows.shards import find_shards, merge
    done = merge(args.out, args.shards or None)
    names = args.shards or [p.name for p in find_shards(args.out)]
    print(f"merged {done['shards']} shards ({done['structures']} structures: {', '.join(map(str, names))}) "
          f"into {args.out}")
    return 0


def _inputs(p: Any, model_required: bool = True) -> None:
    if model_required:
        p.add_argument("model", help="checkpoint (.pt) or TorchScript export")
    p.add_argument("input", help="structures: extxyz, ASE db, DeePMD dir, any ASE-readable file")
    p.add_argument("--out", required=True, help=OUTPUT_HELP)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="floating-point precision of the model")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)


def _group_options(p: Any) -> None:
    p.add_argument("--group-key", metavar="KEY", default=None, help="a model with a group head (mftcalc finetune "
                   "--group-key): frames with the same info[KEY] are one group, one output row each (.csv)")
    p.add_argument("--weight-key", metavar="KEY", default="weight", help="with --group-key: the info key of each "
                   "component's weight (1 when a frame lacks it)")


def _relax_options(p: Any) -> None:
    p.add_argument("--fmax", type=float, default=0.05, help="convergence threshold on the largest atomic force, eV/Å")
    p.add_argument("--steps", type=int, default=500, help="maximum optimiser steps per structure")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS) + list(DEVICE_OPTIMIZERS), default="fire",
                   help=OPTIMIZER_HELP)
    p.add_argument("--cell-filter", choices=["unitcell", "frechet"], default=None,
                   help="relax the cell too, as ASE's UnitCellFilter / FrechetCellFilter (periodic structures; "
                   "default: fixed cell)")
    p.add_argument("--pressure", type=float, default=0.0, metavar="GPA",
                   help="hydrostatic pressure on the cell, GPa, with --cell-filter: the relaxed cell has stress "
                   "-pressure (the minimum of the enthalpy E + pV; the energy column stays E) (default: 0)")
    p.add_argument("--workers", type=int, default=1, help="CPU processes, one model copy each (e.g. one per core)")


def _shard_option(p: Any) -> None:
    p.add_argument("--shard", default=None, metavar="I/N",
                   help=SHARD_HELP)


def add_model_parsers(subparsers: Any) -> None:
    """Register ``export``, ``grow``, ``info``, ``predict``, ``relax``, ``screen``, ``demo`` and ``merge``."""
    p = subparsers.add_parser("export", help="TorchScript export of a checkpoint")
    p.add_argument("checkpoint", help="mftcalc checkpoint (.pt) to export")
    p.add_argument("-o", "--output", required=True, help="TorchScript file to write")
    p.add_argument("--fused", action="store_true", help="use the fused C++ angle operator (fast, needs mftcalc)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="floating-point precision of the export")
    p.set_defaults(func=_export)
    p = subparsers.add_parser("grow", help="deepen and/or widen a trained model: appended layers start as the "
                              "identity (or act at once with --residual-init), new feature channels at zero, to "
                              "train further with more capacity")
    p.add_argument("model", help="mftcalc checkpoint (.pt)")
    p.add_argument("--layers", type=int, default=None, help="layers to append (>= 1; default: none)")
    p.add_argument("--n-dim", type=int, default=None, help="new node feature width (default: unchanged)")
    p.add_argument("--e-dim", type=int, default=None, help="new edge feature width (default: unchanged)")
    p.add_argument("--a-dim", type=int, default=None, help="new angle feature width (default: unchanged)")
    p.add_argument("--seed", type=int, default=0, help="seed of the new weights")
    p.add_argument("--residual-init", type=float, default=0.0,
                   help="with --layers: the new layers' residual scales (default 0: same predictions, but the new "
                   "layers engage slowly at a small learning rate; 0.1: a fresh layer's, engaged at once)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    p.set_defaults(func=_grow)
    p = subparsers.add_parser("info", help="model card of a checkpoint: heads, units, elements, size, training, "
                              "validation errors (Markdown)")
    p.add_argument("model", help="mftcalc checkpoint (.pt)")
    p.set_defaults(func=_info)
    p = subparsers.add_parser("predict", help="energies and properties of many structures (batched)")
    _inputs(p)
    p.add_argument("--properties", nargs="*", default=None, help="property heads to predict (default: all)")
    p.add_argument("--workers", type=int, default=1, help="CPU processes, one model copy each")
    _group_options(p)
    _shard_option(p)
    p.set_defaults(func=_predict)
    p = subparsers.add_parser("relax", help="batched relaxation, then properties")
    _inputs(p)
    _relax_options(p)
    _group_options(p)
    _shard_option(p)
    p.set_defaults(func=_relax)
    p = subparsers.add_parser("screen", help="relax-then-predict screening of a structure file (resumable)")
    p.add_argument("input", help="structures: extxyz, ASE db, DeePMD dir, any ASE-readable file")
    p.add_argument("--model", default=None, help="checkpoint or TorchScript export (default: the shipped model)")
    p.add_argument("--relax", action="store_true", help="relax each structure before predicting")
    p.add_argument("--out", required=True, help=OUTPUT_HELP)
    _relax_options(p)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="floating-point precision of the model")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    _shard_option(p)
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the chunks as tasks on a Dask cluster: its scheduler (tcp://host:8786, or a scheduler "
                   "file .json); each worker keeps one model loaded (pip install \"mftcalc[cluster]\"; default: "
                   "this machine)")
    p.set_defaults(func=_screen)
    p = subparsers.add_parser("demo", help="relax-then-predict the bundled example molecules with the shipped model")
    p.add_argument("--model", default=None, help="checkpoint or TorchScript export (default: the shipped model)")
    p.add_argument("--out-dir", default="mftcalc-demo", help="folder for results.csv and demo.png")
    p.add_argument("--dataset", default=None, help="force-field dataset (default: xtb_qm9 when the model has it: the "
                   "bundled molecules are QM9 molecules; else inferred per molecule)")
    p.set_defaults(func=_demo)
    p = subparsers.add_parser("merge", help="join the --shard I/N outputs of a predict/relax/screen into exactly "
                              "the unsharded output")
    p.add_argument("out", help="the --out the shards were run with (results.csv: merges results.shard-*-of-N.csv)")
    p.add_argument("shards", nargs="*", help="shard outputs (default: every OUT-stem.shard-I-of-N file beside OUT)")
    p.set_defaults(func=_merge)
