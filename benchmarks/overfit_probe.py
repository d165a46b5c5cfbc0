"""Can the backbone fit the forces of a few xTB conformers, and how fast? (issue 15: why the prior levels off)

    OMP_NUM_THREADS=1 python benchmarks/overfit_probe.py            # every arm in ARMS, one after another, one core

The pretraining's held-out xTB force MAE levels off near 0.15 eV/Å with training error equal to validation error.
This probe is the overfit-a-batch sanity check: one fixed full batch of ``--n`` conformers from
``data/xtb/chunk_00000.extxyz.xz`` (seeded draw), forces only (mean squared error per component), plain Adam at a
constant ``--lr`` for ``--steps`` steps, float32. Arms:

- ``prior``: the shipped ``models/pretrained.pt``;
- ``prior_renorm``: the same model reparametrised to DPA3's input normalisation (``edge_std = h2_std = 0.3``,
  deepmd-kit's ``fix_stat_std``): the edge-embedding weights scale by 0.3 and each layer's ``node_sym`` weights by
  0.3² (its input is quadratic in h2), so the predictions are unchanged (checked, printed) but Adam's steps are
  relatively larger on those layers;
- ``scratch``: a fresh ``cpu``-preset model (as the prior's architecture, ``edge_std = h2_std = 1``);
- ``scratch_norm``: a fresh ``cpu``-preset model with ``edge_std = h2_std = 0.3``;
- ``scratch_bessel``: a fresh ``cpu``-preset model whose edge embedding reads 8 Bessel functions
  ``sqrt(2/r_c) sin(nπr/r_c)/r`` times the switch (MACE's and NequIP's radial basis) instead of DPA3's single
  ``s = sw(r)/r``: does a richer radial input let the backbone fit faster?
- ``scratch_rich``: ``scratch_norm`` with the Bessel radial input and Legendre polynomials P1..P4 of cos θ as the
  angle embedding's input (DPA3: cos θ alone): do richer inputs on both ends close the gap to MACE?
- ``scratch_wide`` and ``scratch_deep``: ``scratch_norm`` with twice the widths (128/64/32, DPA3's paper widths)
  or twice the layers (6): does a larger model trained from scratch fit faster per step, and per CPU-second?
- ``mace``: a fresh MACE (mace-torch in its own venv, ``benchmarks/peers/README.md``; ``MACE_MODEL`` below: 64
  scalar channels, 2 interactions, correlation 3, 8 Bessel functions, r_max 6 Å like our edge cutoff), the same
  batch, loss and optimiser: is this slow fit our architecture's, or what any MLIP does here? Skipped, and said so,
  without the venv.

Writes ``benchmarks/results/overfit_probe.md`` (force RMSE/MAE every ``--every`` steps per arm) and ``.png``.
"""
from __future__ import annotations

import argparse
import math
import dataclasses
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import _common as C  # noqa: E402
from mftcalc.data.batch import collate  # noqa: E402
from mftcalc.data.io import read_structures  # noqa: E402
from mftcalc.data.structure import Structure  # noqa: E402
from mftcalc.model.backbone import Backbone  # noqa: E402
from mftcalc.model.checkpoint import load_model  # noqa: E402
from mftcalc.model.config import ModelConfig, backbone_preset, default_forcefield_head  # noqa: E402
from mftcalc.model.mft_model import MFTModel  # noqa: E402

ARMS = ("prior", "prior_renorm", "scratch", "scratch_norm", "scratch_bessel", "scratch_rich", "scratch_wide",
        "scratch_deep", "mace")
NORMALISED = {"edge_std": 0.3, "h2_std": 0.3}
LARGER = {"scratch_wide": dict(NORMALISED, n_dim=128, e_dim=64, a_dim=32), "scratch_deep": dict(NORMALISED, n_layers=6)}
MACE_MODEL = {"channels": 64, "max_L": 0, "num_interactions": 2, "correlation": 3, "max_ell": 3, "r_max": 6.0}
N_BESSEL = 8


def renormalised(model: MFTModel, std: float) -> MFTModel:
    """A copy of ``model`` (built with ``edge_std = h2_std = 1``) with ``edge_std = h2_std = std`` and the weights
    rescaled so that its predictions are the same: the edge input s/r and h2 are divided by ``std``; the edge
    embedding is linear in s/r, and the symmetrised term feeding ``node_sym`` is quadratic in h2."""
    bb = model.config.backbone
    if bb.edge_std != 1.0 or bb.h2_std != 1.0:
        raise ValueError(f"expected a model with edge_std = h2_std = 1, got {bb.edge_std}, {bb.h2_std}")
    config = ModelConfig(backbone=dataclasses.replace(bb, edge_std=std, h2_std=std), heads=dict(model.config.heads),
                         datasets=list(model.config.datasets))
    new = MFTModel(config).to(next(model.parameters()).dtype)
    state = model.state_dict()
    state["backbone.edge_embedding.weight"] = state["backbone.edge_embedding.weight"] * std
    for key in [k for k in state if k.endswith(".node_sym.weight")]:
        state[key] = state[key] * std * std
    new.load_state_dict(state)
    return new


