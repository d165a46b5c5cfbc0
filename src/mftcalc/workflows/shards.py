"""Shards of a screen for scheduler array jobs: which structures shard I of N runs, its output's name, and
``mftcalc merge``, which joins the shard outputs into exactly the output of one unsharded run.

Layout (block-strided): the input's structures, in file order, are cut into blocks of ``block`` consecutive
structures (the screen's ``chunk``, 256 by default; the last block may be shorter), and block ``b`` goes to shard
``b mod N``. A block is the unit a screen relaxes together (:mod:`mftcalc.workflows.screen_chunk`), so every
structure sits in the same batches as in the unsharded run and, on the same kind of device with the same torch
thread count and without ``workers`` > 1, gets the same numbers to the last bit; dealing blocks round robin evens
out inputs sorted by size (QM9 files grow along the file).

Shard ``I`` of ``N`` of ``--out results.csv`` writes ``results.shard-I-of-N.csv`` (``.extxyz``, ``.extxyz.gz``,
``.db`` likewise) with a provenance record that is the unsharded run's plus ``options.shard`` (this layout). A CSV
shard is resumable like any screen; an extxyz or db shard gets its record when it is complete. :func:`merge`
refuses shards whose records disagree (model, input, options, mftcalc version), missing or unfinished shards and
shards still being written, naming the problem and the fix.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mftcalc.workflows.results_store import acquire_lock, differences, write_results
from mftcalc.workflows.screen_format import output_format, output_suffix, provenance_path

Shard = Tuple[int, int]


def parse_shard(text: Optional[str | Sequence[int]]) -> Optional[Shard]:
    """``"I/N"`` (or ``(I, N)``) -> ``(I, N)`` with 0 <= I < N; None stays None. ``ValueError`` otherwise."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            i, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise ValueError(f"shard must look like I/N (e.g. 0/4: the first of 4 shards), got {text!r}") from None
    else:
        i, n = (int(v) for v in text)
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= I < N (shards are numbered 0 to N-1)")
    return i, n


def blocks(n_structures: int, block: int, shard: Optional[Shard] = None) -> List[List[int]]:
    """The input indices in blocks of ``block`` (module docs); with ``shard=(I, N)`` only shard I's blocks."""
    if block < 1:
        raise ValueError(f"chunk (the block size) must be >= 1, got {block}")
    out = [list(range(start, min(start + block, n_structures))) for start in range(0, n_structures, block)]
    return out if shard is None else out[shard[0]::shard[1]]


def shard_path(out: str | Path, shard: Shard) -> Path:
    """Output of shard ``(I, N)``: ``results.csv`` -> ``results.shard-I-of-N.csv`` (the suffix stays last)."""
    out = Path(out)
    suffix = output_suffix(out)
    return out.with_name(f"{out.name[:len(out.name) - len(suffix)]}.shard-{shard[0]}-of-{shard[1]}{suffix}")


def shard_option(shard: Shard, block: int, n_structures: int) -> Dict[str, int]:
    """The provenance entry ``options.shard`` of a shard: its number, the count, the block size and the input's
    size (what :func:`blocks` needs to know which indices it holds)."""
    return {"index": shard[0], "count": shard[1], "block": block, "structures": n_structures}


def find_shards(out: str | Path) -> List[Path]:
    """The shard outputs of ``out`` beside it (``results.shard-*-of-*.csv`` for ``results.csv``), by name."""
    out = Path(out)
    suffix = output_suffix(out)
    stem = out.name[:len(out.name) - len(suffix)]
    pattern = re.compile(re.escape(stem) + r"\.shard-(\d+)-of-(\d+)" + re.escape(suffix) + "$")
    found = [p for p in out.parent.glob(f"{stem}.shard-*-of-*{suffix}") if pattern.match(p.name)]
    return sorted(found, key=lambda p: tuple(int(v) for v in pattern.match(p.name).groups()))


def merge(out: str | Path, shard_files: Optional[Sequence[str | Path]] = None) -> Dict[str, Any]:
    """Join the shard outputs of a screen into ``out``: exactly the output (rows, order, columns, units, and for
    a CSV its provenance record) that the unsharded screen writes. ``shard_files`` default: :func:`find_shards`.

    Refuses (``ValueError``) an existing ``out``, a missing or unfinished shard (rerun it: a CSV shard resumes),
    shards of different runs (their provenance records differ) or of different layouts, and a shard still being
    written (its lock is held). Returns ``{"structures": n, "shards": N}``."""
    out = Path(out)
    kind = output_format(out)
    files = [Path(f) for f in shard_files] if shard_files else find_shards(out)
    if not files:
        raise ValueError(f"no shard outputs of {out} found (expected {shard_path(out, (0, 2)).name}, ...); run "
                         "mftcalc screen/predict/relax with --shard I/N and the same --out first")
    if out.exists():
        raise ValueError(f"{out} exists; merge writes a new file: delete it or merge into another name")
    records = [_record(f, out) for f in files]
    layout = _check_layout(files, records, out)
    base = {**records[0], "options": {k: v for k, v in records[0]["options"].items() if k != "shard"}}
    for f, record in zip(files[1:], records[1:]):
        other = {**record, "options": {k: v for k, v in record["options"].items() if k != "shard"}}
        changed = differences(base, other)
        if changed:
            raise ValueError(f"{f.name} comes from a different run than {files[0].name} ({'; '.join(changed)}); "
                             "merge only shards of one screen (same model, input, options and mftcalc version)")
    n, block, count = layout["structures"], layout["block"], layout["count"]
    expected = {layout_index: [k for b in blocks(n, block, (layout_index, count)) for k in b]
                for layout_index in range(count)}
    with ExitStack() as locks:
        for f in files:                                  # a shard still running holds its lock: refused here
            lock = f.with_name(f.name + (".lock" if kind == "csv" else ".screen.lock"))
            locks.callback(os.close, acquire_lock(lock, f))
        by_shard = {rec["options"]["shard"]["index"]: f for f, rec in zip(files, records)}
        if kind == "csv":
            rows: Dict[int, Dict[str, str]] = {}
            for i, f in sorted(by_shard.items()):
                rows.update(_csv_rows(f, base["columns"], expected[i], i, count))
            write_results(out, base["columns"], [rows[k] for k in range(n)], base)
        elif kind == "extxyz":
            frames: Dict[int, str] = {}
            for i, f in sorted(by_shard.items()):
                frames.update(zip(expected[i], _extxyz_frames(f, len(expected[i]), i, count)))
            opener = gzip.open if out.suffix == ".gz" else open
            with opener(out, "wt") as fh:
                fh.write("".join(frames[k] for k in range(n)))
        else:
            _merge_db(out, by_shard, expected, count)
    return {"structures": n, "shards": count}


