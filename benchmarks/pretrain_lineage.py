"""The prior's whole pretraining history in one picture: the 3-layer cycles, then the deeper and the wider arm.

    python benchmarks/pretrain_lineage.py

Reads the held-out xTB force MAE (``val.csv``) of each stage and its config's learning-rate schedule:

- ``checkpoints/pretrain`` (``configs/dev/pretrain_cpu.yaml``, 3 layers, steps 0–126,001; earlier cycles' rates
  are not in today's config, so the rate is drawn from its third cycle on, step 44,200);
- the fourth cycle's arms (``ARMS``), each from that state at step 126,001 with one schedule, seed and data, their
  steps placed after the 3-layer ones: the 3-layer control; 6 layers grown with zero residual scales
  (``mftcalc grow --layers 3``); 6 layers grown with the new scales at 0.1 (``--residual-init 0.1``); widened to
  128/64/32 (``--n-dim 128 --e-dim 64 --a-dim 32``); the control without its gradient clip; the control with a
  Huber force loss (``force_huber: 0.1``: its training RMSE is not what it minimises, so read its validations).
  They draw the same batches at the same step, so their training errors are also compared step by step (the
  paired table and panel, ratios to the control), and the grown arms' residual scales show how far their
  appended layers act.

Writes ``benchmarks/results/pretrain_lineage.png`` (three panels: force MAE and learning rate against the
cumulative step, with the 3-layer cycle's saturating floor from ``pretrain_forecast.fit_saturating`` as a line;
the fourth cycle's validations alone; the paired training-error ratios) and
``pretrain_lineage.md`` (the arms' validations beside the 3-layer third cycle's at the same learning rate, the
paired table, the scales and the training hours).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np

from mftcalc.schema import read_yaml
from mftcalc.training.weight_average import AVERAGE_PREFIX

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pretrain_forecast import COLUMN, fit_saturating, read_validations  # noqa: E402  (a sibling script)

BASE = ("3 layers", "checkpoints/pretrain", "configs/dev/pretrain_cpu.yaml")
# The cycle-4 arms (label, folder, config): the same 3-layer state at step 126,001 and the same schedule, data,
# seed, loss and world size, so the same batches at the same step. The control comes first: the paired ratios are
# to it.
ARMS = (("3 layers (control)", "checkpoints/pretrain3_control", "configs/dev/pretrain_cpu_3l_control.yaml"),
        ("6 layers (grown)", "checkpoints/pretrain6", "configs/dev/pretrain_cpu_6l.yaml"),
        ("6 layers (engaged)", "checkpoints/pretrain6_engaged", "configs/dev/pretrain_cpu_6l_engaged.yaml"),
        ("128/64/32 (widened)", "checkpoints/pretrain_wide", "configs/dev/pretrain_cpu_wide.yaml"),
        ("3 layers, no clip", "checkpoints/pretrain3_noclip", "configs/dev/pretrain_cpu_3l_noclip.yaml"),
        ("3 layers, Huber 0.1", "checkpoints/pretrain3_huber", "configs/dev/pretrain_cpu_3l_huber.yaml"))
N_BASE_LAYERS = 3
TRAIN_KEY = "xtb_qm9/rmse_f"                    # train.csv column: the batch's xTB force RMSE (eV/Å)


def new_layer_scales(state_path: Path) -> str:
    """How far the appended layers act in a grown model's training state: the mean |residual scale| of the node
    updates of the base layers and of the appended ones (a fresh layer starts at 0.1; an identity-grown one at 0).
    Empty when the state is missing or has no appended layers."""
    if not state_path.exists():
        return ""
    import torch
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    scales: Dict[int, list] = {}
    for key, value in state["model"].items():
        parts = key.split(".")
        if key.startswith("backbone.layers.") and parts[3] == "res_node":
            scales.setdefault(int(parts[2]), []).append(float(value.abs().mean()))
    if len(scales) <= N_BASE_LAYERS:
        return ""
    base = [np.mean(scales[k]) for k in sorted(scales) if k < N_BASE_LAYERS]
    new = [np.mean(scales[k]) for k in sorted(scales) if k >= N_BASE_LAYERS]
    return (f"step {int(state['step']):,}: base layers " + ", ".join(f"{v:.3f}" for v in base)
            + "; appended layers " + ", ".join(f"{v:.4f}" for v in new))


AVERAGE_SUFFIX = ", weight average"


def weight_average_validations(val_csvs: Dict[str, Path]) -> Dict[str, Any]:
    """``{"<arm>, weight average": frame}`` for each arm whose ``val.csv`` validated a moving average of its
    weights (``ema/`` columns, ``ema_decay > 0``): step, wall time and the averaged weights' force MAE renamed
    to ``COLUMN``, rows where it was validated."""
    out = {}
    for name, path in val_csvs.items():
        if not path.exists():
            continue
        frame = read_validations(path)
        if AVERAGE_PREFIX + COLUMN in frame:
            ema = frame[["step", "wall_s", AVERAGE_PREFIX + COLUMN]].dropna()
            out[name + AVERAGE_SUFFIX] = ema.rename(columns={AVERAGE_PREFIX + COLUMN: COLUMN})
    return out


def schedule(config_path: str):
    """The learning rate of a pretraining config as a function of its step."""
    from mftcalc.training.schedule import ExponentialLR
    c = read_yaml(REPO / config_path)             # its base: chain resolved
    return ExponentialLR(c["lr0"], c["lr_end"], c["steps"], c["decay_steps"], c.get("lr_start_step") or 0), c


def paired_frames(arms: Dict[str, Path]) -> Dict[str, Any]:
    """The logged training xTB force RMSE (eV/Å) of each arm with a ``train.csv``, as step-indexed frames, in the
    order of ``arms`` (the first is the reference of the paired ratios)."""
    import pandas as pd
    return {name: pd.read_csv(path)[["step", TRAIN_KEY]].dropna().drop_duplicates("step", keep="last")
            for name, path in arms.items() if path.exists()}


def paired_steps(ref: Any, frame: Any) -> Any:
    """The steps both arms logged: ``frame``'s force RMSE (``TRAIN_KEY``), the reference's (``TRAIN_KEY_ref``) and
    their ``ratio``."""
    both = ref.merge(frame, on="step", suffixes=("_ref", ""))
    return both.assign(ratio=both[TRAIN_KEY] / both[TRAIN_KEY + "_ref"])


def paired_ratio_curves(frames: Dict[str, Any], window: int = 500) -> Dict[str, tuple]:
    """For each arm after the first: (window starts, mean per-step ratio of its training force RMSE to the first
    arm's over the steps both logged in that window), windows with at least 5 such steps."""
    (_, ref), *others = frames.items()
    curves = {}
    for name, frame in others:
        both = paired_steps(ref, frame)
        both = both.assign(window=(both["step"] // window) * window)
        grouped = both.groupby("window")["ratio"].agg(["mean", "size"])
        grouped = grouped[grouped["size"] >= 5]
        curves[name] = (grouped.index.to_numpy(), grouped["mean"].to_numpy())
    return curves


def paired_training_errors(frames: Dict[str, Any], window: int = 1000) -> list:
    """Markdown lines comparing cycle-4 arms on their training batches: the mean xTB force RMSE of the logged steps
    in each ``window`` of steps, and each arm's mean per-step ratio to the first arm over the steps both logged.
    The arms draw the same batches at the same step (same seed, sources and world size), so the ratios are paired
    comparisons, far less noisy than the 500-conformer validation. Empty when fewer than two arms have frames."""
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
        if inside.empty:
            continue
        cells = []
        for _, frame in others:
            both = paired_steps(inside, frame)
            cells.append("– | –" if both.empty else f"{both[TRAIN_KEY].mean():.4f} | "
                         f"{both['ratio'].mean():.3f} ({len(both)})")
        lines.append(f"| {start:,}–{start + window - 1:,} | {inside[TRAIN_KEY].mean():.4f} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "pretrain_lineage.md"))
    args = parser.parse_args()

    name3, dir3, cfg3 = BASE
    lr3, c3 = schedule(cfg3)
    lr4, c4 = schedule(ARMS[0][2])                 # the arms share one schedule (checked below)
    for _, _, cfg in ARMS[1:]:
        other = read_yaml(REPO / cfg)
        if any(other[k] != c4[k] for k in ("lr0", "lr_end", "steps", "decay_steps", "seed", "datasets")):
            raise SystemExit(f"{cfg} does not share the control's schedule, seed and data: the arms do not pair")
    v3 = read_validations(REPO / dir3 / "val.csv")[["step", "wall_s", COLUMN]].dropna()
    import torch
    handover = torch.load(REPO / dir3 / "state.pt", map_location="cpu", weights_only=False)
    offset, wall3 = int(handover["step"]), float(handover["wall"])
    cycle = v3[v3["step"] > c3["lr_start_step"]]
    (floor, _, _), (floor_se, *_) = fit_saturating(cycle["step"].to_numpy(), cycle[COLUMN].to_numpy())
    v3 = v3.assign(lr=[lr3(int(s)) for s in v3["step"]])

    vals = {name: read_validations(REPO / d / "val.csv")[["step", "wall_s", COLUMN]].dropna()
            for name, d, _ in ARMS if (REPO / d / "val.csv").exists()}
    averaged = weight_average_validations({name: REPO / d / "val.csv" for name, d, _ in ARMS})
    columns = [name for name, _, _ in ARMS]
    for name, frame in averaged.items():                  # beside the arm whose weights it averages
        columns.insert(columns.index(name.rsplit(AVERAGE_SUFFIX, 1)[0]) + 1, name)
    at = {name: {int(r["step"]): float(r[COLUMN]) for _, r in frame.iterrows()}
          for name, frame in {**vals, **averaged}.items()}
    steps = sorted(set().union(*(set(a) for a in at.values())))
    rows = []
    for step in steps:
        lr = lr4(step)
        same = cycle[np.abs(np.log(v3.loc[cycle.index, "lr"] / lr)) < np.log(1.1)]
        cells = [f"{at[name][step]:.4f}" if step in at.get(name, {}) else "–" for name in columns]
        rows.append(f"| {step:,} | {step + offset:,} | {lr:.2e} | " + " | ".join(cells) + " | "
                    + (f"{same[COLUMN].median():.4f} ({len(same)})" if len(same) else "–") + " |")
    frames = paired_frames({name: REPO / d / "train.csv" for name, d, _ in ARMS})
    paired = paired_training_errors(frames)
    arms_time, engaged = [], []
    for name, d, _ in ARMS:
        frame = vals.get(name)
        if frame is not None and len(frame):
            last = frame.iloc[-1]
            arms_time.append(f"{name}: {int(last['step']):,} steps in {last['wall_s'] / 3600:.2f} h of training "
                             f"({last['step'] / last['wall_s'] * 3600:,.0f} steps/h)")
        scales = new_layer_scales(REPO / d / "state.pt")
        if scales:
            engaged.append(f"- {name}, {scales}")
    lines = [
        "# Pretraining lineage: 3 layers, then deeper or wider (issue 15, item 3)",
        "",
        "`python benchmarks/pretrain_lineage.py`. Held-out xTB force MAE (eV/Å, 500 conformers of unseen molecules).",
        f"The 3-layer state stopped at step {offset:,} after {wall3 / 3600:.1f} h of training; its third cycle's "
        f"saturating fit levels off at {floor:.3f} ± {floor_se:.3f} eV/Å. The fourth cycle's arms all start from "
        "that state with a fresh Adam state and the same learning-rate cycle, data, seed, loss and world size, so "
        "they draw the same batches at the same step; they differ only in the capacity added and how it starts, "
        "or in one setting: the control as it is; 6 layers grown with zero residual scales (the same predictions "
        "at the start, `mftcalc grow --layers 3`); 6 layers grown with the new scales at a fresh layer's 0.1 "
        "(they act from step 0, `--residual-init 0.1`); widened with zero new channels (`--n-dim 128 --e-dim 64 "
        "--a-dim 32`); the control with its gradient-norm clip (10, reached at 99 % of its steps) lifted; the "
        "control with a Huber force loss (`force_huber: 0.1`, linear above 0.1 eV/Å). A column ending in "
        f"'{AVERAGE_SUFFIX}' is the exponential moving average of that arm's weights (`ema_decay`), validated on "
        "the same steps: the same training, averaged. "
        "The last column is the 3-layer third cycle's median at a learning rate within 10 % of the row's (count in "
        "brackets): earlier in its training, so not like for like.",
        "",
        "| cycle-4 step | total step | learning rate | " + " | ".join(columns)
        + " | 3 layers' third cycle at that rate |",
        "|---:|---:|---:|" + "---:|" * len(columns) + "---:|",
        *rows,
        "",
        *paired,
        "How far the appended layers act (mean |residual scale| of the node updates per layer, from the training "
        "states; a fresh layer starts at 0.1):",
        "",
        *(engaged or ["- no grown arm's state is here"]),
        "",
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
    fig, (ax, ax_zoom, ax_ratio) = plt.subplots(1, 3, figsize=(18, 4.5), gridspec_kw={"width_ratios": [3, 2, 2]})
    ax.plot(v3["step"], v3[COLUMN], ".", ms=4, label=name3)
    color = {name: f"C{k + 1}" for k, (name, _, _) in enumerate(ARMS)}      # one colour per arm in both panels
    for (name, _, _), marker in zip(ARMS, "^osDvP"):
        if name in vals and len(vals[name]):
            ax.plot(vals[name]["step"] + offset, vals[name][COLUMN], marker, ms=4, color=color[name], label=name)
    for name, frame in averaged.items():
        arm = name.rsplit(AVERAGE_SUFFIX, 1)[0]
        ax.plot(frame["step"] + offset, frame[COLUMN], "*-", ms=6, lw=0.8, color=color[arm], label=name)
    # the fourth cycle alone, on a linear scale: the arms' validations side by side
    for (name, _, _), marker in zip(ARMS, "^osDvP"):
        if name in vals and len(vals[name]):
            ax_zoom.plot(vals[name]["step"], vals[name][COLUMN], marker + "-", ms=4, lw=0.6, color=color[name],
                         label=name)
    for name, frame in averaged.items():
        ax_zoom.plot(frame["step"], frame[COLUMN], "*-", ms=6, lw=1.2,
                     color=color[name.rsplit(AVERAGE_SUFFIX, 1)[0]], label=name)
    ax_zoom.axhline(floor, color="C0", ls="--", lw=1)
    ax_zoom.set_xlabel("cycle-4 step")
    ax_zoom.set_ylabel("held-out xTB force MAE (eV/Å)")
    ax_zoom.set_title("The fourth cycle's arms (validations)")
    ax_zoom.legend(fontsize=7)
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
    steps4 = np.arange(0, int(c4["steps"]), 500)
    twin.semilogy(steps4 + offset, [lr4(int(s)) for s in steps4], color="grey", alpha=0.4, lw=1)
    twin.set_ylabel("learning rate (faint lines)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Pretraining of the prior: 3-layer cycles, then deeper or wider")
    if len(frames) >= 2:
        ref_name = next(iter(frames))
        for (name, (starts, ratios)), marker in zip(paired_ratio_curves(frames).items(), "osDvP"):
            ax_ratio.plot(starts + 250, ratios, marker + "-", ms=3, lw=1, color=color[name], label=name)
        ax_ratio.axhline(1.0, color="grey", lw=0.8)
        ax_ratio.set_xlabel("cycle-4 step")
        ax_ratio.set_ylabel(f"training xTB force RMSE / {ref_name}'s")
        ax_ratio.set_title("Paired: the same batches, 500-step windows")
        ax_ratio.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.report).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
