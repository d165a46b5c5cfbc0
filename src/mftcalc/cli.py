"""The ``mftcalc`` command: parses arguments and calls the package functions, nothing more.

Every sub-command's help shows its defaults; ``--version``; ``--debug`` (before or after the sub-command) shows
tracebacks, which are otherwise caught here and printed as one line that names the problem and the fix. The
commands that run the model (:data:`MODEL_COMMANDS`) take ``--threads`` and print the torch thread count they use
(:mod:`mftcalc.calculators.threads`), and ``--device`` (default ``auto``; the model's device is printed when it
loads, :meth:`mftcalc.calculators.model_handle.ModelHandle.load`).
"""
from __future__ import annotations

import os

# libgomp reads its environment once, when torch loads it: set before anything imports torch, so that idle OpenMP
# threads sleep instead of spinning on a busy machine (mftcalc.calculators.threads); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from typing import Any, Iterator, Optional, Sequence  # noqa: E402

from mftcalc import __version__  # noqa: E402
from mftcalc.cli_calibrate import add_calibrate_parser  # noqa: E402
from mftcalc.cli_descriptors import add_descriptors_parser  # noqa: E402
from mftcalc.cli_change_bias import add_change_bias_parser  # noqa: E402
from mftcalc.cli_data import add_data_parser  # noqa: E402
from mftcalc.cli_finetune import add_finetune_parsers  # noqa: E402
from mftcalc.cli_import import add_import_parser  # noqa: E402
from mftcalc.cli_label import add_label_parser  # noqa: E402
from mftcalc.cli_model import add_model_parsers  # noqa: E402
from mftcalc.cli_md import add_md_parser  # noqa: E402
from mftcalc.cli_model_devi import add_model_devi_parser  # noqa: E402
from mftcalc.cli_vibrations import add_vibrations_parser  # noqa: E402
from mftcalc.cli_train import add_train_parsers  # noqa: E402

#: sub-commands that evaluate the model: they take ``--threads``
MODEL_COMMANDS = ("predict", "relax", "screen", "demo", "evaluate", "descriptors", "vibrations", "model-devi",
                  "md")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults-in-help, except for defaults that say nothing (None, False, required options): their
    help says in words what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or action.required:
            return action.help or ""
        return super()._get_help_string(action)


class _SubcommandParser(argparse.ArgumentParser):
    """A sub-command's parser: help shows the defaults, and ``--debug`` is accepted after the sub-command too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                          help="show the full traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    """The ``mftcalc`` parser with every sub-command registered."""
    parser = argparse.ArgumentParser(prog="mftcalc", description="Multi-task fine-tuned force fields and properties.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"mftcalc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    add_data_parser(subparsers)
    add_train_parsers(subparsers)
    add_model_parsers(subparsers)
    add_finetune_parsers(subparsers)
    add_label_parser(subparsers)
    add_import_parser(subparsers)
    add_change_bias_parser(subparsers)
    add_calibrate_parser(subparsers)
    add_descriptors_parser(subparsers)
    add_vibrations_parser(subparsers)
    add_model_devi_parser(subparsers)
    add_md_parser(subparsers)
    for name in MODEL_COMMANDS:
        subparsers.choices[name].add_argument(
            "--threads", type=int, default=None,
            help="torch CPU threads (default: OMP_NUM_THREADS if set, else the cores the load average shows idle, "
                 "at least 1)")
        subparsers.choices[name].add_argument(
            "--device", default="auto", help="cpu, cuda[:k] or auto (CUDA when torch sees a device, else cpu); the "
            "choice is printed")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``mftcalc``; each sub-command sets ``args.func(args) -> int`` (the exit status)."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    with _console(debug):
        try:
            if args.command in MODEL_COMMANDS:
                from mftcalc.calculators.threads import apply_threads
                threads, why = apply_threads(args.threads)
                print(f"mftcalc: {threads} torch thread{'s' if threads > 1 else ''} ({why})", file=sys.stderr)
            return args.func(args)
        except KeyboardInterrupt:
            print("mftcalc: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:       # SystemExit (argparse, commands that exit with a message) passes through
            if debug:
                raise
            print(f"mftcalc {args.command}: error: {one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
            return 1


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message (whitespace collapsed), prefixed by its type unless it is one of the
    input errors whose messages name the problem and the fix (ValueError, KeyError, OSError)."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = " ".join(str(message).split()) or type(exc).__name__
    return message if isinstance(exc, (ValueError, KeyError, OSError)) else f"{type(exc).__name__}: {message}"


@contextlib.contextmanager
def _console(debug: bool) -> Iterator[None]:
    """During one command: mftcalc's log (INFO; the kernels' only with ``--debug``) and warnings as
    ``mftcalc: ...`` lines on stderr; restored afterwards."""
    root = logging.getLogger("mftcalc")
    kernels = logging.getLogger("mftcalc.kernels")
    saved = (root.level, kernels.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mftcalc: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    kernels.setLevel(logging.DEBUG if debug else logging.WARNING)

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        where = f" ({filename}:{lineno})" if debug else ""
        print(f"mftcalc: warning: {message}{where}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        kernels.setLevel(saved[1])


if __name__ == "__main__":
    raise SystemExit(main())
