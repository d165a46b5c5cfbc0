"""``all_reduce_logged_parts`` on a real two-process gloo group: shares are summed (losses, MAEs), RMSE shares
combine as the root of summed squares, and a key that only one rank has (its shard held those labels) counts 0 on
the other instead of breaking the collective."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, results) -> None:
    from mftcalc.training.distributed import all_reduce_logged_parts
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        parts = {"step": 7.0, "a/loss": 1.0 + rank, "a/mae": 0.25, "a/rmse_f": 0.3 if rank == 0 else 0.4,
                 "a/mae_f": 0.1 + 0.1 * rank}
        if rank == 1:
            parts["a/rmse_v_per_atom"] = 0.5          # only rank 1's shard had stress labels
        results[rank] = all_reduce_logged_parts(parts, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_combine_their_shares():
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(_free_port(), results), nprocs=2, join=True)
        out = dict(results)
    for rank in (0, 1):
        got = out[rank]
        assert got["step"] == 7.0
        assert got["a/loss"] == pytest.approx(3.0) and got["a/mae"] == pytest.approx(0.5)
        assert got["a/rmse_f"] == pytest.approx(0.5)                 # sqrt(0.3² + 0.4²)
        assert got["a/mae_f"] == pytest.approx(0.3)                  # shares of the global count: summed
        assert got["a/rmse_v_per_atom"] == pytest.approx(0.5)        # sqrt(0 + 0.5²)
