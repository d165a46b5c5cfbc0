"""The prior's whole pretraining history in one picture: the 3-layer cycles, then the deeper and the wider arm.

    python benchmarks/pretrain_lineage.py

Reads the held-out xTB force MAE (``val.csv``) of each stage and its config's learning-rate schedule:

- ``checkpoints/pretrain`` (``configs/dev/pretrain_cpu.yaml``, 3 layers, steps 0–126,001; earlier cycles' rates
  are not in today's config, so the rate is drawn from its third cycle on, step 44,200);
- ``checkpoints/pretrain6`` (``configs/dev/pretrain_cpu_6l.yaml``, 6 layers grown from the 3-layer state at step
  126,001 by ``mftcalc grow``), its steps placed after the 3-layer ones;
- ``checkpoints/pretrain_wide`` (``configs/dev/pretrain_cpu_wide.yaml``, the same 3-layer state widened to
  128/64/32 by ``mftcalc grow --n-dim 128 --e-dim 64 --a-dim 32``, same schedule), where it has validations;
- ``checkpoints/pretrain3_control`` (``configs/dev/pretrain_cpu_3l_control.yaml``, the same 3-layer state as it is,
  same schedule), where it has validations. The cycle-4 arms draw the same batches at the same step, so their
  training errors are also compared step by step (the paired table).

Writes ``benchmarks/results/pretrain_lineage.png`` (force MAE and learning rate against the cumulative step;
the 3-layer cycle's saturating floor from ``pretrain_forecast.fit_saturating`` as a line) and
``pretrain_lineage.md`` (the 6-layer validations beside the 3-layer ones at the same learning rate, and the
cumulative training hours).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pretrain_forecast import COLUMN, fit_saturating, read_validations  # noqa: E402  (a sibling script)

STAGES = (("3 layers", "checkpoints/pretrain", "configs/dev/pretrain_cpu.yaml"),
          ("6 layers (grown)", "checkpoints/pretrain6", "configs/dev/pretrain_cpu_6l.yaml"),
          ("3 layers, 128/64/32 (widened)", "checkpoints/pretrain_wide", "configs/dev/pretrain_cpu_wide.yaml"))
CONTROL = "checkpoints/pretrain3_control"      # configs/dev/pretrain_cpu_3l_control.yaml: no capacity added


def schedule(config_path: str):
    """The learning rate of a pretraining config as a function of its step."""
    from mftcalc.training.schedule import ExponentialLR
    c = yaml.safe_load((REPO / config_path).read_text())
    return ExponentialLR(c["lr0"], c["lr_end"], c["steps"], c["decay_steps"], c.get("lr_start_step") or 0), c


def paired_training_errors(arms: Dict[str, Path], window: int = 1000) -> list:
    """Markdown lines comparing cycle-4 arms on their training batches: the mean xTB force RMSE of the logged steps
    in each ``window`` of steps, and each arm's mean per-step ratio to the first arm over the steps both logged.
    The arms draw the same batches at the same step (same seed, sources and world size), so the ratios are paired
    comparisons, far less noisy than the 500-conformer validation. Arms without a ``train.csv`` are left out;
    empty when fewer than two remain."""
    import pandas as pd
    key = "xtb_qm9/rmse_f"
    frames = {name: pd.read_csv(path)[["step", key]].dropna().drop_duplicates("step", keep="last")
              for name, path in arms.items() if path.exists()}
    if len(frames) < 2:
        return []
    (ref_name, ref), *others = frames.items()
    names = [name for name, _ in others]
    lines = ["Training batches, paired (the same xTB batches at the same steps; force RMSE in eV/Å, mean over "
             f"the logged steps of each {window:,}-step window; ratio: mean of the per-step ratios to "
             f"{ref_name}, over the steps both logged, count in brackets):", "",
             f"| cycle-4 steps | {ref_name} | " + " | ".join(f"{n} | ratio" for n in names) + " |",
             "|---|---:|" + "---:|---:|" * len(names)]
    last = int(max(f["step"].max() for _, f in others))
    for start in range(0, last + 1, window):
        inside = ref[(ref["step"] >= start) & (ref["step"] < start + window)]
        cells = []
        for _, frame in others:
            both = inside.merge(frame, on="step", suffixes=("_ref", ""))
            cells.append("– | –" if both.empty else f"{both[key].mean():.4f} | "
                         f"{(both[key] / both[key + '_ref']).mean():.3f} ({len(both)})")
        lines.append(f"| {start:,}–{start + window - 1:,} | {inside[key].mean():.4f} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "pretrain_lineage.md"))
    args = parser.parse_args()

    (name3, dir3, cfg3), (name6, dir6, cfg6), (name_w, dir_w, _) = STAGES
    lr3, c3 = schedule(cfg3)
    lr6, _ = schedule(cfg6)
    v3 = read_validations(REPO / dir3 / "val.csv")[["step", "wall_s", COLUMN]].dropna()
    v6 = read_validations(REPO / dir6 / "val.csv")[["step", "wall_s", COLUMN]].dropna()
    import torch
    handover = torch.load(REPO / dir3 / "state.pt", map_location="cpu", weights_only=False)
    offset, wall3 = int(handover["step"]), float(handover["wall"])
    cycle = v3[v3["step"] > c3["lr_start_step"]]
    (floor, _, _), (floor_se, *_) = fit_saturating(cycle["step"].to_numpy(), cycle[COLUMN].to_numpy())
    v3 = v3.assign(lr=[lr3(int(s)) for s in v3["step"]])
    v6 = v6.assign(lr=[lr6(int(s)) for s in v6["step"]], total=v6["step"] + offset,
                   hours=(v6["wall_s"] + wall3) / 3600)

    wide_csv, control_csv = REPO / dir_w / "val.csv", REPO / CONTROL / "val.csv"
    vw, vc = (read_validations(path)[["step", "wall_s", COLUMN]].dropna() if path.exists() else None
              for path in (wide_csv, control_csv))
    wide_at, control_at = ({int(r["step"]): float(r[COLUMN]) for _, r in frame.iterrows()} if frame is not None
                           else {} for frame in (vw, vc))
    rows = []
    for _, r in v6.iterrows():
        same = cycle[np.abs(np.log(v3.loc[cycle.index, "lr"] / r["lr"])) < np.log(1.1)]
        wide, control = wide_at.get(int(r["step"])), control_at.get(int(r["step"]))
        rows.append(f"| {int(r['step']):,} | {int(r['total']):,} | {r['hours']:.1f} | {r['lr']:.2e} | "
                    f"{r[COLUMN]:.4f} | " + (f"{wide:.4f}" if wide is not None else "–") + " | "
                    + (f"{control:.4f}" if control is not None else "–") + " | "
                    + (f"{same[COLUMN].median():.4f} ({len(same)})" if len(same) else "–") + " |")
    paired = paired_training_errors({name6: REPO / dir6 / "train.csv", name_w: REPO / dir_w / "train.csv",
                                     "3 layers (control)": REPO / CONTROL / "train.csv"})
    arms_time = []
    for name, frame in ((name6, v6), (name_w, vw), ("3 layers (control)", vc)):
        if frame is not None and len(frame):
            last = frame.iloc[-1]
            arms_time.append(f"{name}: {int(last['step']):,} steps in {last['wall_s'] / 3600:.2f} h of training "
                             f"({last['step'] / last['wall_s'] * 3600:,.0f} steps/h)")
    lines = [
        "# Pretraining lineage: 3 layers, then 6 layers or wider (issue 15, item 3)",
        "",
        "`python benchmarks/pretrain_lineage.py`. Held-out xTB force MAE (eV/Å, 500 conformers of unseen molecules).",
        f"The 3-layer state stopped at step {offset:,} after {wall3 / 3600:.1f} h of training; its third cycle's "
        f"saturating fit levels off at {floor:.3f} ± {floor_se:.3f} eV/Å. The 6-layer model starts there with the "
        "same predictions (`mftcalc grow`), a fresh Adam state and its own learning-rate cycle. The last column is "
        "the 3-layer third cycle's median at a learning rate within 10 % of the 6-layer row's (count in brackets): "
        "earlier in its training, so not a like-for-like comparison (no 3-layer control restarted with the "
        "6-layer schedule ran then). The widened arm and the 3-layer control (session 13) start from the same "
        "state with the same schedule, data, seed and loss: the three arms differ only in the capacity added.",
        "",
        "| cycle-4 step | total step | training hours in all (6 layers) | learning rate | 6 layers | "
        "128/64/32 | 3 layers (control) | 3 layers' third cycle at that rate |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *paired,
        "Training time of the cycle-4 arms (two torchrun processes each, beside other work): "
        + "; ".join(arms_time) + ".",
        "",
        "Plot: `pretrain_lineage.png`.",
        "",
    ]
    Path(args.report).write_text("\n".join(lines))
    print("\n".join(lines))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(v3["step"], v3[COLUMN], ".", ms=4, label=name3)
    ax.plot(v6["total"], v6[COLUMN], "o", ms=4, label=name6)
    if vw is not None and len(vw):
        ax.plot(vw["step"] + offset, vw[COLUMN], "s", ms=4, label=name_w)
    if vc is not None and len(vc):
        ax.plot(vc["step"] + offset, vc[COLUMN], "^", ms=4, label="3 layers (control, same schedule)")
    ax.axhline(floor, color="C0", ls="--", lw=1, label=f"3-layer cycle's saturating floor {floor:.3f}")
    ax.axhline(0.10, color="grey", ls=":", lw=1, label="issue 15's target 0.10")
    ax.axvline(offset, color="grey", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylim(0.09, 0.3)
    ax.set_xlabel("pretraining step (all stages)")
    ax.set_ylabel("held-out xTB force MAE (eV/Å)")
    twin = ax.twinx()
    steps3 = np.arange(c3["lr_start_step"], offset, 500)
    twin.semilogy(steps3, [lr3(int(s)) for s in steps3], color="C0", alpha=0.3, lw=1)
    steps6 = np.arange(0, int(yaml.safe_load((REPO / cfg6).read_text())["steps"]), 500)
    twin.semilogy(steps6 + offset, [lr6(int(s)) for s in steps6], color="C1", alpha=0.3, lw=1)
    twin.set_ylabel("learning rate (faint lines)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Pretraining of the prior: 3-layer cycles, then deeper or wider")
    fig.tight_layout()
    fig.savefig(Path(args.report).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
