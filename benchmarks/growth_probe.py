"""Is the pretrained prior short of capacity or of training? Continue it as it is, or deepened, for the same time.

    OMP_NUM_THREADS=1 python benchmarks/growth_probe.py --minutes 30      # both arms at once, one core each

Issue 15 wants the held-out xTB force MAE of the prior at or below 0.10 eV/Å. The 3-layer, 192k-parameter ``cpu``
backbone sits near 0.155 with its training error equal to its validation error (it underfits). This probe takes
the current pretraining state (``checkpoints/pretrain/state.pt``) and trains two copies of it side by side, one
process per core, on the pretraining config's data and splits:

- **continue**: the model as it is;
- **grown**: the same model with ``--grow`` layers appended (``mftcalc.model.grow.grow_layers``: identity at
  the start, so both arms start from the same predictions).

Both get a fresh Adam state, the same constant learning rate (``--lr``) and the loss prefactors the main run uses
at its current learning rate (held constant), and the same wall-clock budget. The runs live under
``runs/growth_probe`` (resumable: rerun the command and each arm continues from its state for another budget).
The report compares the held-out xTB force MAE against training wall time and against steps:
``benchmarks/results/growth_probe.md`` and ``growth_probe.png``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import torch

from mftcalc.schema import read_yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from pretrain_forecast import COLUMN, read_validations  # noqa: E402  (a sibling script)


def current_prefactors(config: Dict, step: int) -> Dict[str, float]:
    """The main run's loss prefactors at ``step`` (its learning rate there), as constant start = limit values."""
    from mftcalc.training.losses import ForceFieldPrefactors
    from mftcalc.training.schedule import ExponentialLR, prefactor
    schedule = ExponentialLR(config["lr0"], config["lr_end"], config["steps"], config["decay_steps"],
                             config.get("lr_start_step", 0))
    lr = schedule(step)
    defaults = ForceFieldPrefactors(**config.get("prefactors", {}))
    out = {}
    for term in ("e", "f", "v"):
        value = prefactor(getattr(defaults, f"start_{term}"), getattr(defaults, f"limit_{term}"), lr, config["lr0"])
        out[f"start_{term}"] = out[f"limit_{term}"] = round(value, 6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dev/pretrain_cpu.yaml")
    parser.add_argument("--state", default="checkpoints/pretrain/state.pt")
    parser.add_argument("--skeleton", default="checkpoints/protocol_gate/prior/pretrained.pt",
                        help="a model file of the state's architecture; the state's weights are loaded into it")
    parser.add_argument("--grow", type=int, default=3, help="layers appended in the grown arm")
    parser.add_argument("--lr", type=float, default=1e-4, help="constant learning rate of both arms")
    parser.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget of each arm")
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--runs", default="runs/growth_probe")
    parser.add_argument("--report", default="benchmarks/results/growth_probe.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the arms' logs, "
                        "training nothing")
    args = parser.parse_args()
    if not args.minutes > 0:
        raise SystemExit(f"--minutes must be positive, got {args.minutes:g}")
    os.chdir(REPO)

    from mftcalc.model.checkpoint import load_model, save_model
    from mftcalc.model.grow import grow_layers

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    config = read_yaml(args.config)                  # its base: chain resolved
    base_path, grown_path = runs / "base.pt", runs / f"grown_{args.grow}.pt"
    if not base_path.exists():
        state = torch.load(args.state, map_location="cpu", weights_only=False)
        base = load_model(args.skeleton)
        base.load_state_dict(state["model"])
        metadata = {**getattr(base, "metadata", {}), "probe_state_step": int(state["step"])}
        save_model(base, base_path, metadata)
        save_model(grow_layers(base, args.grow), grown_path, metadata)
    start_step = int(load_model(base_path).metadata["probe_state_step"])
    prefactors = current_prefactors(config, start_step)
    arms = {"continue": base_path, f"grown +{args.grow}": grown_path}
    procs = []
    for name, init in arms.items():
        out = runs / name.replace(" ", "").replace("+", "grow")
        if args.report_only:
            procs.append((name, out, None))
            continue
        sets = [f"out_dir={out}", f"state_path={out}/state.pt", f"model_out={out}/model.pt",
                f"heldout_out={out}/heldout.extxyz.gz", "replay=false", "refit_energy_shift=false",
                f"lr0={args.lr}", f"lr_end={args.lr}", "lr_start_step=0", "steps=10000000",
                f"val_every={args.val_every}", "progress=false"]
        sets += [f"prefactors.{k}={v}" for k, v in prefactors.items()]
        cmd = [sys.executable, "-m", "mftcalc.cli", "train", args.config, "--init", str(init),
               "--time-budget", str(args.minutes), "--set", *sets]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        out.mkdir(parents=True, exist_ok=True)
        with open(out.with_suffix(".log"), "a") as log:     # the child keeps its own handle
            procs.append((name, out, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)))
    started = time.time()
    for name, _, proc in procs:
        if proc is not None and proc.wait() != 0:
            raise SystemExit(f"arm {name!r} failed (rc {proc.returncode}); see {runs}/*.log")
    if not args.report_only:
        print(f"both arms done in {(time.time() - started) / 60:.1f} min")
    report(args, procs, start_step, prefactors)


