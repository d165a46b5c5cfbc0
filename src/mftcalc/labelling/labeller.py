"""Resumable, chunked, parallel GFN2-xTB labelling of molecular conformers, and the reader of its output.

Output directory layout (one run per directory)::

    manifest.json              run settings and the QM9 indices, checked on restart
    chunk_00012.extxyz.xz      labelled conformers of molecules [12 * chunk_size, 13 * chunk_size); positions and
                               forces rounded to 1e-6 (Å, eV/Å), charges to 1e-5 e (older runs: .extxyz.gz, exact)
    chunk_00012.json           that chunk's counts, failures and |F| histogram (written just before the chunk)
    failures.log               one line per lost conformer (molecule, kind, slot, stage, error), appended
    summary.json               counts per kind, failures, wall time, rate, |F| percentiles (written at the end)

A chunk counts as done when its ``.extxyz.xz`` (or older ``.extxyz.gz``) exists; both files are written to a temporary name and renamed,
so a kill at any moment loses at most the chunks in progress, and a restart computes only the missing chunks.
Frames carry ``info`` ``qm9_index, kind, conformer, amplitude (Å), temperature (K), seed`` (md also ``md_step``),
``labeller_version`` (:data:`LABELLER_VERSION`; absent from version-1 output) and ``xtb_charges``, labels ``energy``
(eV) and ``forces`` (eV/Å), and the property ``xtb_dipole`` (Debye).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
from tqdm import tqdm

from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.labelling import xtb
from mftcalc.labelling.conformers import KINDS, generate_conformers

PathLike = Union[str, Path]
MANIFEST, SUMMARY, FAILURE_LOG = "manifest.json", "summary.json", "failures.log"
FORMAT_VERSION = 1    # the layout of the output directory
#: what the frames hold, in every frame's ``info`` and in the manifest. 1 (no key; e.g. data/xtb): normal-mode
#: conformers from the Lindh variant of the old training/model_hessian.py (bends and torsions only through pairs with
#: ρ > 0.1). 2: normal modes of :func:`mftcalc.geometry.lindh.lindh_hessian` (every term whose ρ product exceeds
#: 1e-3; softest stiffnesses ~10-20 % higher), constants from :mod:`mftcalc.geometry.units` (CODATA 2018, as before).
LABELLER_VERSION = 2
VERSION_KEY = "labeller_version"
# |F| histogram edges, eV/Å: 0, then 100 log bins per decade from 1e-4 to 1e3 (percentiles good to ~2 %).
FORCE_EDGES = np.concatenate([[0.0], np.logspace(-4, 3, 701)])
PERCENTILES = (1, 5, 25, 50, 75, 95, 99, 99.9)
#: chunk files: written with xz and rounded (CHUNK_DECIMALS for positions and forces, CHARGE_DECIMALS for the
#: charges; both below xTB's own convergence noise and float32 training), read with either suffix.
CHUNK_SUFFIX, OLD_CHUNK_SUFFIX = ".extxyz.xz", ".extxyz.gz"
CHUNK_DECIMALS, CHARGE_DECIMALS = 6, 5


def chunk_path(out_dir: PathLike, chunk: int, suffix: str = CHUNK_SUFFIX) -> Path:
    """``out_dir/chunk_<chunk:05d>.extxyz.xz`` (``suffix`` ``.extxyz.gz`` for a run written before session 8)."""
    return Path(out_dir) / f"chunk_{chunk:05d}{suffix}"


def chunk_files(out_dir: PathLike) -> List[Path]:
    """The chunk files of a run in chunk order, of either suffix."""
    return sorted(p for suffix in (CHUNK_SUFFIX, OLD_CHUNK_SUFFIX) for p in Path(out_dir).glob(f"chunk_*{suffix}"))


def write_chunk(frames: Sequence[Structure], path: PathLike) -> None:
    """Write labelled frames as a chunk: xz extxyz, positions and forces rounded to ``CHUNK_DECIMALS``, charges
    to ``CHARGE_DECIMALS`` (the compact form that keeps data/xtb small enough to travel to a GPU machine)."""
    rounded = [s.with_labels(info={**s.info, xtb.CHARGES_INFO: np.round(np.asarray(s.info[xtb.CHARGES_INFO]),
                                                                          CHARGE_DECIMALS)})
               if xtb.CHARGES_INFO in s.info else s for s in frames]
    write_extxyz(rounded, path, decimals=CHUNK_DECIMALS)


def _sidecar_path(out_dir: PathLike, chunk: int) -> Path:
    """``out_dir/chunk_<chunk:05d>.json``: the chunk's statistics."""
    return Path(out_dir) / f"chunk_{chunk:05d}.json"


