"""Builds (on first use) and loads the C++/OpenMP library that registers ``torch.ops.mftcalc.angle_block``.

The sources ship in ``csrc/``; ``torch.utils.cpp_extension.load`` compiles them with ninja into a per-user cache
(``$MFTCALC_CACHE/torch_extensions/<torch+python tag>`` or ``~/.cache/mftcalc/torch_extensions/<tag>``) and
rebuilds only when a source or flag changes. Portable flags only (no ``-march=native``): the AVX2 loops are a
separate translation unit chosen at run time from the CPU's features.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from mftcalc.kernels.build_tools import packaged_ninja

LIBRARY_NAME = "mftcalc_angle_block"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("angle_autograd.cpp", "angle_ops.cpp", "angle_kernels_default.cpp", "angle_kernels_avx2.cpp")
CFLAGS = ["-O3", "-fopenmp", "-fno-trapping-math", "-Wall", "-Wno-unused-parameter", "-Wno-unknown-pragmas"]
LDFLAGS = ["-fopenmp"]

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_loaded = False
_error: Optional[str] = None


def cache_dir() -> Path:
    """Build directory for this torch/Python combination (created if missing)."""
    root = Path(os.environ["MFTCALC_CACHE"]) if os.environ.get("MFTCALC_CACHE") else \
        Path.home() / ".cache" / "mftcalc"
    # one build per torch installation and source tree: two environments (a project venv and a peer's) or two
    # checkouts (a clone and a git worktree of an older commit) sharing the cache would otherwise overwrite each
    # other's build.ninja (it holds absolute source paths) and rebuild on every alternation (25-60 s each)
    sources = b"".join(p.read_bytes() for p in sorted(CSRC.iterdir()) if p.suffix in (".cpp", ".h"))
    flags = " ".join(CFLAGS + LDFLAGS + list(SOURCES))      # a library found there is loaded as it is
    where = hashlib.sha256(f"{torch.__file__}|{sys.executable}|{CSRC}|{flags}".encode() + sources).hexdigest()[:8]
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{where}".replace("+", "_")
    path = root / "torch_extensions" / tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build_and_load() -> None:
    from torch.utils import cpp_extension

    build_directory = cache_dir()
    _log.info("loading the fused angle-block library from %s (compiled on first use, ~0.5-1 min)", build_directory)
    library = build_directory / f"{LIBRARY_NAME}.so"
    start = time.perf_counter()
    if library.exists():       # the directory's tag hashes the sources: a library there was built from these
        try:
            torch.ops.load_library(str(library))
            _log.info("fused angle-block library loaded from the cache in %.1f s", time.perf_counter() - start)
            return
        except OSError as exc:  # a broken cache entry is rebuilt
            _log.info("cached %s did not load (%s); rebuilding", library, exc)
    print(f"mftcalc: building the C++ angle-block operator (first use, about 30-60 s) in {build_directory}",
          file=sys.stderr, flush=True)
    with packaged_ninja():
        cpp_extension.load(name=LIBRARY_NAME, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=CFLAGS,
                           extra_ldflags=LDFLAGS, extra_include_paths=[str(CSRC)],
                           build_directory=str(build_directory), is_python_module=False, verbose=False)
    _log.info("fused angle-block library ready after %.1f s", time.perf_counter() - start)


def load_library() -> None:
    """Build (first time) and load the op library, once per process; raises RuntimeError with the build error.

    Call it before ``torch.jit.load`` of a TorchScript file that uses ``torch.ops.mftcalc.angle_block``.
    """
    global _loaded, _error
    with _lock:
        if _loaded:
            return
        if _error is None:
            try:
                _build_and_load()
                _loaded = True
                return
            except Exception as exc:  # compiler missing, build failure, load failure: all reported the same way
                _error = f"{type(exc).__name__}: {exc}"
        raise RuntimeError(f"the fused angle-block library {LIBRARY_NAME!r} could not be built or loaded:\n{_error}")


def fused_available() -> bool:
    """True if the library is loaded (building it on the first call); never raises."""
    try:
        load_library()
    except RuntimeError:
        return False
    return True


def build_error() -> Optional[str]:
    """The build or load error of this process, or None (no attempt yet, or success)."""
    return _error
