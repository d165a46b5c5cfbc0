"""benchmarks/mft_protocol_dielectric.py on a synthetic results.json whose answer is known: MFT's test MAE is 0.9×
FT's on five LOCO folds and 1.1× on one random fold; one LOCO fold has FT only (unfinished, left out)."""
from __future__ import annotations

import json

import pytest

from tests._helpers import load_benchmark


@pytest.fixture(scope="module")
def script():
    return load_benchmark("mft_protocol_dielectric")


def _cell(mae: float, force: float) -> dict:
    return {"test": {"mae": mae, "rmse": 2 * mae, "n": 100, "interval_coverage": 0.85},
            "val": {"mae": 0.4, "rmse": 1.0, "n": 50}, "drift_w1": 0.3, "train_wall_s": 3600.0,
            "forcefield": {"fitsnap_inp": {"f_mae": force}}}


@pytest.fixture
def bench(tmp_path):
    results = {"_forcefield_reference": {"pretrained": {"fitsnap_inp": {"f_mae": 0.04}}}}
    for fold in range(5):
        base = 0.1 + 0.02 * fold
        results[f"matbench:dielectric-LOCO-{fold}|ft|seed0|frac1"] = _cell(base, 0.2)
        results[f"matbench:dielectric-LOCO-{fold}|mft|seed0|frac1"] = _cell(0.9 * base, 0.04)
    results["matbench:dielectric-LOCO-5|ft|seed0|frac1"] = _cell(0.5, 0.2)
    results["matbench:dielectric-random-0|ft|seed0|frac1"] = _cell(0.2, 0.1)
    results["matbench:dielectric-random-0|mft|seed0|frac1"] = _cell(0.22, 0.05)
    (tmp_path / "results.json").write_text(json.dumps(results))
    return tmp_path


def test_pairs_ratios_and_the_paired_test(script, bench):
    text, pairs, prior = script.report(bench, None)
    assert [(p["kind"], p["fold"]) for p in pairs] == [("LOCO", f) for f in range(5)] + [("random", 0)]
    assert prior == {"fitsnap_inp": {"f_mae": 0.04}}
    assert "| LOCO 2 | MFT | 0.126 | 0.252 | 0.900 | 0.900 |" in text
    assert "| – | prior |" in text and "| 0.040 |" in text
    assert "**LOCO**, 5 folds: MFT/FT test MAE geometric mean 0.900" in text and "MFT lower on 5 of 5" in text
    assert "p = 0.0625 (exact, two-sided; with 5 folds the smallest possible p is 0.0625)" in text
    assert "**random**, 1 fold: MFT/FT test MAE geometric mean 1.100" in text and "Too few folds" in text


def test_plot_is_written_and_an_empty_bench_is_refused(script, bench, tmp_path):
    _, pairs, prior = script.report(bench, None)
    script.plot(pairs, prior, tmp_path / "ratios.png")
    assert (tmp_path / "ratios.png").stat().st_size > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.json").write_text("{}")
    with pytest.raises(SystemExit, match="no fold where both FT and MFT have finished"):
        script.report(empty, None)


def test_a_control_bench_is_merged_and_compared_with_ft_and_mft(script, bench, tmp_path):
    control = tmp_path / "control"
    control.mkdir()
    results = {f"matbench:dielectric-LOCO-{fold}|ft_anchor|seed0|frac1": _cell(0.95 * (0.1 + 0.02 * fold), 0.1)
               for fold in (0, 1)}
    results["_forcefield_reference"] = {"pretrained": {"fitsnap_inp": {"f_mae": 99.0}}}     # the main bench's wins
    (control / "results.json").write_text(json.dumps(results))
    text, pairs, prior = script.report(bench, None, [control])
    assert prior == {"fitsnap_inp": {"f_mae": 0.04}} and "--control " + str(control) in text
    assert "| LOCO 1 | FT_ANCHOR | 0.114 | 0.228 | 0.950 | 0.950 |" in text
    assert "**LOCO**, FT_ANCHOR against FT: 2 folds: FT_ANCHOR/FT test MAE geometric mean 0.950" in text
    assert "**LOCO**, FT_ANCHOR against MFT: 2 folds: FT_ANCHOR/MFT test MAE geometric mean 1.056" in text
    assert "**LOCO**, 5 folds: MFT/FT" in text and "random**, FT_ANCHOR" not in text