def report(args, procs, start_step: int, prefactors: Dict[str, float]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mftcalc.model.checkpoint import load_model
    from mftcalc.model.mft_model import count_parameters

    main_val = read_validations(REPO / "checkpoints" / "pretrain" / "val.csv")
    before = main_val[main_val["step"] <= start_step]
    start_value, start_val_step = float(before[COLUMN].iloc[-1]), int(before["step"].iloc[-1])
    frames, rows = {}, []
    for name, out, _ in procs:
        if not (out / "val.csv").exists():
            print(f"arm {name!r}: no validation yet (fewer than --val-every steps); rerun to continue it")
            continue
        frame = read_validations(out / "val.csv")[["step", "wall_s", COLUMN]].dropna()
        frame = frame.assign(hours=frame["wall_s"] / 3600)
        frames[name] = frame
        model = load_model(out / "model.pt")
        last3 = frame[COLUMN].iloc[-3:]
        rows.append({"arm": name, "layers": model.config.backbone.n_layers, "parameters": count_parameters(model),
                     "steps": int(frame["step"].iloc[-1]), "hours": float(frame["hours"].iloc[-1]),
                     "steps/h": float(frame["step"].iloc[-1] / frame["hours"].iloc[-1]),
                     "first": float(frame[COLUMN].iloc[0]), "min": float(frame[COLUMN].min()),
                     "last3": float(last3.median())})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, frame in frames.items():
        axes[0].plot(frame["hours"], frame[COLUMN], "o-", ms=3, label=name)
        axes[1].plot(frame["step"], frame[COLUMN], "o-", ms=3, label=name)
    for ax, xlabel in zip(axes, ("training wall time (h, one core each)", "steps from the state")):
        ax.axhline(start_value, color="grey", ls=":", label=f"main run, validation at step {start_val_step:,}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out xTB force MAE (eV/Å)")
        ax.legend()
    fig.suptitle("growth probe: continue the prior, or deepen it")
    fig.tight_layout()
    plot = Path(args.report).with_suffix(".png")
    fig.savefig(plot, dpi=120)
    lines = [
        "# Growth probe: continue the prior as it is, or deepen it",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/growth_probe.py --grow {args.grow} --lr {args.lr} "
        f"--minutes {args.minutes:g}` (the two arms at once, one core each; {time.strftime('%Y-%m-%d')}).",
        "",
        f"Start: the pretraining state at step {start_step:,} (held-out xTB force MAE {start_value:.4f} eV/Å at the "
        f"validation of step {start_val_step:,} in `checkpoints/pretrain/val.csv`). Both arms: fresh Adam, learning rate {args.lr:g} constant, loss "
        f"prefactors held at the main run's values there (E {prefactors['start_e']:g}, F {prefactors['start_f']:g}, "
        f"V {prefactors['start_v']:g}), validation every {args.val_every} steps on the pretraining's held-out sets.",
        "",
        "| arm | layers | parameters | steps | training hours | steps/h | first val. | best val. | median of last 3 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['layers']} | {r['parameters']:,} | {r['steps']:,} | {r['hours']:.2f} | "
                     f"{r['steps/h']:,.0f} | {r['first']:.4f} | {r['min']:.4f} | {r['last3']:.4f} |")
    lines += ["", "Force MAE in eV/Å on the 500 held-out xTB conformers. Plot: "
              f"`{plot.name}` (against wall time, left, and steps, right).", ""]
    Path(args.report).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