class BesselEdgeBackbone(Backbone):
    """The backbone with ``N_BESSEL`` Bessel functions (times the switch) as the edge embedding's radial input."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.edge_embedding = torch.nn.Linear(N_BESSEL, cfg.e_dim)

    def edge_input(self, dist: torch.Tensor, sw: torch.Tensor) -> torch.Tensor:
        n = torch.arange(1, N_BESSEL + 1, dtype=dist.dtype, device=dist.device)
        r = dist.unsqueeze(1)
        return math.sqrt(2.0 / self.e_rcut) * torch.sin(n * math.pi * r / self.e_rcut) / r * sw.unsqueeze(1)


class RichInputBackbone(BesselEdgeBackbone):
    """:class:`BesselEdgeBackbone` whose angle embedding reads Legendre polynomials P1..P4 of cos θ."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.angle_embedding = torch.nn.Linear(4, cfg.a_dim, bias=False)

    def angle_input(self, cos: torch.Tensor) -> torch.Tensor:
        c2 = cos * cos
        return torch.stack([cos, 1.5 * c2 - 0.5, cos * (2.5 * c2 - 1.5), (35.0 * c2 * c2 - 30.0 * c2 + 3.0) / 8.0], 1)


NOTES: List[str] = []      # lines for the report (the reparametrisation check)


def build(arm: str, dtype: torch.dtype, check: List[Structure]) -> MFTModel:
    """The arm's model in train mode (see the module docstring)."""
    if arm.startswith("prior"):
        model = load_model(ROOT / "models" / "pretrained.pt", dtype)
        if arm == "prior_renorm":
            new = renormalised(model, 0.3).eval()
            batch = collate(check, dtype=dtype, dataset=0, properties=[])
            old_p = model(batch, compute_stress=False, compute_properties=False)
            new_p = new(batch, compute_stress=False, compute_properties=False)
            NOTES.append(f"prior_renorm against prior before training (3 conformers, float32): max |dE| "
                         f"{(old_p['energy'] - new_p['energy']).abs().max():.1e} eV, max |dF| "
                         f"{(old_p['forces'] - new_p['forces']).abs().max():.1e} eV/Å.")
            print(NOTES[-1], flush=True)
            model = new
    else:
        torch.manual_seed(0)
        extra = NORMALISED if arm in ("scratch_norm", "scratch_rich") else LARGER.get(arm, {})
        config = ModelConfig(backbone=backbone_preset("cpu", **extra),
                             heads={"forcefield": default_forcefield_head(1, (128, 128))}, datasets=["xtb"])
        model = MFTModel(config)
        if arm in ("scratch_bessel", "scratch_rich"):
            model.backbone = (BesselEdgeBackbone if arm == "scratch_bessel" else RichInputBackbone)(config.backbone)
        model = model.to(dtype)
    return model.train()


Row = Tuple[int, float, float, float]      # (step, force RMSE eV/Å, force MAE eV/Å, seconds of fitting so far)


def run_mace(structures: List[Structure], steps: int, lr: float, every: int, seconds: float) -> List[Row]:
    """The ``mace`` arm, run by the MACE venv's python (``_peer_mace.overfit``); [] when it is not installed."""
    job = {"structures": [{"numbers": s.numbers.tolist(), "positions": s.positions.tolist(),
                           "forces": s.forces.tolist()} for s in structures], "steps": steps, "lr": lr, "every": every,
           "seconds": seconds}
    result = C.run_peer("mace", {"model": MACE_MODEL, "overfit": job, "threads": 1}, timeout=7200)
    if result["status"] != "ok":
        NOTES.append(f"mace arm skipped: {result['error']}.")
        print(NOTES[-1], flush=True)
        return []
    NOTES.append(f"mace: {result['config']}, {result['params']:,} parameters (the `cpu` preset with its force-field "
                 f"head: {sum(p.numel() for p in build('scratch', torch.float32, []).parameters()):,}).")
    return [tuple(r) for r in result["rows"]]


