"""Torch's CPU thread count for a run of the model: asked for, from ``OMP_NUM_THREADS``, or the idle cores.

Why not torch's default (one thread per core): on a machine whose other cores are busy, an OpenMP thread that
waits for a descheduled peer at every barrier makes each small operator of a batched relaxation many times slower
(``mftcalc demo`` took 15-30 s with torch's default of 2 threads on a 2-core machine with one core busy, 1.0-1.2 s
on one thread; ``benchmarks/threads_demo.py``). So the default counts the cores this process may run on
(``os.sched_getaffinity``) minus those the 1-minute load average says are busy (rounded to the nearest core), at
least 1: one thread beside a running job, all cores on an idle machine (where a batch of a thousand atoms runs
about 1.4x faster on two threads than on one). The load average is a guess, and it lags the machine by about a
minute; ``mftcalc`` therefore also sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads OpenMP (idle threads sleep
instead of spinning), so that a wrong guess costs about 1.4x, not 10x. ``--threads N`` (or ``OMP_NUM_THREADS``)
overrides the guess.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):           # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def choose_threads(requested: Optional[int] = None) -> Tuple[int, str]:
    """``(threads, why)``: ``requested`` if given, else ``OMP_NUM_THREADS`` if set, else the idle cores (module
    docs). Raises ``ValueError`` for a count below 1."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env:
        try:
            value = int(env.split(",")[0])
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env!r} is not a thread count; set it to a positive integer or "
                             "unset it") from None
        if value < 1:
            raise ValueError(f"OMP_NUM_THREADS={env!r} must be at least 1")
        return value, "OMP_NUM_THREADS"
    cores = usable_cores()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = min(cores - 1, int(load + 0.5))
    threads = max(1, cores - busy)
    return threads, (f"{cores} core{'s' if cores > 1 else ''}, load average {load:.1f}: {busy} busy; "
                     "--threads N to override")


def apply_threads(requested: Optional[int] = None) -> Tuple[int, str]:
    """Set torch's intra-op threads by :func:`choose_threads`; returns ``(threads, why)``."""
    import torch
    threads, why = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads, why
