"""Worker processes for batched relaxation and prediction (CPU): each worker holds its own model copy.

On a CPU the batched model evaluation of small molecules scales poorly with torch threads (on 2 cores, 2 threads
run a batched relaxation 1.4x faster than 1; two 1-thread processes run it about 1.8x faster), so screening many
structures is faster with one single-threaded process per core, each running the in-flight batched relaxation of
:func:`mftcalc.relaxation.engine.relax_stream` on a shared input queue: a worker pulls the next structure
whenever its batch has room, so every worker keeps a full batch until the input runs out, and the nearly empty
batch at the end of a relaxation (its slowest structures alone) happens once per worker, not once per chunk.
Other work (prediction: :func:`mftcalc.calculators.predict.predict_on`) goes out in chunks to whichever worker is
free, as a function the caller names (:meth:`WorkerPool.map`), so this module imports the engine and nothing above
it. Results come back in input order. :class:`mftcalc.relaxation.api.ModelWorkers` adds ``relax``/``predict`` methods.

Workers are started with the ``spawn`` method (safe next to torch's thread pools), so a script that uses them
must keep its top-level code under ``if __name__ == "__main__":``. Each worker reloads the model from its file
(the handle's ``source``); an eager model object without a file is written to a temporary checkpoint first.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import tempfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.structure import Structure
from mftcalc.relaxation.engine import relax_stream

_WORKER_HANDLE: Optional[ModelHandle] = None
_WORKER_QUEUES: Optional[tuple] = None


def _init_worker(source: str, load_kwargs: Dict[str, Any], threads: int, queues: tuple) -> None:
    global _WORKER_HANDLE, _WORKER_QUEUES
    import warnings
    from mftcalc.calculators.model_handle import DomainWarning
    warnings.simplefilter("ignore", DomainWarning)   # the parent process has checked the inputs and warned once
    torch.set_num_threads(threads)
    _WORKER_HANDLE = ModelHandle.load(source, **load_kwargs)
    _WORKER_QUEUES = queues


def _relax_stream_worker(stream_kwargs: Dict[str, Any]) -> int:
    """Relax structures from the shared task queue until its end marker; each result goes to the result queue.
    Returns how many this worker relaxed."""
    from threadpoolctl import threadpool_limits
    tasks, results = _WORKER_QUEUES
    done = [0]

    def items():
        while True:
            item = tasks.get()
            if item is None:
                return
            yield item

    def emit(key: Any, result: Any) -> None:
        results.put((key, result))
        done[0] += 1

    with threadpool_limits(limits=1, user_api="blas"):
        relax_stream(items(), emit, _WORKER_HANDLE, **stream_kwargs)
    return done[0]


def _run_task(task: Callable[[ModelHandle, List[Structure], Dict[str, Any]], list], structures: List[Structure],
              kwargs: Dict[str, Any]) -> list:
    return task(_WORKER_HANDLE, structures, kwargs)


class WorkerPool:
    """``workers`` processes with ``threads`` torch threads each (default: this process's threads / workers, at
    least 1), ready to relax structures (:meth:`relax_stream`) or run a function on chunks of them (:meth:`map`)
    with the model of ``handle``. Use as a context manager, or ``close()``."""

    def __init__(self, handle: ModelHandle, workers: int, threads: Optional[int] = None) -> None:
        if workers < 2:
            raise ValueError(f"worker processes need workers >= 2, got {workers} (workers=1 runs in this process)")
        if handle.device.type != "cpu":
            raise ValueError(f"worker processes are for CPU models; this one is on {handle.device}: use workers=1 "
                             "on the GPU, or load the model on the CPU (device='cpu'; CLI --device cpu)")
        self._tmpdir = None
        source = handle.source
        if source is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="mftcalc-workers-")
            source = os.path.join(self._tmpdir.name, "model.pt")
            _write_model(handle.module, handle.metadata, source)
        threads = threads or max(1, torch.get_num_threads() // workers)
        self.workers = workers
        self.handle = handle
        context = multiprocessing.get_context("spawn")
        self._tasks, self._results = context.Queue(), context.Queue()
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                                         initargs=(source, handle.load_kwargs(), threads,
                                                   (self._tasks, self._results)))

    def relax_stream(self, items: Sequence[tuple], emit: Callable[[Any, Any], None],
                     stream_kwargs: Dict[str, Any]) -> None:
        """:func:`mftcalc.relaxation.engine.relax_stream` of ``items`` ``(key, structure, cost)`` on all workers
        from one shared queue; ``emit(key, result)`` here, in this process, as each structure finishes."""
        items = list(items)
        for item in items:
            self._tasks.put(item)
        for _ in range(self.workers):
            self._tasks.put(None)                        # one end marker per worker
        futures = [self._pool.submit(_relax_stream_worker, stream_kwargs) for _ in range(self.workers)]
        received = 0
        while received < len(items):
            try:
                key, result = self._results.get(timeout=0.2)
            except queue.Empty:
                for future in futures:
                    if future.done() and future.exception() is not None:
                        raise future.exception()          # a worker failed: re-raise its error here
                continue
            emit(key, result)
            received += 1
        for future in futures:
            future.result()

    def map(self, task: Callable[[ModelHandle, List[Structure], Dict[str, Any]], list],
            structures: Sequence[Structure], kwargs: Dict[str, Any], chunk: Optional[int] = None,
            on_done: Optional[Callable[[int], None]] = None, largest: int = 64) -> list:
        """``task(handle, chunk_of_structures, kwargs)`` on the workers (each with its model handle), one chunk of
        ``chunk`` structures at a time (default: a quarter of an even share per worker, at most ``largest``);
        returns the concatenated lists in input order. ``task`` must be a module-level function (it is sent to
        the workers by reference); ``on_done(n)`` here as each chunk of n structures finishes."""
        structures = list(structures)
        if chunk is None:
            chunk = max(1, min(largest, -(-len(structures) // (4 * self.workers))))
        chunks = [structures[k:k + chunk] for k in range(0, len(structures), chunk)]
        futures = {self._pool.submit(_run_task, task, c, kwargs): k for k, c in enumerate(chunks)}
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

    def __enter__(self) -> "WorkerPool":
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
