"""Data-parallel training on torch's own engine: process groups from torchrun's environment and the
``DistributedDataParallel`` wrapper used by :class:`mftcalc.training.loop.Trainer`.

Semantics (the same for ``mftcalc train`` and ``mftcalc finetune``):

- ``torchrun --nproc_per_node K ...`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``; :func:`distributed_session`
  starts the process group: NCCL when the run's device is CUDA (each rank on ``cuda:LOCAL_RANK``), gloo on CPU.
- A source's ``batch_size`` is **per rank**: the global batch of a step is ``batch_size × WORLD_SIZE``. Every rank
  draws the same global batch from the shared sampler and keeps its ``rank::world`` slice, and the losses are
  normalised by the global batch, so K processes give the gradient of one process with a K× batch.
  When you scale the batch, the usual advice applies: keep ``lr0`` for up to a few ranks (Adam is insensitive to
  the batch size over small factors), and scale it by ``sqrt(K)`` beyond; the run's settings record the world size.
- Resume across world sizes works (the sampler state is an epoch and a position); the changed world size, and so
  the changed global batch, is stated in ``resume.log``.
- Rank 0 alone writes CSVs, plots, checkpoints and model files; the others wait at a barrier. The logged
  training losses and errors are those of the global batch (:func:`all_reduce_logged_parts`).
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, Iterator, Tuple

import torch


def world_from_env() -> int:
    """``WORLD_SIZE`` set by torchrun (1 outside torchrun); refuses a malformed value."""
    text = os.environ.get("WORLD_SIZE", "1")
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"WORLD_SIZE={text!r} is not a positive integer; launch with torchrun --nproc_per_node K")
    return int(text)


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_rank0() -> bool:
    return rank_and_world()[0] == 0


def backend_for(device: str) -> str:
    """``nccl`` for CUDA runs, ``gloo`` otherwise (``auto`` is CUDA when torch sees a GPU)."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def local_device(device: str) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for CUDA runs under torchrun, else ``device`` unchanged."""
    if world_from_env() > 1 and backend_for(device) == "nccl":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


@contextlib.contextmanager
def distributed_session(device: str = "cpu") -> Iterator[Tuple[int, int]]:
    """Starts the process group when launched by torchrun with WORLD_SIZE > 1 (and tears it down after);
    yields (rank, world). Outside torchrun it yields (0, 1) and does nothing."""
    world = world_from_env()
    if world == 1 or torch.distributed.is_initialized():
        yield rank_and_world()
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend)
    try:
        yield rank_and_world()
    finally:
        torch.distributed.destroy_process_group()


def wrap_data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when a process group with more than one rank is running, else
    ``model`` itself. Parameters unused by a step (the force-field head on a property step, frozen blocks) are
    expected, so unused-parameter detection is on; DDP averages gradients over ranks (the loop scales the local
    loss by the world size so that the sum over ranks is the gradient of the global-batch loss)."""
    rank, world = rank_and_world()
    if world == 1:
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum of a Python float over ranks (for logging the global loss); the value itself when not distributed."""
    rank, world = rank_and_world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def all_reduce_logged_parts(parts: Dict[str, float], device: torch.device) -> Dict[str, float]:
    """Global-batch values of a training step's logged parts from each rank's share (one all-reduce).

    The parts are this rank's shares normalised by global-batch counts (see ``Trainer._batch_loss``): keys ending
    in ``loss`` or ``mae``, or whose last part starts with ``mae_``, are summed over ranks; ``rmse`` keys are
    ``sqrt(local squared errors / global count)``, so their squares are summed and the root taken. A key that only some ranks have (their shard of the batch
    held no such labels) counts 0 on the others. Other keys are returned as they are. On one process the parts
    are returned unchanged."""
    rank, world = rank_and_world()
    if world == 1:
        return dict(parts)
    def reduced(key: str) -> bool:
        last = key.rsplit("/", 1)[-1]
        return key.endswith(("loss", "mae")) or last.startswith("mae_") or "rmse" in last
    mine = sorted(k for k in parts if reduced(k))
    gathered: list = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    keys = sorted(set().union(*gathered))
    squared = ["rmse" in k.rsplit("/", 1)[-1] for k in keys]
    t = torch.tensor([parts.get(k, 0.0) ** 2 if sq else parts.get(k, 0.0) for k, sq in zip(keys, squared)],
                     dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    out = dict(parts)
    for k, sq, v in zip(keys, squared, t.tolist()):
        out[k] = v ** 0.5 if sq else v
    return out


def barrier() -> None:
    if rank_and_world()[1] > 1:
        torch.distributed.barrier()
