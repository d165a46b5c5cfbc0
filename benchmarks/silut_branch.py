"""SiLUT's tanh branch, dense (the whole tensor) against sparse (only the elements above the threshold), A/B in one
process on the shipped models: batched energy + forces of 14 QM9 molecules (``models/mft_gap.pt``) and one
force-training step on 32 (``models/pretrained.pt``). Alternating order, minimum over repeats; forces must agree.

Usage: python benchmarks/silut_branch.py [--threads 1] [--input .dev/screen1000.extxyz]
(without --input: the first QM9 molecules, rattled by 0.05 Å as in benchmarks/screening.py).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mftcalc.calculators.model_handle import ModelHandle
from mftcalc.data import Structure
from mftcalc.data.batch import collate
from mftcalc.model import layers
from mftcalc.model.checkpoint import load_model

SPARSE = layers.SiLUT.forward


def dense(self: layers.SiLUT, x: torch.Tensor) -> torch.Tensor:
    """The previous SiLUT: the tanh term over the whole tensor whenever any element exceeds the threshold."""
    if not bool((x.detach() > self.threshold).any()):
        return torch.nn.functional.silu(x)
    return torch.nn.functional.silu(torch.clamp(x, max=self.threshold)) + torch.tanh(
        self.slope * torch.relu(x - self.threshold))


def best_ms(fn, repeats: int, calls: int) -> float:
    """Minimum over repeats of the process CPU time per call (ms): steadier than wall time on a shared machine,
    where waiting for a core adds to the wall time only."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(calls):
            fn()
        times.append((time.process_time() - start) / calls * 1e3)
    return min(times)


def molecules(path: str | None, n: int) -> list:
    if path:
        from ase.io import read
        return [Structure.from_ase(a) for a in read(path, index=f":{n}")]
    from mftcalc.data.qm9 import load_qm9
    rng = np.random.default_rng(0)
    return [s.with_labels(positions=s.positions + rng.normal(scale=0.05, size=s.positions.shape))
            for s in load_qm9().structures(np.arange(n), properties=[])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    structures = molecules(args.input, 32)
    handle = ModelHandle.load("models/mft_gap.pt")
    batch = collate(structures[:14], handle.dtype, dataset=handle.dataset, properties=[], device=handle.device)
    model = load_model("models/pretrained.pt").train()
    train_batch = collate(structures, torch.float32, dataset=0, properties=[])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def inference() -> torch.Tensor:
        return handle.module(batch, compute_forces=True, compute_stress=False, compute_properties=False,
                             features=False)["forces"]

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(train_batch, compute_forces=True, compute_stress=False)
        ((out["energy"] ** 2).mean() * 1e-6 + (out["forces"] ** 2).mean() * 1e-6).backward()
        opt.step()

    rows = {("dense", "E+F"): [], ("sparse", "E+F"): [], ("dense", "train"): [], ("sparse", "train"): []}
    forces = {}
    for rep in range(4):
        order = [("dense", dense), ("sparse", SPARSE)][:: 1 if rep % 2 else -1]
        for name, forward in order:
            layers.SiLUT.forward = forward
            forces[name] = inference().detach().clone()
            rows[(name, "E+F")].append(best_ms(inference, 3, 10))
            rows[(name, "train")].append(best_ms(train_step, 2, 3))
    layers.SiLUT.forward = SPARSE
    print(f"torch {torch.__version__}, {args.threads} thread(s); max |F_dense - F_sparse| = "
          f"{float((forces['dense'] - forces['sparse']).abs().max()):.2e} eV/Å")
    print("| SiLUT tanh branch | E+F, 14 molecules (CPU ms, median of 4) | training step, 32 molecules (CPU ms, median of 4) |")
    print("|---|---:|---:|")
    for name in ("dense", "sparse"):
        print(f"| {name} | {np.median(rows[(name, 'E+F')]):.1f} | {np.median(rows[(name, 'train')]):.1f} |")


if __name__ == "__main__":
    main()
