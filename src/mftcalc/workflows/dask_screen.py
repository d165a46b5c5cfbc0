"""A screen's chunks as tasks on a Dask cluster: each worker process keeps one model loaded; results come back
in input order.

:func:`run_chunks` submits one task per chunk (:func:`mftcalc.workflows.screen_chunk.screen_chunk`), at most a
few per worker at a time, and yields each chunk's rows as soon as it and every chunk before it are done, so
:func:`mftcalc.workflows.screening.screen` appends them to the same resumable, provenance-checked output as a
local run (a killed client loses only the chunks in flight). The model travels once: its file's bytes are
scattered to every worker, and a worker-side cache keyed by the model's SHA-256 and load options keeps the loaded
model for all later tasks (one model per worker process; a different model replaces it). Nothing on the workers
needs the input or model files: structures travel with their tasks. Workers must run the client's mftcalc
version (checked per task).

Workers: one process per core with one thread each (``threads_per_worker=1``; the batched relaxation runs
single-threaded torch best, see :mod:`mftcalc.relaxation.pool`), or one per GPU with ``device="cuda"``/``"auto"``.
Dask is optional: ``pip install "mftcalc[cluster]"`` (``dask[distributed]``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import uuid
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data.structure import Structure
from mftcalc.workflows.screen_chunk import screen_chunk

_log = logging.getLogger(__name__)
_CACHE: Dict[str, ModelHandle] = {}            # worker side: at most one loaded model per worker process
_CACHE_LOCK = threading.Lock()
_LOADS = [0]                                   # worker side: how many times this process loaded a model


def loads() -> int:
    """How many times this (worker) process has loaded a model for screen tasks (``client.run(loads)``)."""
    return _LOADS[0]


def connect(scheduler: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``scheduler`` (``tcp://host:8786``, or a scheduler file
    ending in ``.json``); ``ImportError`` with the install line when Dask is missing."""
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("--scheduler needs Dask distributed: pip install \"mftcalc[cluster]\" (or "
                          "pip install \"dask[distributed]\")") from None
    if scheduler.endswith(".json"):
        return Client(scheduler_file=scheduler)
    return Client(scheduler)


def model_payload(handle: ModelHandle) -> bytes:
    """The bytes of the handle's model file (checkpoint or TorchScript export), or of a checkpoint of a model
    object without one."""
    if handle.source is not None:
        with open(handle.source, "rb") as fh:
            return fh.read()
    module = handle.module
    if not hasattr(module, "config"):
        raise ValueError("Dask workers load the model from its file: pass the checkpoint or TorchScript path (or a "
                         "handle loaded from it) instead of a TorchScript module object")
    from mftcalc.model.checkpoint import save_model
    with tempfile.TemporaryDirectory(prefix="mftcalc-dask-") as tmp:
        path = os.path.join(tmp, "model.pt")
        save_model(module, path, metadata=handle.metadata)
        with open(path, "rb") as fh:
            return fh.read()


def _worker_handle(key: str, payload: bytes, load_kwargs: Dict[str, Any]) -> ModelHandle:
    """The worker's model for ``key``, loaded from ``payload`` on first use and kept (one model per process)."""
    with _CACHE_LOCK:
        handle = _CACHE.get(key)
        if handle is None:
            import warnings
            from mftcalc.calculators.model_handle import DomainWarning
            warnings.simplefilter("ignore", DomainWarning)     # the client warned once for the whole screen
            with tempfile.TemporaryDirectory(prefix="mftcalc-dask-") as tmp:
                path = os.path.join(tmp, "model.pt")
                with open(path, "wb") as fh:
                    fh.write(payload)
                handle = ModelHandle.load(path, **load_kwargs)
            handle.source = None                              # the temporary file is gone
            _LOADS[0] += 1
            _CACHE.clear()
            _CACHE[key] = handle
        return handle


def _run_chunk(version: str, key: str, payload: bytes, load_kwargs: Dict[str, Any],
               structures: Dict[int, Structure], options: Dict[str, Any], labels: bool
               ) -> Tuple[List[Dict[str, Any]], Dict[int, Structure], str]:
    """One task: a chunk on this worker's model. Returns its rows, final structures and the worker's device."""
    from mftcalc import __version__
    if version != __version__:
        raise RuntimeError(f"this Dask worker runs mftcalc {__version__}, the client {version}; install the same "
                           "mftcalc on the workers (results of two versions are not mixed in one output)")
    handle = _worker_handle(key, payload, load_kwargs)
    final: Dict[int, Structure] = {}
    rows = screen_chunk(structures, handle, None, final_structures=final, labels=labels, **options)
    return rows, final if labels else {}, str(handle.device)


def run_chunks(client: Any, chunks: Iterable[Dict[int, Structure]], handle: ModelHandle,
               load_kwargs: Dict[str, Any], options: Dict[str, Any], labels: bool,
               model_sha256: Optional[str] = None, per_worker: int = 2
               ) -> Iterator[Tuple[List[Dict[str, Any]], Dict[int, Structure]]]:
    """Run each chunk (structures by input index) as a task on ``client``'s workers; yield ``(rows,
    final_structures)`` per chunk in the order of ``chunks``.

    ``load_kwargs``: how workers load the model (:meth:`ModelHandle.load`: ``device``, ``dtype``, ``dataset``,
    ...); ``options``: :func:`screen_chunk`'s (``do_relax``, ``fmax``, ``steps``, ``names``, ``optimizer``,
    ``cell_filter``); ``labels``: keep the final structures with the model's results (extxyz/db outputs).
    At most ``per_worker`` chunks per worker thread are in flight or waiting for an earlier chunk (workers that
    join later, e.g. SLURM jobs that start late, are counted as they come). A failed task cancels the rest and
    raises here."""
    from distributed import wait
    from mftcalc import __version__
    payload = model_payload(handle)
    sha = model_sha256 or hashlib.sha256(payload).hexdigest()
    key = f"{sha}:{sorted((k, str(v)) for k, v in load_kwargs.items())}"
    payload_future = client.scatter(payload, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:12]
    source = enumerate(chunks)
    exhausted = False
    futures: Dict[Any, Any] = {}                  # in flight, by task key
    numbers: Dict[Any, int] = {}
    done: Dict[int, tuple] = {}                   # finished, waiting for an earlier chunk
    said = set()

    def top_up() -> None:
        nonlocal exhausted
        window = max(2, per_worker * sum(client.nthreads().values()))
        while not exhausted and len(futures) + len(done) < window:
            item = next(source, None)
            if item is None:
                exhausted = True
                return
            number, structures = item
            future = client.submit(_run_chunk, __version__, key, payload_future, load_kwargs, structures, options,
                                   labels, key=f"mftcalc-screen-{run_id}-{number}", pure=False)
            numbers[future.key] = number
            futures[future.key] = future

    try:
        emitted = 0
        while True:
            top_up()
            if not futures and not done:
                return
            try:
                finished = wait(list(futures.values()), timeout=5, return_when="FIRST_COMPLETED").done
            except TimeoutError:                   # nothing finished: look again for new workers
                continue
            for future in finished:
                rows, final, device = future.result()          # re-raises a worker's exception here
                done[numbers.pop(future.key)] = (rows, final)
                del futures[future.key]                        # releases the result on the worker
                if device not in said:
                    said.add(device)
                    _log.info("dask workers: model on %s", device)
            while emitted in done:
                yield done.pop(emitted)
                emitted += 1
    finally:
        if futures:
            client.cancel(list(futures.values()))
