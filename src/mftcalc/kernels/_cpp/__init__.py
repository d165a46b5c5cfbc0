"""C++ backend of the neighbour search: op schemas, build on first use, on-disk cache, loading.

The op schema (``torch.ops.mftcalc.neighbor_pairs``, same arguments and outputs as
``neighbor_list``) is defined here at import, so TorchScript can compile code that calls it whether
or not the library is built; ``neighbors.cpp`` (with ``grid.h``) registers its CPU kernel with
TORCH_LIBRARY_IMPL (a fragment of the ``mftcalc`` namespace, so other mftcalc ops can live beside
it; a process that runs a scripted model using it must have imported ``mftcalc.kernels`` and built
it once, e.g. through ``NeighborList(cutoff)``). The library is compiled with gcc by
``torch.utils.cpp_extension.load`` the first time it is needed (~20-60 s), into
``$MFTCALC_CACHE`` (default ``~/.cache/mftcalc``, as every mftcalc cache) under a name
that hashes the source, flags and torch version; later processes load the cached library at import.
"""
import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import torch

_LOG = logging.getLogger("mftcalc.kernels")
_SOURCE = Path(__file__).with_name("neighbors.cpp")
_HEADERS = [Path(__file__).with_name("grid.h")]
_NAME = "mftcalc_neighbors"
_CFLAGS = ["-O3", "-fopenmp"]
_LDFLAGS = ["-fopenmp"]

_LIBRARY = torch.library.Library("mftcalc", "FRAGMENT")
_LIBRARY.define(
    "neighbor_pairs(Tensor positions, Tensor batch, Tensor cell, Tensor pbc, float cutoff) -> (Tensor, Tensor, Tensor)"
)


def _build_directory() -> Path:
    root = os.environ.get("MFTCALC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mftcalc"
    )
    key = hashlib.sha256(
        b"".join(path.read_bytes() for path in [_SOURCE, *_HEADERS])
        + " ".join(_CFLAGS + _LDFLAGS + [torch.__version__, torch.__file__, sys.executable]).encode()
    ).hexdigest()[:16]
    return Path(root) / "extensions" / f"neighbors-{key}"


class _State:
    loaded = False
    error: Optional[str] = None


def _load_cached() -> None:
    library = _build_directory() / f"{_NAME}.so"
    if library.is_file():
        try:
            torch.ops.load_library(str(library))
            _State.loaded = True
        except OSError as exc:  # a broken cache entry is rebuilt on first use
            _LOG.debug("could not load cached %s: %s", library, exc)


def available() -> bool:
    """Whether the C++ kernel is loaded, building it on the first call if needed."""
    if _State.loaded or _State.error is not None:
        return _State.loaded
    directory = _build_directory()
    directory.mkdir(parents=True, exist_ok=True)
    _LOG.info("building the C++ neighbour-list kernel in %s (once per source version)", directory)
    print(f"mftcalc: building the C++ neighbour-list operator (first use, about 30-60 s) in {directory}",
          file=sys.stderr, flush=True)
    try:
        from torch.utils.cpp_extension import load

        from mftcalc.kernels.build_tools import packaged_ninja

        with packaged_ninja():
            load(name=_NAME, sources=[str(_SOURCE)], extra_cflags=_CFLAGS, extra_ldflags=_LDFLAGS,
                 build_directory=str(directory), is_python_module=False, verbose=False)
        _State.loaded = True
    except Exception as exc:  # compiler missing or failing: reported by ``error()``
        _State.error = f"{type(exc).__name__}: {exc}"
    return _State.loaded


def error() -> str:
    """Why the C++ kernel is unavailable (empty if it is available or was never tried)."""
    return _State.error or ""


_load_cached()