def _record(f: Path, out: Path) -> Dict[str, Any]:
    """A shard's provenance record, checked to be a shard's."""
    if output_format(f) != output_format(out):
        raise ValueError(f"{f.name} is not a {output_format(out)} output like {out.name}")
    path = provenance_path(f)
    if not f.exists():
        raise ValueError(f"shard output {f} does not exist")
    if not path.exists():
        raise ValueError(f"{f.name} has no provenance record ({path.name}): an extxyz/db shard gets it when it is "
                         "complete, so this shard is unfinished or was not written by a sharded screen; rerun it")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}); rerun that shard into a new --out") from None
    if not isinstance((record.get("options") or {}).get("shard"), dict):
        raise ValueError(f"{f.name}: its provenance record has no options.shard, so it is not a shard of a "
                         "sharded screen (run with --shard I/N)")
    return record


def _check_layout(files: List[Path], records: List[Dict[str, Any]], out: Path) -> Dict[str, int]:
    """The shards' common layout; refuses mixed layouts, repeated and missing shards."""
    layouts = [{k: v for k, v in rec["options"]["shard"].items() if k != "index"} for rec in records]
    for f, layout in zip(files[1:], layouts[1:]):
        if layout != layouts[0]:
            raise ValueError(f"{f.name} has shard layout {layout}, {files[0].name} has {layouts[0]} (shard count, "
                             "chunk size, input size): merge only the shards of one sharded run")
    seen: Dict[int, Path] = {}
    for f, rec in zip(files, records):
        i = rec["options"]["shard"]["index"]
        if i in seen:
            raise ValueError(f"{seen[i].name} and {f.name} are both shard {i}; keep one")
        seen[i] = f
    count = layouts[0]["count"]
    missing = [i for i in range(count) if i not in seen]
    if missing:
        raise ValueError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} of {out.name} missing "
                         f"({', '.join(shard_path(out, (i, count)).name for i in missing[:3])}); run them with "
                         "--shard I/N first")
    return layouts[0]


def _unfinished(i: int, count: int, what: str) -> ValueError:
    return ValueError(f"shard {i}/{count} is unfinished ({what}); rerun the same command with --shard {i}/{count} "
                      "(it resumes), then merge")


def _csv_rows(f: Path, columns: List[str], expected: List[int], i: int, count: int) -> Dict[int, Dict[str, str]]:
    """Shard ``i``'s rows by index, checked complete: its header, one whole row per expected index."""
    text = f.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        raise _unfinished(i, count, f"{f.name} ends in a torn line")
    records = list(csv.reader(text.splitlines()))
    if not records or records[0] != columns:
        raise ValueError(f"{f.name}: its header is not the columns of its provenance record (edited by hand?); "
                         f"rerun shard {i}/{count} into a new --out")
    rows: Dict[int, Dict[str, str]] = {}
    for values in records[1:]:
        if len(values) != len(columns) or not values[0].isdigit():
            raise _unfinished(i, count, f"{f.name} has an invalid row {values[:3]}")
        rows[int(values[0])] = dict(zip(columns, values))
    if sorted(rows) != expected or len(records) - 1 != len(expected):
        raise _unfinished(i, count, f"{f.name} has {len(records) - 1} row(s) for {len(rows)} structure(s), "
                          f"the shard holds {len(expected)}")
    return rows


def _extxyz_frames(f: Path, n_expected: int, i: int, count: int) -> List[str]:
    """The frames of an extxyz shard as text (atom-count line, comment line, atom lines), checked complete."""
    opener = gzip.open if f.suffix == ".gz" else open
    with opener(f, "rt") as fh:
        lines = fh.read().splitlines(keepends=True)
    frames, k = [], 0
    while k < len(lines):
        n_atoms = int(lines[k])
        frames.append("".join(lines[k:k + n_atoms + 2]))
        k += n_atoms + 2
    if len(frames) != n_expected:
        raise _unfinished(i, count, f"{f.name} has {len(frames)} structures, the shard holds {n_expected}")
    return frames


def _merge_db(out: Path, by_shard: Dict[int, Path], expected: Dict[int, List[int]], count: int) -> None:
    """ASE-db shards into one database, rows in input order (key-value pairs and calculator results kept)."""
    from ase.db import connect
    rows: Dict[int, Any] = {}
    for i, f in sorted(by_shard.items()):
        shard_rows = list(connect(f).select(sort="id"))
        if len(shard_rows) != len(expected[i]):
            raise _unfinished(i, count, f"{f.name} has {len(shard_rows)} rows, the shard holds {len(expected[i])}")
        rows.update(zip(expected[i], shard_rows))
    with connect(out) as db:
        for k in sorted(rows):
            db.write(rows[k].toatoms(), key_value_pairs=dict(rows[k].key_value_pairs))
