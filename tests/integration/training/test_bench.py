"""``mftcalc bench``: a killed run restarts without redoing finished cells; the summary has every strategy."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mftcalc.training.pretrain import PretrainConfig, pretrain

from _helpers import emt_structures


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory):
    from mftcalc.data.io import write_extxyz
    tmp = tmp_path_factory.mktemp("bench_pre")
    write_extxyz(emt_structures("Cu", 16, 0), tmp / "cu.extxyz")
    cfg = {"datasets": [{"name": "cu", "path": str(tmp / "cu.extxyz"), "batch_size": 4, "replay": 8}],
           "preset": "tiny", "ff_hidden": [8], "steps": 4, "decay_steps": 2, "val_every": 4, "checkpoint_every": 4,
           "out_dir": str(tmp / "run"), "state_path": str(tmp / "run/state.pt"), "model_out": str(tmp / "pre.pt"),
           "progress": False}
    (tmp / "pre.yaml").write_text(yaml.safe_dump(cfg))
    pretrain(PretrainConfig.from_yaml(tmp / "pre.yaml"))
    return tmp / "pre.pt"


def _bench_config(tmp_path: Path, pretrained: Path, **extra) -> Path:
    cfg = {"pretrained": str(pretrained), "out_dir": str(tmp_path / "bench"),
           "tasks": [{"kind": "qm9", "property": "gap", "train_fraction": 0.0003}],
           "strategies": ["scratch", "ft", "lp", "mft"], "seeds": [0], "qm9_max_eval": 20,
           "ff_eval": {"cu": str(pretrained.with_name("pre_replay_materials.extxyz.gz"))},
           "ff_data": {"cu": str(pretrained.with_name("pre_replay_materials.extxyz.gz"))},
           "settings": {"steps": 4, "property_batch": 8, "ff_batch": 4, "val_every": 2, "checkpoint_every": 1,
                        "head_hidden": [8], "probe_size": 4, "allow_new_elements": True}, **extra}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow   # subprocesses killed or run side by side: about a minute on 2 cores
def test_bench_killed_and_restarted_redoes_no_finished_cell(tiny_pretrained, tmp_path):
    config = _bench_config(tmp_path, tiny_pretrained)
    results = tmp_path / "bench" / "results.json"
    proc = subprocess.Popen([sys.executable, "-m", "mftcalc.cli", "bench", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if results.exists() and len(json.loads(results.read_text())) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads(results.read_text())
    assert 1 <= len(first) < 4, "the bench should be killed after some but not all cells"
    finished_models = {k: (tmp_path / "bench" / "cells" / k.replace("|", "__").replace(":", "_") / "model.pt")
                       for k in first}
    stamps = {k: p.stat().st_mtime_ns for k, p in finished_models.items()}
    done = subprocess.run([sys.executable, "-m", "mftcalc.cli", "bench", str(config)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads(results.read_text())
    cells = [k for k in final if not k.startswith("_")]
    assert len(cells) == 4
    for key in first:
        assert final[key] == first[key]
        assert finished_models[key].stat().st_mtime_ns == stamps[key], f"{key} was redone"
    for key in cells:                  # finished cells keep no optimiser state (it would bloat the repository)
        assert not (finished_models[key].parent if key in finished_models else
                    tmp_path / "bench" / "cells" / key.replace("|", "__").replace(":", "_")).joinpath("state.pt").exists()
    summary = (tmp_path / "bench" / "summary.md").read_text()
    for strategy in ("scratch", "ft", "lp", "mft"):
        assert f"| {strategy} | 1 |" in summary
    assert "MFT/FT" in summary
    assert "forcefield" in final[[k for k in cells if "|mft|" in k][0]]


@pytest.mark.slow   # subprocesses killed or run side by side: about a minute on 2 cores
def test_two_shards_share_one_results_file(tiny_pretrained, tmp_path):
    variants = {"mft_fresh_head": {"strategy": "mft", "settings": {"reinit_ff_head": True}},
                "mft_aux_cu": {"strategy": "mft", "ff_data": {"cu": str(tiny_pretrained.with_name("pre_replay_materials.extxyz.gz"))}}}
    config = _bench_config(tmp_path, tiny_pretrained, variants=variants,
                           strategies=["ft", "mft", "mft_fresh_head", "mft_aux_cu"])
    procs = [subprocess.Popen([sys.executable, "-m", "mftcalc.cli", "bench", str(config), "--shard", f"{i}/2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    final = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len([k for k in final if not k.startswith("_")]) == 4
    assert "_forcefield_reference" in final
    assert final["qm9:gap|mft_fresh_head|seed0|frac0.0003"]["strategy"] == "mft"
    summary = (tmp_path / "bench" / "summary.md").read_text()
    assert "| mft_fresh_head | 1 |" in summary and "| mft_aux_cu | 1 |" in summary


def test_bench_config_rejects_unknown_strategies_and_variants(tmp_path):
    from mftcalc.experiments.config import BenchConfig, TaskSpec
    from mftcalc.schema import from_mapping
    with pytest.raises(ValueError, match="unknown strategy 'fancy'"):
        BenchConfig("p.pt", str(tmp_path), [TaskSpec("qm9", "gap")], strategies=["fancy"])
    grid = {"pretrained": "p.pt", "out_dir": str(tmp_path), "tasks": [{"kind": "qm9", "property": "gap"}],
            "strategies": ["v"]}
    with pytest.raises(ValueError, match="variants.v: unknown key 'lr'"):
        from_mapping(BenchConfig, {**grid, "variants": {"v": {"strategy": "mft", "lr": 1}}}, "bench.yaml")
    with pytest.raises(ValueError, match="variants.v: unknown strategy 'mtf'; did you mean 'mft'"):
        from_mapping(BenchConfig, {**grid, "variants": {"v": {"strategy": "mtf"}}}, "bench.yaml")


def test_bench_refuses_missing_inputs_before_reading_data(tiny_pretrained, tmp_path):
    from mftcalc.experiments.bench import run_bench
    from mftcalc.experiments.config import BenchConfig
    cfg = BenchConfig.from_yaml(_bench_config(tmp_path, tiny_pretrained), ["ff_data.cu=absent_cu.extxyz",
                                                                            "qm9_splits=absent_splits.json"])
    with pytest.raises(ValueError, match=r"do not exist: \['absent_splits.json', 'absent_cu.extxyz'\]"):
        run_bench(cfg, progress=False)
    assert not (tmp_path / "bench").exists()


def test_parse_shard_rejects_bad_values():
    from mftcalc.experiments.bench import parse_shard
    assert parse_shard(None) == (0, 1) and parse_shard("1/3") == (1, 3)
    for bad in ("2/2", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_bench_strategies_and_seeds_options_run_a_subset(tiny_pretrained, tmp_path, capsys):
    from mftcalc.cli import main                 # in this process: `python -m mftcalc` has its own test
    config = _bench_config(tmp_path, tiny_pretrained, seeds=[0, 1])
    assert main(["bench", str(config), "--strategies", "lp,ft", "--seeds", "1"]) == 0
    final = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert sorted(k for k in final if not k.startswith("_")) == ["qm9:gap|ft|seed1|frac0.0003",
                                                                 "qm9:gap|lp|seed1|frac0.0003"]
    capsys.readouterr()
    assert main(["bench", str(config), "--strategies", "fancy"]) != 0
    assert "unknown strategy 'fancy'" in capsys.readouterr().err


def test_a_finished_cell_with_other_inputs_is_refused_not_reported(tiny_pretrained, tmp_path, capsys):
    """Finished cells are skipped on restart; one computed from another pretrained model or other settings must
    not be reported as if this config had produced it."""
    import torch
    from mftcalc.experiments.bench import run_bench
    from mftcalc.experiments.config import BenchConfig
    from mftcalc.model.checkpoint import load_model, save_model
    from mftcalc.schema import ConfigError
    config = _bench_config(tmp_path, tiny_pretrained, strategies=["ft"], ff_eval={})
    run_bench(BenchConfig.from_yaml(config), progress=False)
    results = tmp_path / "bench" / "results.json"
    stored = json.loads(results.read_text())["qm9:gap|ft|seed0|frac0.0003"]["provenance"]
    assert stored["pretrained_sha256"] and stored["settings"]["steps"] == 4
    run_bench(BenchConfig.from_yaml(config), progress=False)                  # same inputs: kept
    with pytest.raises(ConfigError, match=r"finished cell qm9:gap\|ft\|seed0\|frac0.0003 .*settings.steps: 4 -> 6"
                                          r".*use a new out_dir"):
        run_bench(BenchConfig.from_yaml(config, ["settings.steps=6"]), progress=False)
    other = load_model(tiny_pretrained, torch.float64)
    other.ff_heads["forcefield"].shift[0] += 0.5
    save_model(other, tmp_path / "other.pt", other.metadata)
    with pytest.raises(ConfigError, match="pretrained_sha256"):
        run_bench(BenchConfig.from_yaml(config, [f"pretrained={tmp_path / 'other.pt'}"]), progress=False)
    data = json.loads(results.read_text())                                    # a cell written before provenance
    del data["qm9:gap|ft|seed0|frac0.0003"]["provenance"]
    results.write_text(json.dumps(data))
    run_bench(BenchConfig.from_yaml(config, ["settings.steps=6"]), progress=True)
    assert "1 finished cell(s) predate provenance records and were kept unchecked" in capsys.readouterr().err