def select_molecules(qm9_index: Sequence[int], exclude: Iterable[int], n: int, seed: int) -> np.ndarray:
    """``n`` QM9 indices drawn without replacement (seeded) from ``qm9_index`` minus ``exclude``, in draw order
    (so every chunk, and any prefix of chunks from an interrupted run, is a random sample)."""
    pool = np.setdiff1d(np.asarray(qm9_index, dtype=np.int64), np.fromiter(exclude, dtype=np.int64))
    if n > pool.size:
        raise ValueError(f"asked for {n} molecules but only {pool.size} remain after excluding the test sets")
    return np.random.default_rng(seed).choice(pool, size=n, replace=False)


def label_molecules(molecules: Sequence[Structure], out_dir: PathLike, conformers_per_molecule: int = 7,
                    workers: int = 2, chunk_size: int = 100, seed: int = 0, exclude: Iterable[int] = (),
                    progress: bool = True) -> Dict[str, Any]:
    """Generate and label ``conformers_per_molecule`` conformers of every molecule, resuming a previous run.

    Args:
        molecules: M molecules with distinct ``info["qm9_index"]`` (their order fixes the chunks).
        out_dir: output directory (created); a restart must pass the same molecules and settings.
        conformers_per_molecule: K slots per molecule, split over kinds by ``conformers.allocate``.
        workers: processes (1 = in this process); each runs tblite single-threaded (``xtb.single_threaded``).
        chunk_size: molecules per chunk file.
        seed: seed of every conformer generator.
        exclude: QM9 indices that must not be labelled (e.g. the BOOM test sets); any overlap is an error.
        progress: show a tqdm bar over conformer slots.

    Returns:
        The summary (also written to ``out_dir/summary.json``).
    """
    out_dir = Path(out_dir)
    indices = [_qm9_index(m) for m in molecules]
    if len(set(indices)) != len(indices):
        raise ValueError("molecules must have distinct info['qm9_index'] values")
    banned = sorted(set(indices) & {int(i) for i in exclude})
    if banned:
        raise ValueError(f"{len(banned)} molecules are in the excluded set, e.g. QM9 {banned[:5]}; drop them")
    if workers < 1 or chunk_size < 1:
        raise ValueError(f"workers ({workers}) and chunk_size ({chunk_size}) must be >= 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(out_dir, {"format": FORMAT_VERSION, VERSION_KEY: LABELLER_VERSION, "method": xtb.METHOD,
                              "seed": int(seed), "conformers_per_molecule": int(conformers_per_molecule),
                              "chunk_size": int(chunk_size), "qm9_indices": indices})
    for stale in out_dir.glob(".partial.*"):
        stale.unlink()
    n_chunks = -(-len(molecules) // chunk_size)
    tasks = [(c, list(molecules[c * chunk_size:(c + 1) * chunk_size]), str(out_dir), conformers_per_molecule, seed)
             for c in range(n_chunks) if not _chunk_done(out_dir, c)]
    start, done, failed = time.perf_counter(), 0, 0
    bar = tqdm(total=sum(len(t[1]) for t in tasks) * conformers_per_molecule, unit="conf", desc="xTB labelling",
               disable=not progress, smoothing=0.1)
    with bar, open(out_dir / FAILURE_LOG, "a") as log:
        for stats in _map(_label_chunk, tasks, workers):
            for f in stats["failures"]:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} chunk {stats['chunk']:05d} qm9_index "
                          f"{f['qm9_index']} kind {f['kind']} conformer {f['conformer']} {f['stage']}: "
                          f"{f['error']}\n")
            log.flush()
            done, failed = done + stats["n_conformers"], failed + len(stats["failures"])
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(len(stats["molecules"]) * conformers_per_molecule)
    wall = time.perf_counter() - start
    summary = summarise(out_dir, n_chunks)
    summary.update(wall_s=round(wall, 2), chunks_computed_this_run=len(tasks), conformers_this_run=done,
                   conformers_per_s=round(done / wall, 3) if tasks and wall > 0 else None, workers=workers)
    _write_atomic(out_dir / SUMMARY, json.dumps(summary, indent=1).encode())
    return summary


