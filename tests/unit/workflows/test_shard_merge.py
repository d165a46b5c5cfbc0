"""Issue 19: ``--shard I/N`` screens and ``mftcalc merge`` reproduce the unsharded screen byte for byte; merge
refuses missing, unfinished, running and foreign shards."""
from __future__ import annotations

import os

import pytest
import torch
from ase.build import molecule

from _helpers import save_tiny_model
from mftcalc.cli import main
from mftcalc.data import Structure
from mftcalc.data.io import read_structures, write_extxyz
from mftcalc.workflows.results_store import OutputLockedError, acquire_lock
from mftcalc.workflows.screening import example_path, screen
from mftcalc.workflows.shards import blocks, find_shards, merge, parse_shard, shard_path

RELAX = dict(do_relax=True, fmax=0.05, steps=6, chunk=2, progress=False, dtype=torch.float64)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    """The 8 bundled molecules and a chlorine compound the tiny model was not trained on (an error row)."""
    structures = read_structures(example_path())
    structures.insert(3, Structure.from_ase(molecule("CH3Cl")))
    path = tmp_path_factory.mktemp("input") / "molecules.extxyz"
    write_extxyz(structures, path)
    return path


@pytest.fixture(scope="module")
def unsharded(model_file, input_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "results.csv"
    rows = screen(input_file, model_file, out, **RELAX)
    assert sum(bool(r["error"]) for r in rows) == 1 and len(rows) == 9
    return out


def test_layout_is_block_strided():
    assert blocks(9, 2) == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert blocks(9, 2, (0, 3)) == [[0, 1], [6, 7]]
    assert blocks(9, 2, (2, 3)) == [[4, 5]]
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) is None
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert shard_path("out/results.extxyz.gz", (1, 4)).name == "results.shard-1-of-4.extxyz.gz"


def test_three_shards_merged_equal_the_unsharded_screen(model_file, input_file, unsharded, tmp_path):
    out = tmp_path / "results.csv"
    shard_rows = [screen(input_file, model_file, out, shard=(i, 3), **RELAX) for i in range(3)]
    assert [len(r) for r in shard_rows] == [4, 3, 2]                # blocks {0,1,6,7}, {2,3,8}, {4,5}
    assert not out.exists() and len(find_shards(out)) == 3
    assert merge(out) == {"structures": 9, "shards": 3}
    assert out.read_bytes() == unsharded.read_bytes()
    record = out.with_name(out.name + ".provenance.json")
    assert record.read_bytes() == unsharded.with_name(unsharded.name + ".provenance.json").read_bytes()
    # the merged table is a finished screen: resuming it with the unsharded command redoes nothing
    again = screen(input_file, model_file, out, **RELAX)
    assert len(again) == 9 and out.read_bytes() == unsharded.read_bytes()


def test_sharded_extxyz_merges_into_the_unsharded_file(model_file, input_file, tmp_path):
    whole = tmp_path / "whole" / "relaxed.extxyz"
    screen(input_file, model_file, whole, **RELAX)
    out = tmp_path / "parts" / "relaxed.extxyz"
    for i in (2, 0, 1):
        screen(input_file, model_file, out, shard=f"{i}/3", **RELAX)
    merge(out)
    assert out.read_text() == whole.read_text()


def test_merge_refuses_missing_unfinished_running_and_foreign_shards(model_file, input_file, tmp_path):
    out = tmp_path / "r.csv"
    for i in range(2):
        screen(input_file, model_file, out, shard=(i, 3), **RELAX)
    with pytest.raises(ValueError, match=r"shard\(s\) 2/3 of r.csv missing.*--shard"):
        merge(out)
    screen(input_file, model_file, out, shard=(2, 3), **{**RELAX, "fmax": 0.1})
    with pytest.raises(ValueError, match="r.shard-2-of-3.csv comes from a different run.*fmax 0.05 -> 0.1"):
        merge(out)
    for path in (shard_path(out, (2, 3)), shard_path(out, (2, 3)).with_name("r.shard-2-of-3.csv.provenance.json")):
        path.unlink()
    screen(input_file, model_file, out, shard=(2, 3), **RELAX)
    last = shard_path(out, (2, 3))
    complete = last.read_text()
    last.write_text("".join(complete.splitlines(keepends=True)[:-1]))       # a shard killed before its last row
    with pytest.raises(ValueError, match=r"shard 2/3 is unfinished.*1 row\(s\).*holds 2.*--shard 2/3"):
        merge(out)
    last.write_text(complete)
    fd = acquire_lock(last.with_name(last.name + ".lock"), last)              # shard 2 still running
    try:
        with pytest.raises(OutputLockedError, match="another mftcalc run is writing"):
            merge(out)
    finally:
        os.close(fd)
    merge(out)
    with pytest.raises(ValueError, match="r.csv exists; merge writes a new file"):
        merge(out)


def test_cli_shard_and_merge(model_file, input_file, unsharded, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    for i in range(3):
        assert main(["relax", str(model_file), str(input_file), "--out", str(out), "--shard", f"{i}/3",
                     "--steps", "6", "--dtype", "float64", "--device", "cpu"]) == 0
    assert "cli.shard-2-of-3.csv (mftcalc merge" in capsys.readouterr().out
    assert main(["merge", str(out)]) == 0
    assert "merged 3 shards (9 structures" in capsys.readouterr().out
    # the CLI's relax uses the default chunk (256): one block, so shards 1 and 2 are empty and all rows equal
    whole = tmp_path / "whole.csv"
    assert main(["relax", str(model_file), str(input_file), "--out", str(whole), "--steps", "6",
                 "--dtype", "float64", "--device", "cpu"]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert main(["merge", str(tmp_path / "none.csv")]) == 1
    assert "no shard outputs of" in capsys.readouterr().err
