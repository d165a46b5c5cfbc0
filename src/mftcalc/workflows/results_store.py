"""The resumable results CSV of a screen: provenance record, lock, whole-line appends, validation on resume.

Files beside ``results.csv``:

- ``results.csv.provenance.json``: what wrote the rows (mftcalc version, SHA-256 of the model and input files,
  the options that change results, the columns). A resume with anything different is refused with a message
  naming what changed, since mixing rows of two models or two thresholds in one table is silently wrong; so is a
  CSV without this record (written by an older mftcalc, or by hand).
- ``results.csv.lock``: held with ``fcntl.flock`` for the whole run, so a second run on the same output is
  refused at once instead of writing every row a second time. The kernel drops the lock when the process ends,
  however it ends; the empty file stays.

Rows are appended in whole lines (one ``os.write`` of complete lines per chunk, then ``fsync``), so a kill tears
at most the last line. On resume every row is validated (complete line, the right number of fields, index in
range, values that parse, one row per index); torn or invalid rows are dropped (the file is rewritten atomically
without them, with a warning naming them) and their structures are redone.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from mftcalc import __version__
from mftcalc.filehash import sha256_file
from mftcalc.files import atomic_write_text


class ResumeError(ValueError):
    """The output holds results of a different run (or of an unknown one); the message says how to proceed."""


class OutputLockedError(RuntimeError):
    """Another process is writing the same output."""


def make_provenance(model_sha256: str, model_file: Optional[str], input_path: str | Path,
                    options: Dict[str, Any], columns: Sequence[str],
                    input_sha256: Optional[str] = None) -> Dict[str, Any]:
    """The provenance record of a screen (compared field by field on resume, file paths excepted).

    ``input_sha256``: the input's digest when it is not the file ``input_path`` (structures passed as a list:
    ``input_path`` then only describes them)."""
    return {"format": "mftcalc-screen", "version": 1, "mftcalc_version": __version__,
            "model": {"sha256": model_sha256, "file": model_file},
            "input": {"sha256": input_sha256 or sha256_file(input_path), "file": str(input_path)},
            "options": dict(options), "columns": list(columns)}


def differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Human-readable list of what differs between two provenance records (paths are not compared)."""
    out = []
    if old.get("mftcalc_version") != new.get("mftcalc_version"):
        out.append(f"mftcalc version {old.get('mftcalc_version')} -> {new.get('mftcalc_version')}")
    for part, what in (("model", "model file"), ("input", "input file")):
        a, b = old.get(part) or {}, new.get(part) or {}
        if a.get("sha256") != b.get("sha256"):
            out.append(f"{what} {a.get('file')} (sha256 {str(a.get('sha256'))[:12]}) -> {b.get('file')} "
                       f"(sha256 {str(b.get('sha256'))[:12]})")
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            out.append(f"{key} {old_opts.get(key)!r} -> {new_opts.get(key)!r}")
    if old.get("columns") != new.get("columns") and not out:
        out.append(f"columns {old.get('columns')} -> {new.get('columns')}")
    return out


