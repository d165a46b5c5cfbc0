"""Throughput against the angle budget of one forward call: how many angles one batched call should hold.

The angle block's working set grows with the number of angles in a call; once it leaves the cache, throughput
drops (``../shared/notes/speed.md``). This script runs the same QM9 molecules through ``predict_structures``
(energy + forces, eval mode) and through force-training steps, each with calls of at most N angles for a range of
N, and prints molecules/s per budget; the best budget is ``mftcalc.model.inference.DEFAULT_MAX_ANGLES``.

Run from the repo root with mftcalc's venv::

    python benchmarks/chunking.py [--molecules 512] [--preset cpu] [--out benchmarks/results/chunking.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mftcalc.data import collate  # noqa: E402
from mftcalc.data.batch import split_sizes_by_atoms  # noqa: E402
from mftcalc.model.graph import angle_counts  # noqa: E402
from mftcalc.model.inference import DEFAULT_MAX_ANGLES, predict_structures  # noqa: E402

BUDGETS = [12_500, 25_000, 50_000, 100_000, 200_000, 400_000, 800_000, 1_600_000]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", type=int, default=512)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    C.set_threads()
    load_before = C.load_average()
    mols = C.qm9_structures(args.molecules, 0)
    field, backends, _ = C.angle_backends()
    model, params = C.build_ours(args.preset, field, "fused" if "fused" in backends else None)
    counts = angle_counts(mols, float(model.a_rcut))
    rows = []
    for budget in BUDGETS:
        groups = split_sizes_by_atoms([s.n_atoms for s in mols], 10 ** 9, counts, budget)
        t_inf = C.time_call(lambda: predict_structures(model, mols, compute_stress=False, max_atoms=10 ** 9,
                                                       max_angles=budget), warmup=1, repeats=args.repeats)
        batches = [collate([mols[i] for i in g], torch.float32) for g in groups]
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)

        def train_epoch() -> None:
            model.train()
            for b in batches:   # one optimiser step per call: the step-time part that depends on the call size
                opt.zero_grad(set_to_none=True)
                out = model(b, compute_forces=True, compute_stress=False)
                loss = (out["energy"] ** 2).mean() * 1e-6 + (out["forces"] ** 2).mean()
                loss.backward()
                opt.step()
        t_train = C.time_call(train_epoch, warmup=1, repeats=max(1, args.repeats - 1))
        rows.append([f"{budget:,}", len(groups), f"{np.mean([len(g) for g in groups]):.1f}",
                     f"{len(mols) / t_inf.median:.1f}", f"{len(mols) / t_train.median:.1f}"])
        print("  ", rows[-1], flush=True)
    headers = ["angles per call (max)", "calls", "molecules per call", "inference molecules/s (E+F)",
               "training molecules/s (forces in the loss)"]
    body = "\n".join([
        C.markdown_table(headers, rows, right=[0, 1, 2, 3, 4]), "",
        f"- {len(mols)} QM9 molecules (all sizes), {int(counts.sum()):,} angles in total at a_rcut "
        f"{float(model.a_rcut):g} Å; preset `{args.preset}` ({params:,} parameters), float32, fused angle block",
        f"- inference: `predict_structures` with `max_angles` = the budget (median of {args.repeats}); training: one "
        "Adam step per call over all molecules (median of the repeats)",
        f"- current default `DEFAULT_MAX_ANGLES` = {DEFAULT_MAX_ANGLES:,}",
    ])
    title = "Angle budget per forward call: throughput (mftcalc, CPU)"
    C.write_report(args.out, C.report_header(title, sys.argv, load_before) + "\n\n" + body)


if __name__ == "__main__":
    main()