def summarise(out_dir: PathLike, n_chunks: int) -> Dict[str, Any]:
    """Counts per kind, failures and |F| percentiles (eV/Å, per atom; overall and per kind) over chunks
    0..n_chunks-1, read from the chunk sidecar files."""
    out_dir = Path(out_dir)
    counts, fail_kind, fail_stage = Counter(), Counter(), Counter()
    hist = {k: np.zeros(FORCE_EDGES.size - 1, dtype=np.int64) for k in KINDS}
    fmax = dict.fromkeys(KINDS, 0.0)
    worker_s, n_molecules = 0.0, 0
    for c in range(n_chunks):
        stats = json.loads(_sidecar_path(out_dir, c).read_text())
        counts.update(stats["counts"])
        fail_kind.update(f["kind"] for f in stats["failures"])
        fail_stage.update(f["stage"] for f in stats["failures"])
        for k in KINDS:
            hist[k] += np.asarray(stats["force_hist"][k], dtype=np.int64)
            fmax[k] = max(fmax[k], stats["force_max"][k])
        worker_s += stats["wall_s"]
        n_molecules += len(stats["molecules"])
    forces = {"all": _percentiles(sum(hist.values()), max(fmax.values()))}
    forces.update({k: _percentiles(hist[k], fmax[k]) for k in KINDS if hist[k].any()})
    n_conformers = sum(counts.values())
    return {"method": xtb.METHOD, "n_molecules": n_molecules, "n_chunks": n_chunks, "n_conformers": n_conformers,
            "counts": {k: counts[k] for k in KINDS}, "failures": sum(fail_kind.values()),
            "failures_by_kind": dict(fail_kind), "failures_by_stage": dict(fail_stage),
            "failure_log": FAILURE_LOG, "worker_s": round(worker_s, 2),
            "conformers_per_worker_s": round(n_conformers / worker_s, 3) if worker_s > 0 else None,
            "force_norm_percentiles_eV_per_A": forces}


def read_labelled(out_dir: PathLike) -> List[Structure]:
    """All labelled conformers of a (finished or partial) run, in chunk order."""
    out_dir = Path(out_dir)
    paths = chunk_files(out_dir)
    if not paths:
        raise FileNotFoundError(f"{out_dir}: no chunk_*{CHUNK_SUFFIX} files; run `mftcalc label --out {out_dir}` "
                                "first")
    structures: List[Structure] = []
    for path in paths:
        if path.stat().st_size > 0:
            structures.extend(read_structures(path))
    return structures


def compact_chunks(out_dir: PathLike) -> Dict[str, int]:
    """Rewrite a run's older ``.extxyz.gz`` chunks in the compact form (:func:`write_chunk`), each through a
    temporary file, checked frame for frame (same count, species and energies; coordinates within the rounding)
    before the old file is removed. Returns ``{"chunks", "bytes_before", "bytes_after"}``."""
    out_dir = Path(out_dir)
    counts = {"chunks": 0, "bytes_before": 0, "bytes_after": 0}
    for old in sorted(out_dir.glob(f"chunk_*{OLD_CHUNK_SUFFIX}")):
        new = old.with_name(old.name[: -len(OLD_CHUNK_SUFFIX)] + CHUNK_SUFFIX)
        partial = new.with_name(f".partial.{new.name}")
        frames = read_structures(old) if old.stat().st_size > 0 else []
        if frames:
            write_chunk(frames, partial)
            again = read_structures(partial)
            tolerance = 0.51 * 10.0 ** -CHUNK_DECIMALS
            if len(again) != len(frames) or any(
                    not np.array_equal(a.numbers, b.numbers) or a.energy != b.energy
                    or np.abs(a.positions - b.positions).max() > tolerance
                    or np.abs(a.forces - b.forces).max() > tolerance for a, b in zip(frames, again)):
                partial.unlink()
                raise RuntimeError(f"{old}: the compact copy does not read back as the same frames; kept the old file")
        else:
            partial.write_bytes(b"")
        os.replace(partial, new)
        counts["chunks"] += 1
        counts["bytes_before"] += old.stat().st_size
        counts["bytes_after"] += new.stat().st_size
        old.unlink()
    return counts


