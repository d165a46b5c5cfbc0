"""The one ninja every build of mftcalc's C++ operators runs.

``torch.utils.cpp_extension`` runs whatever ``ninja`` comes first on ``PATH``. Two ninja versions (say a system
1.11 and the ``ninja`` package's 1.13) read each other's ``.ninja_log`` as invalid and rebuild everything, so
processes with different ``PATH``s sharing one build directory (a command-line tool with a trimmed ``PATH`` beside
an interactive session) would recompile an operator at every alternation (25-60 s each). The ``ninja`` package
is a declared dependency; its binary goes first for the duration of a build.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def packaged_ninja() -> Iterator[None]:
    """``PATH`` with the ``ninja`` package's binary directory first, restored on exit (unchanged when the
    package is absent: then the ninja on ``PATH`` builds, as torch would pick it)."""
    try:
        import ninja
        bin_dir = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = bin_dir + (os.pathsep + old if old else "")
    try:
        yield
    finally:
        os.environ["PATH"] = old
