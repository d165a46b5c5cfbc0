"""The ``mftcalc`` command: parses arguments and calls the package functions, nothing more."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from mftcalc.cli_data import add_data_parser
from mftcalc.cli_finetune import add_finetune_parsers
from mftcalc.cli_label import add_label_parser
from mftcalc.cli_model import add_model_parsers
from mftcalc.cli_train import add_train_parsers


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mftcalc``; each sub-command sets ``args.func(args) -> int`` (the exit status)."""
    parser = argparse.ArgumentParser(prog="mftcalc", description="Multi-task fine-tuned force fields and properties.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_data_parser(subparsers)
    add_train_parsers(subparsers)
    add_model_parsers(subparsers)
    add_finetune_parsers(subparsers)
    add_label_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