class ResultsCSV:
    """One screen's CSV with its provenance record and lock; use as a context manager (the lock is held inside).

    Args:
        path: the CSV. columns: its header. provenance: :func:`make_provenance` of this run.
        validate: ``validate(row) -> None or reason`` for one parsed row (a dict column -> string).
    On entry: ``done`` holds the valid rows of a matching earlier run by index (``{}`` for a fresh file).
    """

    def __init__(self, path: str | Path, columns: Sequence[str], provenance: Dict[str, Any],
                 validate: Callable[[Dict[str, str]], Optional[str]]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.provenance = provenance
        self.validate = validate
        self.record = self.path.with_name(self.path.name + ".provenance.json")
        self.lock = self.path.with_name(self.path.name + ".lock")
        self.done: Dict[int, Dict[str, str]] = {}
        self._lock_fd: Optional[int] = None

    def __enter__(self) -> "ResultsCSV":
        self._lock_fd = acquire_lock(self.lock, self.path)
        try:
            self._open()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)          # releases the flock
            self._lock_fd = None

    def _open(self) -> None:
        has_rows = self.path.exists() and len(self.path.read_bytes().splitlines()) > 1    # beyond the header
        if not has_rows:
            atomic_write_text(self.record, json.dumps(self.provenance, indent=1, sort_keys=True) + "\n")
            atomic_write_text(self.path, _lines([self.columns]))
            return
        start_over = (f"write to a new --out, or delete {self.path.name} and {self.record.name} to start over")
        if not self.record.exists():
            raise ResumeError(f"{self.path} has results but no provenance record ({self.record.name}), so mftcalc "
                              f"cannot tell which model and options wrote them; {start_over}")
        try:
            old = json.loads(self.record.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ResumeError(f"{self.record} is not readable JSON ({exc}); {start_over}") from None
        changed = differences(old, self.provenance)
        if changed:
            raise ResumeError(f"{self.path} holds results of a different run ({'; '.join(changed)}); resuming would "
                              f"mix them with this run's; {start_over}")
        self.done = self._read_valid_rows()

    def _read_valid_rows(self) -> Dict[int, Dict[str, str]]:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        problems: List[str] = []
        if not text.endswith("\n"):                      # a kill in the middle of the last write
            cut = text.rfind("\n") + 1
            problems.append(f"a torn last line ({text[cut:][:40]!r})")
            text = text[:cut]
        records = list(csv.reader(io.StringIO(text)))
        if not records or records[0] != self.columns:
            raise ResumeError(f"{self.path}: its header {records[0] if records else '(none)'} is not this run's "
                              f"{self.columns} although the provenance record matches (edited by hand?); write to a "
                              f"new --out, or delete {self.path.name} and {self.record.name} to start over")
        done: Dict[int, Dict[str, str]] = {}
        for line, values in enumerate(records[1:], start=2):
            if len(values) != len(self.columns):
                problems.append(f"line {line}: {len(values)} fields instead of {len(self.columns)}")
                continue
            row = dict(zip(self.columns, values))
            reason = self.validate(row)
            if reason is None and int(row["index"]) in done:
                reason = f"a second row for structure {row['index']}"
            if reason is not None:
                problems.append(f"line {line}: {reason}")
                continue
            done[int(row["index"])] = row
        if problems:
            warnings.warn(f"{self.path}: dropped {len(problems)} torn or invalid row(s), whose structures are redone: "
                          + "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else ""), stacklevel=3)
            atomic_write_text(self.path, _lines([self.columns] + [[row[c] for c in self.columns]
                                                                   for row in done.values()]))
        return done

    def append(self, rows: Sequence[Dict[str, Any]]) -> None:
        """Append rows (dicts over ``columns``) as whole lines: one write of complete lines, then fsync."""
        if not rows:
            return
        data = _lines([[_cell(row.get(c, "")) for c in self.columns] for row in rows]).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:                                   # os.write may write less than asked
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)


def write_results(path: str | Path, columns: Sequence[str], rows: Sequence[Dict[str, Any]],
                  provenance: Dict[str, Any]) -> None:
    """A finished results CSV in one go (e.g. merged shards): its provenance record, then the table, each
    written atomically, formatted exactly as :class:`ResultsCSV` appends rows (so a resume reads it back)."""
    path = Path(path)
    atomic_write_text(path.with_name(path.name + ".provenance.json"),
                      json.dumps(provenance, indent=1, sort_keys=True) + "\n")
    atomic_write_text(path, _lines([list(columns)] + [[row.get(c, "") for c in columns] for row in rows]))


def acquire_lock(lock_path: Path, output: Path) -> int:
    """Open ``lock_path`` and take an exclusive non-blocking ``flock``; the fd holds it (close it to release).
    Raises :class:`OutputLockedError` when another process holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutputLockedError(f"another mftcalc run is writing {output} (it holds {lock_path.name}); wait for it "
                                "to finish, or write to another --out") from None
    return fd


def _cell(value: Any) -> str:
    """One CSV field: one line (newlines in messages or names become spaces)."""
    return " ".join(str(value).splitlines()) if value is not None else ""


def _lines(records: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows([[_cell(v) for v in record] for record in records])
    return buf.getvalue()
