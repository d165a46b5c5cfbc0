"""How far is the pretrained prior from issue 15's target, and what would reaching it cost on this machine?

    python benchmarks/pretrain_forecast.py                    # checkpoints/pretrain, configs/dev/pretrain_cpu.yaml

Reads the running pretraining's validation log (``val.csv``: held-out xTB force MAE every 1,000 steps) and its
config (the current cycle's first step, ``lr_start_step``). Over the current learning-rate cycle it fits a power
law ``f_mae = a · step^(-b)`` by least squares in log–log, and a saturating law ``f_mae = floor + a · step^(-b)``
(nonlinear least squares; the floor is where the cycle levels off), and reports:

- the measured held-out force MAE (median of the last three validations, eV/Å) and how fast it fell over the last
  10,000 steps;
- the measured training cost: steps per hour of training wall time (``wall_s`` in ``val.csv`` counts only time
  spent training, so pauses between sessions do not enter), since the last resume that changed the number of
  torchrun processes (``resume.log``; with K processes a step carries K times the batch);
- where the power law reaches 0.10 and 0.05 eV/Å, in steps and wall-clock hours at that rate, and where the last
  10,000 steps' rate of fall, held constant, would; and the saturating fit's floor with its standard error, and
  which of the two fits the points better (residual standard deviation). A floor above a target means the cycle,
  continued as it is, does not reach it. All extrapolate a cycle whose learning rate is still decaying; treat
  them as an order of magnitude, not a promise.

Writes ``benchmarks/results/pretrain_forecast.md`` and ``pretrain_forecast.png`` (measured points, the fit, the
targets).
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mftcalc.schema import read_yaml

REPO = Path(__file__).resolve().parents[1]
COLUMN = "val/xtb_qm9/f_mae"


def read_validations(val_csv: Path) -> pd.DataFrame:
    """The pretraining's ``val.csv``, one row per step (the last if a resume repeated one), by step."""
    return pd.read_csv(val_csv).drop_duplicates("step", keep="last").sort_values("step")


def cycle_points(val_csv: Path, start_step: int) -> pd.DataFrame:
    """Validation rows of the current cycle (step > ``start_step``)."""
    frame = read_validations(val_csv)
    return frame[frame["step"] > start_step][["step", "wall_s", COLUMN]].dropna()


def world_size_changes(resume_log: Path) -> list[tuple[int, int]]:
    """(step, world size from then on) of every resume in ``resume.log`` that changed the number of processes."""
    changes, step = [], None
    if not resume_log.exists():
        return changes
    for line in resume_log.read_text().splitlines():
        match = re.search(r"resuming .* at step (\d+)", line)
        if match:
            step = int(match.group(1))
        match = re.match(r"\s+world_size: \S+ -> (\d+)", line)
        if match and step is not None:
            changes.append((step, int(match.group(1))))
    return changes


