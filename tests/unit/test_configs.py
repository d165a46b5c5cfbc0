"""Every shipped config loads under the strict loader; the user configs in configs/ run from a clone (every path
they name exists in the repository, nothing under ../shared)."""
from __future__ import annotations

from pathlib import Path

import pytest

from mftcalc.schema import from_mapping, read_yaml
from mftcalc.experiments.config import BenchConfig, FinetuneConfig
from mftcalc.training.finetune import FinetuneSettings
from mftcalc.training.pretrain import PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
ALL = sorted((ROOT / "configs").rglob("*.yaml"))
USER = sorted((ROOT / "configs").glob("*.yaml"))


def _kind(data: dict) -> str:
    if "datasets" in data:
        return "pretrain"
    if "tasks" in data:
        return "bench"
    return "finetune"


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_strictly(path):
    data = read_yaml(path)                    # a variant's base: chain resolved
    kind = _kind(data)
    if kind == "pretrain":
        PretrainConfig.from_yaml(path)
    elif kind == "bench":
        BenchConfig.from_yaml(path)
    else:
        spec = from_mapping(FinetuneConfig, data, str(path))
        from_mapping(FinetuneSettings, spec.settings, f"{path}: settings")


def test_there_are_user_configs():
    assert USER, "configs/ should hold at least one user config"


@pytest.mark.parametrize("path", USER, ids=lambda p: p.name)
def test_user_config_runs_from_a_clone(path):
    """A user config names only files inside the repository, and they exist."""
    data = read_yaml(path)
    assert _kind(data) == "finetune", f"{path.name}: pretraining and bench configs belong in configs/dev"
    for key in ("pretrained", "qm9_splits", "matbench_path"):
        if data.get(key):
            target = (ROOT / data[key]).resolve()
            assert ROOT in target.parents, f"{path.name}: {key} points outside the clone ({data[key]})"
            assert target.exists(), f"{path.name}: {key} {data[key]} does not exist in the clone"
    assert not data.get("ff_data") or all("../" not in str(v) for v in data["ff_data"].values())


@pytest.mark.parametrize("command", [["finetune", "c.yaml"], ["cv", "--data", "d.extxyz", "--property", "p", "--out-dir", "o"],
                                     ["bench", "c.yaml"], ["train", "c.yaml"]])
def test_repeated_set_options_add_up_instead_of_the_last_replacing_the_others(command):
    """`--set a=1 --set b=2` once kept only b=2, silently (argparse's default for a repeated option)."""
    from mftcalc.cli import build_parser
    args = build_parser().parse_args(command + ["--set", "anchor=features", "--set", "anchor_weight=10", "steps=5"])
    assert args.set == ["anchor=features", "anchor_weight=10", "steps=5"]


def test_the_anchor_option_becomes_settings_and_a_bad_weight_is_refused():
    from mftcalc.cli_finetune import anchor_args
    assert anchor_args(None) == {}
    assert anchor_args("features") == {"anchor": "features"}
    assert anchor_args("weights:0.5") == {"anchor": "weights", "anchor_weight": 0.5}
    with pytest.raises(SystemExit, match="the weight after ':' must be a number"):
        anchor_args("features:x")
    with pytest.raises(ValueError, match="strategy 'lp' does not train one"):
        FinetuneSettings(strategy="lp", **anchor_args("features:10"))
