"""Accuracy-and-speed sweep for choosing the CPU default backbone: each candidate size is trained from scratch on the
same GFN2-xTB conformers for the same number of steps, then validated on the same held-out molecules.

Each row: parameters, training steps/s and molecules/s (forces in the loss, measured over the whole run, validation
excluded), and the validation energy and force errors after the fixed budget. Candidates vary the number of
layers, the angle cutoff and the angle-feature width around DPA3's small configuration (64/32/16 × 6, a_rcut 4 Å).
Throughput at 2 threads without training (the pure speed sweep) is ``python benchmarks/training.py --sweep``.

Run from the repo root with mftcalc's venv (needs the xTB set, ``data/xtb``)::

    python benchmarks/default_sweep.py [--steps 400] [--chunks 16] [--out benchmarks/results/default_sweep.md]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mftcalc.training.pretrain import DatasetSpec, PretrainConfig, pretrain  # noqa: E402

#: (label, backbone overrides of the ``cpu`` preset)
CANDIDATES = [
    ("2 layers, a_rcut 3.5", dict(n_layers=2, a_rcut=3.5, a_rcut_smth=3.0)),
    ("3 layers, a_rcut 3.5 (cpu)", dict(n_layers=3, a_rcut=3.5, a_rcut_smth=3.0)),
    ("3 layers, a_rcut 3.5, a_dim 8", dict(n_layers=3, a_rcut=3.5, a_rcut_smth=3.0, a_dim=8)),
    ("3 layers, a_rcut 4.0", dict(n_layers=3, a_rcut=4.0, a_rcut_smth=3.5)),
    ("4 layers, a_rcut 3.5", dict(n_layers=4, a_rcut=3.5, a_rcut_smth=3.0)),
    ("6 layers, a_rcut 4.0 (dpa3-small)", dict(n_layers=6, a_rcut=4.0, a_rcut_smth=3.5)),
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--xtb", default="data/xtb", help="folder of the labelled xTB chunks")
    p.add_argument("--chunks", type=int, default=16, help="xTB chunks used (700 conformers each)")
    p.add_argument("--steps", type=int, default=400, help="training steps per candidate (auto:256 atoms per step)")
    p.add_argument("--max-val", type=int, default=300, help="validation structures (whole molecules held out)")
    p.add_argument("--only", help="comma-separated candidate indices (default: all)")
    p.add_argument("--out", help="also write the report as Markdown to this file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    C.set_threads()
    load_before = C.load_average()
    chunks = sorted(Path(args.xtb).glob("chunk_*.extxyz.xz"))[: args.chunks]
    if not chunks:
        raise SystemExit(f"no xTB chunks in {args.xtb} (make them with mftcalc label)")
    picked = [CANDIDATES[int(i)] for i in args.only.split(",")] if args.only else CANDIDATES
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "xtb").mkdir()
        for chunk in chunks:                     # the first --chunks chunks, as one glob
            (Path(tmp) / "xtb" / chunk.name).symlink_to(chunk.resolve())
        pattern = f"{tmp}/xtb/chunk_*.extxyz.xz"
        for k, (label, over) in enumerate(picked):
            print(f"  {label} ...", flush=True)
            spec = DatasetSpec(name="xtb_qm9", path=pattern,
                               prob=1.0, batch_size="auto:256", max_val=args.max_val, replay=0, max_force=30.0)
            cfg = PretrainConfig(datasets=[spec], preset="cpu", backbone=over, steps=args.steps,
                                 decay_steps=max(1, args.steps // 20), log_every=50, val_every=10 ** 9,
                                 checkpoint_every=10 ** 9, out_dir=f"{tmp}/{k}", state_path=f"{tmp}/{k}/state.pt",
                                 model_out=f"{tmp}/{k}/model.pt", replay_out=None, progress=False)
            card = pretrain(cfg)
            val = card["validation"]
            n_mol = card["datasets"]["xtb_qm9"]["batch_size"]
            steps_per_s = card["steps"] / card["train_wall_s"]
            rows.append([label, f"{card['parameters']:,}", f"{steps_per_s:.3g}", f"{steps_per_s * n_mol:.1f}",
                         f"{1000 * val['val/xtb_qm9/e_mae_per_atom']:.1f}", f"{1000 * val['val/xtb_qm9/f_mae']:.0f}",
                         f"{1000 * val['val/xtb_qm9/f_rmse']:.0f}"])
            print("   ", rows[-1], flush=True)
    headers = ["candidate", "params", "steps/s", "molecules/s", "E MAE meV/atom", "F MAE meV/Å", "F RMSE meV/Å"]
    body = "\n".join([
        C.markdown_table(headers, rows, right=[1, 2, 3, 4, 5, 6]), "",
        f"- data: {len(chunks)} chunks of `{args.xtb}` (GFN2-xTB QM9 conformers, forces ≤ 30 eV/Å); validation: "
        f"≤ {args.max_val} conformers of held-out molecules (hash split by QM9 index), the same for every row",
        f"- budget: {args.steps} steps from scratch, batches of ~256 atoms ({n_mol} molecules), learning rate "
        "1e-3 → 1e-5 over the run, pretraining prefactors; n_dim/e_dim 64/32, e_rcut 6 Å (switch from 5), "
        "a_rcut_smth = a_rcut − 0.5 Å; float32",
        "- molecules/s counts training steps only (validation excluded), at the thread count in the header",
    ])
    title = "CPU-default sweep: accuracy after a fixed training budget, and training speed (mftcalc)"
    C.write_report(args.out, C.report_header(title, sys.argv, load_before) + "\n\n" + body)


if __name__ == "__main__":
    main()
