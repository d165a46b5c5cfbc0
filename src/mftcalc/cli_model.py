"""``mftcalc export | predict | relax | screen | demo``: the model and calculator commands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from mftcalc.calculators.batched import OPTIMIZERS

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _export(args: argparse.Namespace) -> int:
    from mftcalc.model.checkpoint import export_torchscript, load_model
    model = load_model(args.checkpoint, DTYPES[args.dtype])
    export_torchscript(model, args.output, fused=args.fused)
    kind = "fast (needs the mftcalc operator library)" if args.fused else "portable (plain torch.jit.load)"
    print(f"wrote {args.output}: {kind} TorchScript, {args.dtype}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from mftcalc.model.card import model_card
    print(model_card(args.model), end="")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mftcalc.workflows.screening import screen
    rows = screen(args.input, args.model, args.out, do_relax=False, properties=args.properties,
                  workers=args.workers, dtype=DTYPES[args.dtype])
    print(f"wrote {len(rows)} predictions to {args.out}")
    return 0


def _relax(args: argparse.Namespace) -> int:
    from mftcalc.workflows.screening import screen
    rows = screen(args.input, args.model, args.out, do_relax=True, fmax=args.fmax, steps=args.steps,
                  optimizer=args.optimizer, cell_filter=args.cell_filter, workers=args.workers,
                  dtype=DTYPES[args.dtype])
    converged = sum(str(r["converged"]) == "True" for r in rows)
    print(f"relaxed {len(rows)} structures ({converged} converged) -> {args.out}")
    return 0


def _screen(args: argparse.Namespace) -> int:
    from mftcalc.workflows.screening import default_model_path, screen
    model = args.model or default_model_path()
    rows = screen(args.input, model, args.out, do_relax=args.relax, fmax=args.fmax, steps=args.steps,
                  optimizer=args.optimizer, cell_filter=args.cell_filter, workers=args.workers,
                  dtype=DTYPES[args.dtype])
    print(f"screened {len(rows)} structures -> {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mftcalc.workflows.demo import run_demo
    run_demo(args.model, Path(args.out_dir))
    return 0


def _common(p: Any, model_required: bool = True) -> None:
    if model_required:
        p.add_argument("model", help="checkpoint (.pt) or TorchScript export")
    p.add_argument("input", help="structures: extxyz, ASE db, DeePMD dir, any ASE-readable file")
    p.add_argument("--out", required=True, help="results: .csv (resumable), .extxyz or .db")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")


def add_model_parsers(subparsers: Any) -> None:
    """Register ``export``, ``predict``, ``relax``, ``screen`` and ``demo``."""
    p = subparsers.add_parser("export", help="TorchScript export of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--fused", action="store_true", help="use the fused C++ angle operator (fast, needs mftcalc)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.set_defaults(func=_export)
    p = subparsers.add_parser("info", help="model card of a checkpoint: heads, units, elements, size, training, "
                              "validation errors (Markdown)")
    p.add_argument("model")
    p.set_defaults(func=_info)
    p = subparsers.add_parser("predict", help="energies and properties of many structures (batched)")
    _common(p)
    p.add_argument("--properties", nargs="*", default=None)
    p.add_argument("--workers", type=int, default=1, help="CPU processes, one model copy each (default 1)")
    p.set_defaults(func=_predict)
    p = subparsers.add_parser("relax", help="batched FIRE relaxation, then properties")
    _common(p)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="fire",
                   help="per-structure optimiser of the batched relaxation: ASE's FIRE or BFGS, BFGS started from "
                   "Lindh's model Hessian (bfgs-lindh: molecules, about 2/3 of BFGS's steps), or BFGS in redundant "
                   "internal coordinates (bfgs-internal: molecules, about 40%% of BFGS's steps)")
    p.add_argument("--cell-filter", choices=["unitcell", "frechet"], default=None,
                   help="relax the cell too, as ASE's UnitCellFilter / FrechetCellFilter (periodic structures)")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU processes, one model copy each (e.g. one per core; default 1)")
    p.set_defaults(func=_relax)
    p = subparsers.add_parser("screen", help="relax-then-predict screening of a structure file (resumable)")
    p.add_argument("input")
    p.add_argument("--model", default=None, help="default: the shipped model")
    p.add_argument("--relax", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="fire",
                   help="per-structure optimiser of the batched relaxation: ASE's FIRE or BFGS, BFGS started from "
                   "Lindh's model Hessian (bfgs-lindh: molecules, about 2/3 of BFGS's steps), or BFGS in redundant "
                   "internal coordinates (bfgs-internal: molecules, about 40%% of BFGS's steps)")
    p.add_argument("--cell-filter", choices=["unitcell", "frechet"], default=None,
                   help="relax the cell too, as ASE's UnitCellFilter / FrechetCellFilter (periodic structures)")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU processes, one model copy each (e.g. one per core; default 1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.set_defaults(func=_screen)
    p = subparsers.add_parser("demo", help="relax-then-predict the bundled example molecules with the shipped model")
    p.add_argument("--model", default=None, help="default: the shipped model")
    p.add_argument("--out-dir", default="mftcalc-demo")
    p.set_defaults(func=_demo)
