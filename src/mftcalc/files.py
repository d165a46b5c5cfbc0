"""Atomic file writes: the content goes to a temporary file beside the target, is flushed to disk, and is renamed
over the target, so a reader (or a killed run that resumes) never sees a half-written file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file in ``path``'s folder, fsync it, make it world-readable (0644) and
    rename it over ``path``; the temporary file is removed if ``write`` fails. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)                # mkstemp creates 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8, newlines as given)."""
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    return atomic_write(path, write)


def atomic_write_binary(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """:func:`atomic_write` through an open binary file object (e.g. ``lambda fh: numpy.savez_compressed(fh,
    **arrays)``: numpy then keeps the name as given instead of appending ``.npz``)."""
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)
    return atomic_write(path, fill)