def fit_power_law(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(a, b) of ``values ≈ a · steps^(-b)``, least squares in log–log."""
    slope, intercept = np.polyfit(np.log(steps), np.log(values), 1)
    return float(np.exp(intercept)), float(-slope)


def fit_saturating(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(floor, a, b) and their standard errors of ``values ≈ floor + a · (steps / 1e5)^(-b)`` (nonlinear least
    squares, started from the lowest value as the floor)."""
    from scipy.optimize import curve_fit
    x = steps / 1e5
    p0 = [0.9 * float(values.min()), float(values.max() - values.min()) * float(x.min()) ** 0.5 + 1e-6, 0.5]
    params, cov = curve_fit(saturating, x, values, p0=p0, maxfev=20_000)
    return params, np.sqrt(np.diag(cov))


def saturating(x: np.ndarray, floor: float, a: float, b: float) -> np.ndarray:
    """``floor + a · x^(-b)`` (x = step / 1e5)."""
    return floor + a * x ** (-b)


def steps_to(target: float, a: float, b: float) -> float:
    """Step at which ``a · step^(-b)`` reaches ``target`` (inf when the fit does not fall)."""
    return float((a / target) ** (1.0 / b)) if b > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "checkpoints" / "pretrain"))
    parser.add_argument("--config", default=str(REPO / "configs" / "dev" / "pretrain_cpu.yaml"))
    parser.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "pretrain_forecast.md"))
    args = parser.parse_args()

    config = read_yaml(args.config)                  # its base: chain resolved
    start = int(config.get("lr_start_step") or 0)
    points = cycle_points(Path(args.out_dir) / "val.csv", start)
    if len(points) < 5:
        raise SystemExit(f"{args.out_dir}/val.csv has {len(points)} validations after step {start}: too few to fit")
    steps, values = points["step"].to_numpy(), points[COLUMN].to_numpy()
    a, b = fit_power_law(steps, values)
    (floor, sa, sb), (floor_se, *_) = fit_saturating(steps, values)
    resid_power = float(np.std(values - a * steps ** (-b)))
    resid_sat = float(np.std(values - saturating(steps / 1e5, floor, sa, sb)))
    now_step = int(steps[-1])
    now = float(np.median(values[-3:]))
    recent = points[points["step"] >= now_step - 10_000]
    fall_10k = float(np.median(recent[COLUMN].to_numpy()[:3]) - now)
    # training wall per step (wall_s is training time only), over the part of the cycle run with today's number
    # of processes (one core each): with K processes a step carries K times the batch
    changes = [c for c in world_size_changes(Path(args.out_dir) / "resume.log") if c[0] >= start]
    # segments of constant process count, newest first: (first step, world size, last step)
    bounds = [(start, 1)] + [(step, world) for step, world in changes]
    segments = [(first, world, bounds[k + 1][0] if k + 1 < len(bounds) else float("inf"))
                for k, (first, world) in enumerate(bounds)][::-1]
    world_note = ""
    for k, (since, world, until) in enumerate(segments):
        segment = points[(points["step"] > since) & (points["step"] <= until)]
        if len(segment) >= 2:
            if k:
                world_note = (f" up to step {int(until):,} (too few validations since the last change of "
                              "processes)")
            break
    else:
        raise SystemExit("too few validations with one number of processes to measure the training rate")
    seg_steps, seg_wall = segment["step"].to_numpy(), segment["wall_s"].to_numpy()
    per_hour = 3600.0 * (seg_steps[-1] - seg_steps[0]) / (seg_wall[-1] - seg_wall[0])
    cores = f"{world} processes (one core each)" if world > 1 else "1 process (one core)"

    rows = []
    for target in (0.10, 0.05):
        step = steps_to(target, a, b)
        linear = now_step + 10_000 * (now - target) / fall_10k if fall_10k > 0 else float("inf")
        rows.append((target, step, (step - now_step) / per_hour, linear, (linear - now_step) / per_hour))
    lines = [
        "# Pretraining forecast (issue 15, item 3)",
        "",
        f"`python benchmarks/pretrain_forecast.py` on `{Path(args.out_dir).relative_to(REPO)}/val.csv`, cycle from step "
        f"{start:,} (`{Path(args.config).relative_to(REPO)}`), {len(points)} validations up to step {now_step:,}.",
        "",
        f"- Held-out xTB force MAE now: **{now:.3f} eV/Å** (median of the last three validations); it fell "
        f"{fall_10k:.3f} eV/Å over the last 10,000 steps.",
        f"- Training cost: {per_hour:,.0f} steps per hour of training wall time with {cores}, measured since step "
        f"{since:,}{world_note}; with K processes a step carries K times the batch, which the step-based fit "
        "below does not credit.",
        f"- Fit over the cycle: f_mae ≈ {a:.3g} · step^(−{b:.3f}); at the cycle's planned end (step "
        f"{int(config['steps']):,}, {(int(config['steps']) - now_step) / per_hour:.0f} hours from now at that rate) it "
        f"gives {a * int(config['steps']) ** (-b):.3f} eV/Å.",
        "",
        "| target (eV/Å) | power-law fit reaches it at step | hours | last 10k steps' rate reaches it at "
        "step | hours |",
        "|---:|---:|---:|---:|---:|",
        *[f"| {t:.2f} | {s:,.0f} | {h:,.0f} | {ls:,.0f} | {lh:,.0f} |" for t, s, h, ls, lh in rows],
        "",
        f"- Saturating fit over the cycle: f_mae ≈ {floor:.3f} (± {floor_se:.3f}) + {sa:.3g} · (step/1e5)^(−{sb:.2f}); "
        f"it levels off at **{floor:.3f} eV/Å** and gives {saturating(int(config['steps']) / 1e5, floor, sa, sb):.3f} "
        f"at the cycle's planned end. Residual standard deviation: {resid_sat:.4f} eV/Å (saturating) against "
        f"{resid_power:.4f} (power law): the {'saturating' if resid_sat < resid_power else 'power'} law fits better"
        + (f", and its floor lies above {', '.join(f'{t:.2f}' for t in (0.10, 0.05) if floor - 2 * floor_se > t)} "
           "eV/Å: continued as it is, this cycle does not reach "
           f"{'that target' if sum(floor - 2 * floor_se > t for t in (0.10, 0.05)) == 1 else 'these targets'}."
           if floor - 2 * floor_se > 0.05 else "."),
        "",
        "All extrapolate a cycle whose learning rate still decays (to 1e-5 at the config's last step), so the "
        f"figures are an order of magnitude. Hours are wall-clock hours at the measured rate, with {cores}; a lent "
        "GPU is the way to the target.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.report).write_text(text)
    print(text)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(steps, values, ".", label="held-out xTB force MAE (val.csv)")
    grid = np.geomspace(steps[0], max(r[1] for r in rows if np.isfinite(r[1])) * 1.1, 200)
    ax.loglog(grid, a * grid ** (-b), "-", label=f"fit a·step^(−{b:.2f})")
    ax.loglog(grid, saturating(grid / 1e5, floor, sa, sb), "--", label=f"saturating fit, floor {floor:.3f}")
    for target, step, *_ in rows:
        ax.axhline(target, color="grey", ls=":", lw=1)
        ax.annotate(f"{target:.2f} at step {step:,.0f}", (step, target), fontsize=8, ha="right", va="bottom")
    ax.set_xlabel("pretraining step")
    ax.set_ylabel("force MAE (eV/Å)")
    ax.set_title("Pretraining: measured and extrapolated")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.report).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
