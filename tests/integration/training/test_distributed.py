"""DistributedDataParallel fine-tuning: ``torchrun --nproc_per_node 2 mftcalc finetune --device cpu`` (gloo) gives
the model of one process with the doubled per-rank batch, for MFT in both of its modes (alternate and sum, the latter
with a feature anchor, whose penalty's normaliser is summed over the ranks)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from mftcalc.cli import main
from mftcalc.data.io import write_extxyz
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[3]


def _molecules(n: int) -> list:
    names = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "HCN", "C2H4", "HCOOH"]
    out = []
    for k in range(n):
        atoms = molecule(names[k % len(names)])
        atoms.rattle(0.02, seed=k)
        value = 5.0 + 0.1 * len(atoms) + 0.01 * k
        out.append(Structure.from_ase(atoms).with_labels(properties={"my_gap": value}, property_units={"my_gap": "eV"}))
    return out


def _finetune(tmp_path: Path, name: str, world: int, mode: str, extra: tuple = ("--strategy", "mft")) -> Path:
    per_rank = 8 // world
    out = tmp_path / f"{name}.pt"
    cli = ["-m", "mftcalc.cli", "finetune", "--data", str(tmp_path / "train.extxyz"), "--property", "my_gap",
           "--unit", "eV", "--val", str(tmp_path / "val.extxyz"), "--steps", "4", *extra,
           "--device", "cpu", "--set", "val_every=4", "head_hidden=[8]", "dtype=float64", f"mode={mode}",
           f"property_batch={per_rank}", f"ff_batch={per_rank}", "-o", str(out)]
    pretrained = str(REPO / "models" / "pretrained.pt")
    if world == 1:     # the reference runs in this process: the same CLI without an interpreter's start-up
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MFTCALC_PRETRAINED", pretrained)
            assert main(cli[2:]) == 0
        return out
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found beside the Python executable")
    cmd = [str(torchrun), "--nproc_per_node", str(world), "--standalone", *cli]
    env = dict(os.environ, OMP_NUM_THREADS="1", MFTCALC_PRETRAINED=pretrained)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


# the sum mode also carries a feature anchor (one torchrun launch less): its penalty is on every step
RUNS = {"mft-alternate": ("alternate", ("--strategy", "mft")),
        "mft-sum-anchor": ("sum", ("--strategy", "mft", "--anchor", "features:10"))}


@pytest.mark.parametrize("run", list(RUNS))
def test_two_ranks_equal_one_rank_with_double_batch(tmp_path, run):
    mode, extra = RUNS[run]
    write_extxyz(_molecules(24), tmp_path / "train.extxyz")
    write_extxyz(_molecules(4), tmp_path / "val.extxyz")
    one = read_checkpoint(_finetune(tmp_path, "one", 1, mode, extra))
    two = read_checkpoint(_finetune(tmp_path, "two", 2, mode, extra))
    w1, w2 = one["state_dict"], two["state_dict"]
    assert w1.keys() == w2.keys()
    moved = 0
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-9, atol=1e-11, msg=key)
    # the logged losses and errors (last step) are the global batch's, as on one process
    one_row, two_row = (np.genfromtxt(tmp_path / f"{n}_run" / "train.csv", delimiter=",", names=True) for n in ("one", "two"))
    logged = [n for n in one_row.dtype.names if n.endswith(("loss", "mae")) or "rmse" in n]
    has = [any(n.endswith("mae") for n in logged), any("rmse_f" in n for n in logged)]
    assert all(has) if mode == "sum" else any(has)        # alternate: the last step drew one of the two sources
    if run == "mft-sum-anchor":                            # every step has a property batch and its penalty
        anchor = [n for n in logged if n.endswith("anchor_loss")]
        assert anchor and np.all(one_row[anchor[0]] > 0)
    for name in logged:
        np.testing.assert_allclose(two_row[name], one_row[name], rtol=1e-7, err_msg=name)
    start = read_checkpoint(REPO / "models" / "pretrained.pt")["state_dict"]
    moved = sum(not torch.equal(w1[k].to(start[k].dtype), start[k]) for k in w1 if k in start)
    assert moved > 10, "the runs should have trained the shared backbone"