# ----------------------------------------------------------------------------------------------- chunk worker
def _label_chunk(task: tuple) -> Dict[str, Any]:
    """Generate, label and write one chunk; returns its sidecar statistics."""
    chunk, molecules, out_dir, n_conformers, seed = task
    start = time.perf_counter()
    frames: List[Structure] = []
    failures: List[Dict[str, Any]] = []
    with xtb.single_threaded():
        for molecule in molecules:
            conformers, lost = generate_conformers(molecule, n_conformers, seed)
            failures += lost
            for conformer in conformers:
                try:
                    frames.append(xtb.label(conformer))
                    frames[-1].info[VERSION_KEY] = LABELLER_VERSION
                except Exception as exc:  # XTBError or a malformed result: logged and counted, never silent
                    failures.append({"qm9_index": conformer.info["qm9_index"], "kind": conformer.info["kind"],
                                     "conformer": conformer.info["conformer"], "stage": "label",
                                     "error": f"{type(exc).__name__}: {exc}"})
    hist, fmax = {}, {}
    for kind in KINDS:
        norms = np.concatenate([np.linalg.norm(s.forces, axis=1) for s in frames if s.info["kind"] == kind] or
                               [np.zeros(0)])
        hist[kind] = np.histogram(np.clip(norms, 0.0, FORCE_EDGES[-1]), FORCE_EDGES)[0].tolist()
        fmax[kind] = float(norms.max()) if norms.size else 0.0
    stats = {"chunk": chunk, "molecules": [_qm9_index(m) for m in molecules], "n_conformers": len(frames),
             "counts": dict(Counter(s.info["kind"] for s in frames)), "failures": failures,
             "force_hist": hist, "force_max": fmax, "wall_s": round(time.perf_counter() - start, 3)}
    path = chunk_path(out_dir, chunk)
    _write_atomic(_sidecar_path(out_dir, chunk), json.dumps(stats).encode())
    partial = path.with_name(f".partial.{path.name}")
    if frames:
        write_chunk(frames, partial)
    else:
        partial.write_bytes(b"")  # an empty chunk still marks the molecules as done
    os.replace(partial, path)
    return stats


def _map(function, tasks: list, workers: int) -> Iterator[Dict[str, Any]]:
    """``function`` over ``tasks``, in this process (workers=1) or a pool of ``workers`` spawned processes."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(function, tasks)
        return
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(function, tasks)


# ----------------------------------------------------------------------------------------------- helpers
def _qm9_index(molecule: Structure) -> int:
    if "qm9_index" not in molecule.info:
        raise ValueError("every molecule needs info['qm9_index'] (it names the molecule and seeds its conformers)")
    return int(molecule.info["qm9_index"])


def _chunk_done(out_dir: Path, chunk: int) -> bool:
    written = any(chunk_path(out_dir, chunk, suffix).is_file() for suffix in (CHUNK_SUFFIX, OLD_CHUNK_SUFFIX))
    return written and _sidecar_path(out_dir, chunk).is_file()


def _check_manifest(out_dir: Path, settings: Dict[str, Any]) -> None:
    """Write the manifest on a first run; on a restart, refuse settings that differ from it."""
    path = out_dir / MANIFEST
    if not path.is_file():
        _write_atomic(path, json.dumps(settings).encode())
        return
    previous = json.loads(path.read_text())
    changed = [k for k in settings if previous.get(k) != settings[k]]
    if changed:
        version = (f" (written by labeller version {previous.get(VERSION_KEY, 1)}, this is version "
                   f"{LABELLER_VERSION}: its conformers differ)" if VERSION_KEY in changed else "")
        raise ValueError(f"{out_dir} holds a run with different {', '.join(changed)}{version}; resume with the "
                         "same molecules and settings, or choose a new output directory")


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".partial.{path.name}")
    partial.write_bytes(data)
    os.replace(partial, path)


def _percentiles(hist: np.ndarray, fmax: float) -> Optional[Dict[str, float]]:
    """Percentiles of |F| from a histogram on FORCE_EDGES (linear within a bin), plus the exact maximum."""
    total = int(hist.sum())
    if total == 0:
        return None
    cumulative = np.concatenate([[0], np.cumsum(hist)])
    out = {"n_atoms": total}
    for p in PERCENTILES:
        target = p / 100.0 * total
        b = int(np.clip(np.searchsorted(cumulative, target) - 1, 0, hist.size - 1))
        frac = (target - cumulative[b]) / max(hist[b], 1)
        value = FORCE_EDGES[b] + frac * (FORCE_EDGES[b + 1] - FORCE_EDGES[b])
        out[f"p{p:g}"] = round(float(min(value, fmax)), 4)
    out["max"] = round(fmax, 4)
    return out
