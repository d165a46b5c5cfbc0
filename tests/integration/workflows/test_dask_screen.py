"""Issue 19: a screen on a Dask cluster (``screen(..., client=...)``) equals the single-process screen, streams
into the same resumable output, and each worker loads the model once."""
from __future__ import annotations

import pytest
import torch

from _helpers import save_tiny_model
from mftcalc.model.checkpoint import load_model
from mftcalc.workflows.screening import example_path, screen

distributed = pytest.importorskip("distributed", reason="pip install \"mftcalc[cluster]\" (dask[distributed])")

RUN = dict(do_relax=True, fmax=0.05, steps=8, chunk=2, progress=False, dtype=torch.float64)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The reference screen runs at the workers' thread count (Dask starts workers with OMP_NUM_THREADS=1): with
    more threads torch's float64 reductions may differ in the last digit (seen when this file runs alone; earlier
    tests in the full suite had left torch at one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loads() -> int:
    from mftcalc.workflows import dask_screen
    return dask_screen.loads()


def test_dask_screen_equals_the_single_process_screen(client, model_file, tmp_path):
    local = tmp_path / "local.csv"
    screen(example_path(), model_file, local, **RUN)
    before = sum(client.run(_loads).values())
    on_cluster = tmp_path / "dask.csv"
    rows = screen(example_path(), model_file, on_cluster, client=client, **RUN)
    assert [int(r["index"]) for r in rows] == list(range(8))
    assert on_cluster.read_bytes() == local.read_bytes()                  # rows, order, every digit
    record = ".provenance.json"
    assert (tmp_path / f"dask.csv{record}").read_bytes() == (tmp_path / f"local.csv{record}").read_bytes()
    loaded = sum(client.run(_loads).values()) - before
    assert 1 <= loaded <= 2                            # 4 chunks, each worker loaded the model at most once


def test_dask_screen_resumes_a_killed_run_and_writes_extxyz(client, model_file, tmp_path):
    local = tmp_path / "local.csv"
    screen(example_path(), model_file, local, **RUN)
    out = tmp_path / "resumed.csv"
    screen(example_path(), model_file, out, **RUN)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:4]) + lines[4][:10])     # killed after three rows, in the middle of the fourth
    with pytest.warns(UserWarning, match="torn last line"):
        screen(example_path(), model_file, out, client=client, **RUN)
    assert sorted(out.read_text().splitlines()) == sorted(local.read_text().splitlines())
    with pytest.raises(ValueError, match="holds results of a different run.*fmax"):
        screen(example_path(), model_file, out, client=client, **{**RUN, "fmax": 0.1})
    whole, parts = tmp_path / "local.extxyz", tmp_path / "dask.extxyz"
    screen(example_path(), model_file, whole, **RUN)
    model = load_model(model_file, torch.float64)                               # a model object travels too
    screen(example_path(), model, parts, client=client, **RUN)
    assert parts.read_text() == whole.read_text()


def test_workers_and_client_together_are_refused_and_worker_errors_come_back(client, model_file, tmp_path):
    with pytest.raises(ValueError, match="not both"):
        screen(example_path(), model_file, tmp_path / "x.csv", client=client, workers=2, **RUN)
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):             # raised on a worker
        screen(example_path(), model_file, tmp_path / "y.csv", client=client, **{**RUN, "optimizer": "nope"})


def test_cli_screen_on_a_scheduler(client, model_file, tmp_path, capsys):
    from mftcalc.cli import main
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    common = [str(example_path()), "--model", str(model_file), "--dtype", "float64", "--device", "cpu"]
    assert main(["screen", *common, "--out", str(local)]) == 0
    assert main(["screen", *common, "--out", str(remote), "--scheduler", client.scheduler.address]) == 0
    captured = capsys.readouterr()
    assert "2 worker(s)" in captured.out and "dask workers: model on cpu" in captured.err
    assert remote.read_bytes() == local.read_bytes()
