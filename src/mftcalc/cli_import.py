"""``mftcalc import-deepmd``: turn a deepmd-kit DPA3 checkpoint (e.g. DPA-3.1-3M) into an mftcalc checkpoint."""
from __future__ import annotations

import argparse
from typing import Any


def _import_deepmd(args: argparse.Namespace) -> int:
    """Run the import; errors (``DeepmdImportError`` is a ``ValueError``) reach ``mftcalc.cli.main``, which prints
    them as one line naming the problem."""
    from ase.data import chemical_symbols

    from mftcalc.model.deepmd_import import import_deepmd
    branches = [b.strip() for b in args.branches.split(",") if b.strip()] if args.branches else None
    result = import_deepmd(args.checkpoint, args.output, branches=branches, deepmd_version=args.deepmd_version)
    prov = result.metadata["deepmd_import"]
    print(f"wrote {result.path}: {len(result.branches)} dataset(s) {', '.join(result.branches)}; elements "
          f"{' '.join(chemical_symbols[z] for z in result.elements)}; training step {prov['training_step']}; "
          f"source sha256 {prov['source_sha256'][:16]}…")
    return 0


def add_import_parser(subparsers: Any) -> None:
    """Register ``import-deepmd``."""
    p = subparsers.add_parser(
        "import-deepmd", help="import a deepmd-kit DPA3 training checkpoint (.pt) as an mftcalc checkpoint",
        description="Each imported branch becomes a force-field dataset of the same name (its case embedding and "
                    "its out_bias + bias_atom_e as the per-element energy shift). Unsupported deepmd-kit options "
                    "(charge/spin embedding, fparam/aparam, exclude types, ZBL, update_angle false, non-smooth "
                    "edge update, data-based environment statistics, ...) are refused by name. deepmd-kit itself "
                    "is not needed.")
    p.add_argument("checkpoint", help="deepmd-kit PyTorch training checkpoint (model.ckpt*.pt), single- or multi-task")
    p.add_argument("-o", "--output", required=True, help="mftcalc checkpoint to write (float64 weights)")
    p.add_argument("--branches", default=None,
                   help="comma-separated branches of a multi-task file to import, in dataset order (default: all); "
                        "branches must share descriptor and fitting net")
    p.add_argument("--deepmd-version", default=None,
                   help="deepmd-kit version that wrote the file, recorded in the metadata (the file does not say)")
    p.set_defaults(func=_import_deepmd)
