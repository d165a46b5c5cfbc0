"""One strict config loader: unknown keys with a suggestion, types checked or converted at load, --set reaching
nested keys, the whole bench grid validated before any data loads."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mftcalc.schema import ConfigError, apply_overrides, from_mapping
from mftcalc.experiments.bench import BenchConfig
from mftcalc.training.finetune import FinetuneSettings
from mftcalc.training.pretrain import PretrainConfig


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown key 'stpes'; did you mean 'steps'"):
        from_mapping(FinetuneSettings, {"stpes": 100}, "cfg.yaml: settings")


def test_yaml_string_numbers_are_converted_and_words_refused():
    s = from_mapping(FinetuneSettings, yaml.safe_load("lr0: 1e-3\nsteps: 2000\nhead_hidden: [8, 8]"), "x")
    assert s.lr0 == 1e-3 and isinstance(s.lr0, float) and s.steps == 2000 and tuple(s.head_hidden) == (8, 8)
    with pytest.raises(ConfigError, match=r"x.steps: expected an integer, got 'fifty'"):
        from_mapping(FinetuneSettings, {"steps": "fifty"}, "x")
    with pytest.raises(ConfigError, match="expected true or false"):
        from_mapping(FinetuneSettings, {"head_resnet_dt": "yes"}, "x")
    with pytest.raises(ConfigError, match="unknown strategy"):
        from_mapping(FinetuneSettings, {"strategy": "mtf"}, "x")


def test_set_reaches_nested_keys_and_list_items():
    data = {"settings": {"steps": 10}, "datasets": [{"prob": 0.5}, {"prob": 0.5}]}
    out = apply_overrides(data, ["settings.steps=20", "datasets.1.prob=0.9", "seed=3"])
    assert out == {"settings": {"steps": 20}, "datasets": [{"prob": 0.5}, {"prob": 0.9}], "seed": 3}
    assert data["settings"]["steps"] == 10                       # the input is not modified
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(data, ["datasets.5.prob=1"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides(data, ["steps"])


def test_pretrain_config_is_strict(tmp_path):
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump({"datasets": [{"name": "a", "path": "a.xyz", "porb": 0.5}], "steps": 10}))
    with pytest.raises(ConfigError, match=r"datasets\[0\]: unknown key 'porb'; did you mean 'prob'"):
        PretrainConfig.from_yaml(path)
    path.write_text(yaml.safe_dump({"datasets": [{"name": "a", "path": "a.xyz"}], "lr0": "1e-4"}))
    cfg = PretrainConfig.from_yaml(path, set_pairs=["datasets.0.prob=0.25", "steps=7"])
    assert cfg.lr0 == 1e-4 and cfg.datasets[0].prob == 0.25 and cfg.steps == 7
    path.write_text("datasets: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PretrainConfig.from_yaml(path)


def test_bench_grid_is_validated_before_any_data_loads(tmp_path):
    base = {"pretrained": "absent.pt", "out_dir": str(tmp_path / "b"), "tasks": [{"kind": "qm9", "property": "gap"}],
            "strategies": ["ft", "mft_fast"], "settings": {"steps": 10},
            "variants": {"mft_fast": {"strategy": "mft", "settings": {"model_porb": 0.8}}}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match="strategy 'mft_fast'.*unknown key 'model_porb'; did you mean 'model_prob'"):
        BenchConfig.from_yaml(path)
    base["variants"]["mft_fast"]["settings"] = {"model_prob": 0.8}
    path.write_text(yaml.safe_dump(base))
    assert BenchConfig.from_yaml(path, ["settings.steps=30"]).settings["steps"] == 30


def test_finetune_cli_refuses_a_typo_before_loading_data(tmp_path):
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "o"), "task": {"kind": "qm9", "property": "gap"},
                                    "setings": {"steps": 5}}))
    done = subprocess.run([sys.executable, "-m", "mftcalc.cli", "finetune", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "unknown key 'setings'; did you mean 'settings'" in done.stderr
    assert not Path(tmp_path / "o").exists()


def test_unknown_task_property_is_refused_at_load(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"pretrained": "m.pt", "out_dir": str(tmp_path / "b"),
                                    "tasks": [{"kind": "qm9", "property": "gapp"}]}))
    with pytest.raises(ConfigError, match="QM9 has no property 'gapp'; did you mean 'gap'"):
        BenchConfig.from_yaml(path)