def run_arm(arm: str, structures: List[Structure], steps: int, lr: float, every: int, seconds: float) -> List[Row]:
    """[(step, force RMSE, force MAE, seconds)] (eV/Å) on the fixed batch, every ``every`` steps (before that step's
    update), up to ``steps`` steps or, when ``seconds`` > 0, until that much fitting time has passed (then a last row
    at the step reached)."""
    if arm == "mace":
        return run_mace(structures, steps, lr, every, seconds)
    dtype = torch.float32
    model = build(arm, dtype, structures[:3])
    batch = collate(structures, dtype=dtype, dataset=0, properties=[])
    target = torch.tensor(np.concatenate([s.forces for s in structures]), dtype=dtype)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    rows = []
    start = time.perf_counter()
    for step in range(steps + 1):
        pred = model(batch, compute_forces=True, compute_stress=False, compute_properties=False)
        diff = pred["forces"] - target
        loss = diff.pow(2).mean()
        elapsed = time.perf_counter() - start
        over = 0 < seconds <= elapsed
        if step % every == 0 or step == steps or over:
            rows.append((step, float(loss.detach().sqrt()), float(diff.detach().abs().mean()), elapsed))
            print(f"{arm} step {step}: force RMSE {rows[-1][1]:.4f}, MAE {rows[-1][2]:.4f} eV/Å "
                  f"({elapsed:.0f} s)", flush=True)
        if step == steps or over:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="conformers in the fixed batch")
    parser.add_argument("--steps", type=int, default=800, help="Adam steps per arm")
    parser.add_argument("--lr", type=float, default=1e-3, help="constant learning rate")
    parser.add_argument("--every", type=int, default=100, help="report every this many steps")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="fitting time per arm (then --steps is only a cap): compares arms at equal CPU time")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run, in order")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "overfit_probe"),
                        help="output stem (.md and .png)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pool = read_structures(ROOT / "data" / "xtb" / "chunk_00000.extxyz.xz")
    pick = np.random.default_rng(1).choice(len(pool), args.n, replace=False)
    structures = [pool[i] for i in pick]
    forces = np.concatenate([s.forces for s in structures])
    results: Dict[str, List[Row]] = {arm: run_arm(arm, structures, args.steps, args.lr, args.every,
                                                                                 60.0 * args.minutes)
                                                          for arm in args.arms}
    results = {arm: rows for arm, rows in results.items() if rows}
    out = Path(args.out)
    steps = sorted({r[0] for rows in results.values() for r in rows})
    at = {arm: {r[0]: r for r in rows} for arm, rows in results.items()}
    more_args = f" --minutes {args.minutes:g}" if args.minutes else ""
    default_out = ROOT / "benchmarks" / "results" / "overfit_probe"
    more_args += "" if out.resolve() == default_out else f" --out {args.out}"
    lines = [
        "# Overfit probe: fitting the forces of a few xTB conformers (issue 15)", "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/overfit_probe.py --n {args.n} --steps {args.steps} --lr "
        f"{args.lr:g} --every {args.every} --arms {' '.join(args.arms)}{more_args}` (one core, beside two other training processes).", "",
        f"One fixed batch of {args.n} conformers ({sum(s.n_atoms for s in structures)} atoms, "
        f"{forces.size} force components; label force RMS {np.sqrt((forces ** 2).mean()):.3f} eV/Å, kinds "
        f"{', '.join(sorted({str(s.info.get('kind')) for s in structures}))}), forces only, Adam at a constant "
        f"{args.lr:g}, float32. Force RMSE in eV/Å on that batch (MAE in brackets) before the step's update.", "",
        "| step | " + " | ".join(results) + " |", "|---:|" + "---:|" * len(results)]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{at[a][step][1]:.4f} ({at[a][step][2]:.4f})" if step in at[a]
                                                 else "" for a in results) + " |")
    lines += ["", "| arm | steps | seconds of fitting | seconds per step | last force RMSE (MAE) |", "|---|---:|---:|---:|---:|"]
    for arm, rows in results.items():
        step, rmse, mae, sec = rows[-1]
        lines.append(f"| {arm} | {step} | {sec:.0f} | {sec / max(step, 1):.3f} | {rmse:.4f} ({mae:.4f}) |")
    lines += ["", "Arms: `prior` the shipped `models/pretrained.pt`; `prior_renorm` the same weights reparametrised "
              "to `edge_std = h2_std = 0.3` (same predictions); `scratch` a fresh `cpu`-preset model; "
              "`scratch_norm` a fresh one with `edge_std = h2_std = 0.3` (DPA3's `fix_stat_std`); `scratch_bessel` a fresh "
              f"one whose edge embedding reads {N_BESSEL} Bessel functions times the switch instead of s = sw(r)/r; "
              "`scratch_rich` scratch_norm with that Bessel input and Legendre P1..P4 of cos θ as the angle input; "
              "`scratch_wide`/`scratch_deep` scratch_norm with widths 128/64/32 or 6 layers; "
              "`mace` a fresh MACE (mace-torch, own venv).",
              *NOTES, f"Plot: `{out.name}.png`."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for arm, rows in results.items():
        axes[0].plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=arm)
        axes[1].plot([r[3] for r in rows], [r[1] for r in rows], marker="o", label=arm)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("Adam step (full batch)")
    axes[1].set_xlabel("seconds of fitting (one core)")
    axes[0].set_ylabel("force RMSE on the batch (eV/Å)")
    fig.suptitle(f"Overfit probe: {args.n} xTB conformers, lr {args.lr:g}")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.md')} and .png")


if __name__ == "__main__":
    main()
