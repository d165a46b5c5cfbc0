"""Issue 19: ``--device`` (default ``auto``) on every command that runs the model, the device logged when the model
loads, and the angle block's backend chosen by the tensors' device (fused C++ on CPU, plain torch elsewhere)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from _helpers import save_tiny_model
from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.cli import MODEL_COMMANDS, build_parser, main
from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.workflows.screening import example_path

AUTO = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


def test_every_model_command_takes_device_auto_by_default():
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices
    assert set(MODEL_COMMANDS) == {"predict", "relax", "screen", "evaluate", "demo", "descriptors", "vibrations",
                                   "model-devi", "md"}
    for name in MODEL_COMMANDS:
        options = {a.dest: a for a in sub[name]._actions}
        assert options["device"].default == "auto", name
    for name in ("train", "finetune", "bench"):                   # the config's device unless given
        assert "device" in {a.dest for a in sub[name]._actions}, name
    args = parser.parse_args(["screen", "in.extxyz", "--out", "o.csv", "--device", "cpu", "--shard", "1/4",
                              "--scheduler", "tcp://host:8786"])
    assert (args.device, args.shard, args.scheduler) == ("cpu", "1/4", "tcp://host:8786")


def test_auto_device_is_resolved_and_logged(model_file, caplog):
    with caplog.at_level(logging.INFO, logger="mftcalc.calculators.model_handle"):
        handle = ModelHandle.load(model_file, device="auto", dtype=torch.float64)
    assert handle.device.type == AUTO
    assert next(p.device.type for p in handle.module.parameters()) == AUTO
    assert handle.load_kwargs()["device"] == str(handle.device)         # worker processes load it there too
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model on")]
    if AUTO == "cpu":
        assert said == ["model on cpu (device 'auto': torch sees no CUDA device)"]
    else:
        assert "float32 matrix products" in said[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused_with_the_fix(model_file):
    with pytest.raises(ValueError, match="sees no CUDA device; use device cpu or auto"):
        ModelHandle.load(model_file, device="cuda")


def test_predict_and_evaluate_print_their_device(model_file, tmp_path, capsys):
    assert main(["predict", str(model_file), str(example_path()), "--out", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert f"mftcalc: model on {AUTO}" in err
    labelled = [s.with_labels(energy=-1.0, forces=np.zeros((s.n_atoms, 3))) for s in read_structures(example_path())]
    write_extxyz(labelled, tmp_path / "labelled.extxyz")
    assert main(["evaluate", str(model_file), str(tmp_path / "labelled.extxyz"), "--plot", "",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "mftcalc: model on cpu" in captured.err and "labelled.extxyz" in captured.out


def test_angle_block_takes_plain_torch_off_the_cpu_and_says_so(caplog):
    from mftcalc.kernels.angle import angle_backend_in_use, angle_block, resolve_backend

    def block(device: str):
        a_count, a_dim, e_dim, edges = 4, 3, 2, 5
        g = torch.Generator().manual_seed(0)
        t = [torch.randn(*shape, generator=g).to(device) for shape in
             ((a_count, a_dim), (edges, e_dim + a_dim), (edges, e_dim + a_dim), (a_dim, e_dim + a_dim),
              (e_dim + a_dim,), (a_count,), (a_dim,))]
        index = [torch.tensor(v, device=device) for v in ([0, 1, 2, 3], [1, 2, 3, 4])]
        return angle_block(*t, *index, e_dim, 3.0)

    block("cpu")
    on_cpu = angle_backend_in_use()                # fused where the C++ library builds, else reference
    with caplog.at_level(logging.INFO, logger="mftcalc.kernels.angle.dispatch"):
        red, new = block("meta")                   # a non-CPU device (CUDA takes the same branch)
    assert red.shape == (5, 2) and new.shape == (4, 3)
    assert angle_backend_in_use() == "reference"
    assert resolve_backend("auto", torch.empty(0, device="meta")) == "reference"
    if on_cpu == "fused":
        assert any("angle block backend: reference (requested 'auto'); fused needs float32/float64 CPU tensors, "
                   "got torch.float32 on meta" in r.getMessage() for r in caplog.records)
