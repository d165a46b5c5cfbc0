"""One strict config loader: unknown keys with a suggestion, types checked or converted at load, --set reaching
nested keys, the whole bench grid validated before any data loads, and the config reference generated from the
schema."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mftcalc.schema import ConfigError, apply_overrides, from_mapping
from mftcalc.experiments.config import BenchConfig
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
    with pytest.raises(ConfigError, match="variants.mft_fast.settings: unknown key 'model_porb'; did you mean "
                                          "'model_prob'"):
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


def _grid(tmp_path, **extra) -> dict:
    """A bench grid with three variants; the third is where the tests put their typos."""
    return {"pretrained": "absent.pt", "out_dir": str(tmp_path / "b"), "tasks": [{"kind": "qm9", "property": "gap"}],
            "strategies": ["ft", "v1", "v2", "v3"], "settings": {"steps": 10},
            "variants": {"v1": {"strategy": "mft", "settings": {"model_prob": 0.8}},
                         "v2": {"strategy": "lp"},
                         "v3": {"strategy": "mft", "ff_data": {"cu": {"path": "cu.xyz", "max_force": 20.0}}}},
            **extra}


def test_a_typo_in_the_third_variant_fails_at_load_before_any_data_is_read(tmp_path, monkeypatch):
    """The force-field data spec of the last variant was only looked at when its first cell ran, after QM9 and
    every earlier cell; now the bench command refuses it before reading anything."""
    import mftcalc.data.qm9
    import mftcalc.training.forcefield_data
    from mftcalc.cli import main

    def no_data(*args, **kwargs):
        raise AssertionError("data was read before the config was validated")
    monkeypatch.setattr(mftcalc.data.qm9, "load_qm9", no_data)
    monkeypatch.setattr(mftcalc.training.forcefield_data, "read_dataset", no_data)
    grid = _grid(tmp_path)
    grid["variants"]["v3"]["ff_data"]["cu"]["max_forse"] = 30.0
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(grid))
    message = r"variants.v3.ff_data.cu: unknown key 'max_forse'; did you mean 'max_force'"
    with pytest.raises(ConfigError, match=message):
        BenchConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=message):
        main(["--debug", "bench", str(path)])
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("change, message", [
    ({"fractions": [0.1, 0.5, 5.0]}, r"fractions must lie in \(0, 1\], got \[5.0\]"),
    ({"strategies": ["ft", "v1", "v2", "v33"]}, "unknown strategy 'v33'; did you mean 'v3'"),
    ({"strategy_seeds": {"v5": [0]}}, r"strategy_seeds names \['v5'\]"),
    ({"tasks": [{"kind": "qm9", "property": "gap"}, {"kind": "matbench", "dataset": "dielectric", "folds": "LOCOO"}]},
     "no fold kind 'LOCOO'; did you mean 'LOCO'"),
])
def test_the_whole_grid_is_checked_at_load(tmp_path, change, message):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(_grid(tmp_path, **change)))
    with pytest.raises(ConfigError, match=message):
        BenchConfig.from_yaml(path)


def test_variant_settings_and_ff_data_are_checked_by_strategy(tmp_path):
    grid = _grid(tmp_path)
    grid["variants"]["v3"]["settings"] = {"task_optimizers": True, "mode": "sum"}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError, match="settings of strategy 'v3'.*task_optimizers applies"):
        BenchConfig.from_yaml(path)
    grid = _grid(tmp_path)
    grid["variants"]["v2"]["ff_data"] = {"cu": "cu.xyz"}          # lp draws no force-field data
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError, match="variants.v2: ff_data is only used by strategies that train on"):
        BenchConfig.from_yaml(path)


def test_set_reaches_every_key_of_the_grid(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(_grid(tmp_path)))
    cfg = BenchConfig.from_yaml(path, ["variants.v1.settings.model_prob=0.7", "variants.v3.ff_data.cu.max_force=5",
                                       "tasks.0.property=homo", "settings.lr0=1e-4", "fractions=[0.5]"])
    assert cfg.cell_settings("v1", 3).model_prob == 0.7 and cfg.cell_settings("v1", 3).seed == 3
    assert cfg.variants["v3"].ff_data["cu"].max_force == 5.0 and cfg.tasks[0].property == "homo"
    assert cfg.cell_settings("ft", 0).lr0 == 1e-4 and cfg.fractions == [0.5]
    assert [c[0] for c in cfg.cells()][:2] == ["qm9:homo|ft|seed0|frac0.5", "qm9:homo|ft|seed1|frac0.5"]
    with pytest.raises(ConfigError, match="variants.v1.settings.model_prob: expected a number, got 'high'"):
        BenchConfig.from_yaml(path, ["variants.v1.settings.model_prob=high"])
    assert cfg.missing_paths() == ["absent.pt", "cu.xyz"]


def test_bench_subset_keeps_the_grid_valid(tmp_path):
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(_grid(tmp_path, strategy_seeds={"v2": [0]})))
    cfg = BenchConfig.from_yaml(path).select(["ft", "v3"], [1])
    assert [c[0].split("|", 1)[1] for c in cfg.cells()] == ["ft|seed1|frac1", "v3|seed1|frac1"]
    with pytest.raises(ConfigError, match="unknown strategy 'v33'; did you mean 'v3'"):
        BenchConfig.from_yaml(path).select(["v33"])


def test_pretrain_backbone_and_prefactor_keys_are_checked_at_load(tmp_path):
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump({"datasets": [{"name": "a", "path": "a.xyz"}], "backbone": {"n_dimm": 32}}))
    with pytest.raises(ConfigError, match=r"backbone: unknown key 'n_dimm'; did you mean 'n_dim'"):
        PretrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=r"prefactors: unknown key 'start_ee'; did you mean 'start_e'"):
        PretrainConfig.from_yaml(path, set_pairs=["backbone={}", "prefactors.start_ee=1"])
    with pytest.raises(ConfigError, match="unknown preset 'cpuu'; did you mean 'cpu'"):
        PretrainConfig.from_yaml(path, set_pairs=["backbone={}", "preset=cpuu"])
    with pytest.raises(ConfigError, match="backbone switch 'expo' is not known"):
        PretrainConfig.from_yaml(path, set_pairs=["backbone={switch: expo}"])


def test_unknown_strategy_names_the_closest():
    from mftcalc.training.strategies import get_strategy
    with pytest.raises(ConfigError, match="unknown strategy 'mtf'; did you mean 'mft'"):
        from_mapping(FinetuneSettings, {"strategy": "mtf"}, "x")
    with pytest.raises(ValueError, match="unknown strategy 'fozen-sklearn'; did you mean 'frozen-sklearn'"):
        get_strategy("fozen-sklearn")


def test_config_reference_is_generated_from_the_schema():
    """docs/config.md is the generator's output (regenerate: python -m mftcalc.config_reference > docs/config.md),
    and it documents every key of every config class."""
    import dataclasses
    from mftcalc.config_reference import reference
    from mftcalc.experiments.config import FinetuneConfig, TaskSpec, Variant
    committed = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert committed == reference(), "docs/config.md is stale: python -m mftcalc.config_reference > docs/config.md"
    for cls in (PretrainConfig, FinetuneConfig, BenchConfig, TaskSpec, Variant, FinetuneSettings):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
            assert f"| `{f.name}` |" in committed


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_config_merges_mappings_and_replaces_other_values(tmp_path):
    from mftcalc.schema import read_yaml
    _write(tmp_path / "root.yaml", "steps: 100\nlr0: 1e-3\nbackbone: {n_layers: 3, n_dim: 16}\n"
                                   "datasets: [{name: a, path: a.xyz}, {name: b, path: b.xyz}]\n")
    _write(tmp_path / "arms" / "mid.yaml", "base: ../root.yaml\nsteps: 200\nbackbone: {n_dim: 32}\n")
    leaf = _write(tmp_path / "arms" / "leaf.yaml", "base: mid.yaml\ndatasets: [{name: c, path: c.xyz}]\n")
    data = read_yaml(leaf)
    assert data == {"steps": 200, "lr0": "1e-3", "backbone": {"n_layers": 3, "n_dim": 32},
                    "datasets": [{"name": "c", "path": "c.xyz"}]}


def test_base_config_errors_name_the_file_and_the_fix(tmp_path):
    from mftcalc.schema import read_yaml
    missing = _write(tmp_path / "a.yaml", "base: nowhere.yaml\nsteps: 1\n")
    with pytest.raises(ConfigError, match=r"a.yaml: base config 'nowhere.yaml' not found .*relative to the folder"):
        read_yaml(missing)
    with pytest.raises(ConfigError, match=r"base must be the path of another YAML config"):
        read_yaml(_write(tmp_path / "b.yaml", "base: [x.yaml]\n"))
    _write(tmp_path / "c.yaml", "base: d.yaml\n")
    _write(tmp_path / "d.yaml", "base: c.yaml\n")
    with pytest.raises(ConfigError, match="form a cycle"):
        read_yaml(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="form a cycle"):
        read_yaml(_write(tmp_path / "self.yaml", "base: self.yaml\n"))


def test_pretraining_arms_are_their_control_plus_the_stated_change():
    """Each arm config of the fourth cycle is the control with only its own keys changed, so the arms differ
    where their headers say and nowhere else (the same data, schedule and seed: paired batches)."""
    import dataclasses
    root = Path(__file__).resolve().parents[2] / "configs" / "dev"
    control = PretrainConfig.from_yaml(root / "pretrain_cpu_3l_control.yaml")
    main = PretrainConfig.from_yaml(root / "pretrain_cpu.yaml")
    assert control.datasets == main.datasets and control.steps == 40000 and control.init
    paths = {"out_dir", "state_path", "model_out", "heldout_out"}
    expected = {"pretrain_cpu_3l_huber.yaml": {"force_huber", "ema_decay"},
                "pretrain_cpu_3l_noclip.yaml": {"grad_clip"},
                "pretrain_cpu_6l.yaml": {"backbone", "init"},
                "pretrain_cpu_6l_engaged.yaml": {"backbone", "init"},
                "pretrain_cpu_wide.yaml": {"backbone", "init"}}
    for name, keys in expected.items():
        arm = PretrainConfig.from_yaml(root / name)
        changed = {f.name for f in dataclasses.fields(arm) if getattr(arm, f.name) != getattr(control, f.name)}
        assert changed == keys | paths, name


def test_interim_protocol_configs_differ_from_the_protocol_only_in_the_prior():
    import dataclasses
    root = Path(__file__).resolve().parents[2] / "configs" / "protocol"
    for name in ("gate_gap", "grid_gap", "grid_homo_lumo"):
        plain = BenchConfig.from_yaml(root / f"{name}.yaml")
        interim = BenchConfig.from_yaml(root / f"{name}_interim.yaml")
        changed = {f.name for f in dataclasses.fields(plain) if getattr(plain, f.name) != getattr(interim, f.name)}
        assert changed - {"out_dir"} == {"pretrained", "ff_eval"}, name
        assert interim.pretrained.startswith("checkpoints/protocol_gate/prior/")
