"""Issue 18: the command line on first contact (help with defaults, --version, one-line errors, --debug, thread
count, end summaries, the C++ build message) and the thread defaults."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch

from _helpers import make_tiny_model, save_tiny_model
from mftcalc import __version__
from mftcalc.cli import MODEL_COMMANDS, build_parser, main
from mftcalc.model.checkpoint import model_metadata, save_model
from mftcalc.workflows.screening import example_path



@pytest.fixture
def model_file(tmp_path):
    return save_tiny_model(tmp_path / "tiny.pt")


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"mftcalc {__version__}"


def test_help_shows_defaults_and_every_option_has_help():
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("predict", "relax", "screen", "demo", "export", "info", "descriptors"):
        parser = subparsers.choices[name]
        for action in parser._actions:
            assert action.help, f"{name}: {action.option_strings or action.dest} has no help"
        assert name == "info" or "(default:" in parser.format_help()
    assert "(default: 0.05)" in subparsers.choices["relax"].format_help()
    for name in MODEL_COMMANDS:
        assert "--threads" in subparsers.choices[name].format_help()
    for name in ("predict", "relax", "screen", "demo", "evaluate"):
        assert "--dataset" in subparsers.choices[name].format_help()


def test_errors_are_one_line_with_the_fix_and_debug_shows_the_traceback(model_file, tmp_path, capsys, keep_threads):
    missing = tmp_path / "missing.extxyz"
    assert main(["predict", str(model_file), str(missing), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mftcalc predict: error: ") and "missing.extxyz" in err[-1] and "--debug" in err[-1]
    assert not any(line.startswith("Traceback") for line in err)
    with pytest.raises(Exception, match="missing.extxyz"):
        main(["predict", str(model_file), str(missing), "--out", str(tmp_path / "p.csv"), "--debug"])
    ambiguous = tmp_path / "untagged.pt"                            # two datasets without domains: must choose
    model = make_tiny_model()
    save_model(model, ambiguous, model_metadata(model, elements=[1, 6, 7, 8, 14]))
    assert main(["relax", str(ambiguous), str(example_path()), "--out", str(tmp_path / "r.csv"), "--steps", "2"]) == 0
    out = capsys.readouterr()
    assert "0 converged, 0 not converged (out of steps), 8 failed" in out.out and "--dataset" in out.out
    assert main(["relax", str(ambiguous), str(example_path()), "--out", str(tmp_path / "r2.csv"), "--steps", "2",
                 "--dataset", "a"]) == 0
    text = capsys.readouterr().out
    assert "8 structures: " in text and "not converged (out of steps), 0 failed" in text


def test_threads_option_sets_and_prints_the_thread_count(model_file, tmp_path, capsys, keep_threads):
    assert main(["predict", str(model_file), str(example_path()), "--out", str(tmp_path / "p.csv"),
                 "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "mftcalc: 1 torch thread (--threads)" in captured.err and torch.get_num_threads() == 1
    assert "8 structures: 8 predicted, 0 failed" in captured.out
    assert main(["predict", str(model_file), str(example_path()), "--out", str(tmp_path / "q.csv"),
                 "--threads", "0"]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_default_threads_leave_busy_cores_alone(monkeypatch):
    from mftcalc.calculators import threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    for load, expected in ((0.1, 2), (0.6, 1), (1.2, 1), (3.5, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert threads.choose_threads()[0] == expected, load
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    assert threads.choose_threads()[0] == 4                          # load 3.5: 4 cores busy
    assert threads.choose_threads(3) == (3, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_threads() == (2, "OMP_NUM_THREADS")


def test_the_command_asks_openmp_to_wait_passively_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import sys; import mftcalc; assert 'torch' not in sys.modules; import mftcalc.cli, os; "
            "print(os.environ['OMP_WAIT_POLICY'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"                                # an explicit setting wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"


def test_a_message_comes_before_a_cpp_operator_build(monkeypatch, tmp_path, capsys):
    import torch.utils.cpp_extension as cpp_extension
    from mftcalc.kernels import _cpp
    from mftcalc.kernels.angle import library
    monkeypatch.setattr(cpp_extension, "load", lambda **kwargs: None)            # no compiler run in the test
    monkeypatch.setattr(library, "cache_dir", lambda: tmp_path)
    library._build_and_load()
    monkeypatch.setattr(_cpp._State, "loaded", False)
    monkeypatch.setattr(_cpp._State, "error", None)
    monkeypatch.setattr(_cpp, "_build_directory", lambda: tmp_path / "neighbors")
    assert _cpp.available()
    err = capsys.readouterr().err
    assert "building the C++ angle-block operator (first use, about 30-60 s)" in err
    assert "building the C++ neighbour-list operator (first use, about 30-60 s)" in err


@pytest.mark.parametrize("minutes", ["0", "-5"])
def test_train_refuses_a_time_budget_that_is_not_positive(minutes, tmp_path, capsys):
    """``--time-budget 0`` once meant "no budget" and trained to the config's last step; it is refused by name."""
    config = tmp_path / "never_read.yaml"
    assert main(["train", str(config), "--time-budget", minutes]) == 1
    err = capsys.readouterr().err
    assert "--time-budget must be a positive number of minutes" in err and "leave it out" in err
