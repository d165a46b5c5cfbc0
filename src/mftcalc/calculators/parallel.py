"""Batched relaxation and prediction spread over worker processes (CPU): each worker holds its own model copy.

On a CPU the batched model evaluation of small molecules scales poorly with torch threads (on 2 cores, 2 threads
run a batched relaxation 1.4x faster than 1; two 1-thread processes run it about 1.8x faster), so screening many
structures is faster with one single-threaded process per core, each running the in-flight batched relaxation of
:func:`mftcalc.calculators.batched.relax` on its share. Chunks of the input go to whichever worker is free, so the
load balances itself; results come back in input order.

Workers are started with the ``spawn`` method (safe next to torch's thread pools), so a script that uses them
must keep its top-level code under ``if __name__ == "__main__":``. Each worker reloads the model from its file
(the handle's ``source``); an eager model object without a file is written to a temporary checkpoint first.
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.structure import Structure

_WORKER_HANDLE: Optional[ModelHandle] = None


def _init_worker(source: str, load_kwargs: Dict[str, Any], threads: int) -> None:
    global _WORKER_HANDLE
    torch.set_num_threads(threads)
    _WORKER_HANDLE = ModelHandle.load(source, **load_kwargs)


def _relax_chunk(structures: List[Structure], relax_kwargs: Dict[str, Any]) -> list:
    from mftcalc.calculators.batched import relax
    return relax(structures, _WORKER_HANDLE, workers=1, **relax_kwargs)


def _predict_chunk(structures: List[Structure], predict_kwargs: Dict[str, Any]) -> list:
    from mftcalc.calculators.batched import predict
    return predict(structures, _WORKER_HANDLE, workers=1, **predict_kwargs)


class ModelWorkers:
    """``workers`` processes with ``threads`` torch threads each (default: this process's threads / workers, at
    least 1), ready to relax (or predict) structures with the model of ``handle``. Use as a context manager, or
    ``close()``."""

    def __init__(self, handle: ModelHandle, workers: int, threads: Optional[int] = None) -> None:
        if workers < 2:
            raise ValueError(f"ModelWorkers needs workers >= 2, got {workers}")
        if handle.device.type != "cpu":
            raise ValueError(f"worker processes are for CPU models; this one is on {handle.device} (use workers=1)")
        self._tmpdir = None
        source = handle.source
        if source is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="mftcalc-workers-")
            source = os.path.join(self._tmpdir.name, "model.pt")
            _write_model(handle.module, handle.metadata, source)
        threads = threads or max(1, torch.get_num_threads() // workers)
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_init_worker, initargs=(source, handle.load_kwargs(), threads))

    def relax(self, structures: Sequence[Structure], chunk: Optional[int] = None,
              on_done: Optional[Callable[[int], None]] = None, **relax_kwargs: Any) -> list:
        """:func:`mftcalc.calculators.batched.relax` of ``structures`` in chunks of ``chunk`` over the workers;
        ``on_done(n)`` after each finished chunk of n structures. Results in input order.

        ``chunk`` defaults to a quarter of each worker's share, at most 64 structures: small enough that the
        workers finish together, large enough to keep each worker's in-flight batch full.
        """
        return self._map(_relax_chunk, structures, chunk, on_done, relax_kwargs)

    def predict(self, structures: Sequence[Structure], chunk: Optional[int] = None,
                on_done: Optional[Callable[[int], None]] = None, **predict_kwargs: Any) -> list:
        """:func:`mftcalc.calculators.batched.predict` over the workers, as :meth:`relax` (chunks of up to 256)."""
        return self._map(_predict_chunk, structures, chunk, on_done, predict_kwargs, largest=256)

    def _map(self, task: Callable, structures: Sequence[Structure], chunk: Optional[int],
             on_done: Optional[Callable[[int], None]], kwargs: Dict[str, Any], largest: int = 64) -> list:
        structures = list(structures)
        if chunk is None:
            chunk = max(1, min(largest, -(-len(structures) // (4 * self.workers))))
        chunks = [structures[k:k + chunk] for k in range(0, len(structures), chunk)]
        futures = {self._pool.submit(task, c, kwargs): k for k, c in enumerate(chunks)}
        results: List[Optional[list]] = [None] * len(chunks)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                k = futures[future]
                results[k] = future.result()            # re-raises a worker's exception here
                if on_done is not None:
                    on_done(len(chunks[k]))
        return [r for part in results for r in part]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()

    def __enter__(self) -> "ModelWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _write_model(module: torch.nn.Module, metadata: Dict[str, Any], path: str) -> None:
    """An eager model object to a checkpoint the workers can load."""
    if isinstance(module, torch.jit.ScriptModule) or not hasattr(module, "config"):
        raise ValueError("worker processes reload the model from its file: pass the checkpoint or TorchScript path "
                         "(or a handle loaded from it) instead of a TorchScript module object")
    from mftcalc.model.checkpoint import save_model
    save_model(module, path, metadata=metadata)
