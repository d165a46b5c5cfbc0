"""Relax-then-predict throughput on a GPU: mftcalc's batched relaxation against the per-structure ASE loop and
torch-sim's batched FIRE (section of ``gpu_session.py``; also runs alone).

Usage: ``python benchmarks/gpu_relax.py [--device cuda] [--dry-run] [--out FILE]``. Workload: the 8 bundled example
molecules (``mftcalc/examples/molecules.extxyz``, 6-12 atoms, QM9-like) replicated, each copy rattled by 0.05 Å with
its own seed; model ``models/mft_gap.pt`` (force field + HOMO-LUMO gap); fmax 0.05 eV/Å, at most 300 steps; every
path relaxes, then predicts the gap at the minimum. Each batched path first runs a probe of 32 molecules, then a
timed run sized to take about ``--seconds`` (at most ``--n`` molecules); the ASE loop relaxes a few molecules one at
a time with ``MFTCalculator`` (the reference of the speed-up column). torch-sim's FIRE runs when ``torch_sim``
imports, through a small ``ModelInterface`` adapter around the same model, then mftcalc predicts the gap.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "mft_gap.pt"
FMAX, STEPS = 0.05, 300


def molecules(n: int) -> list:
    """``n`` rattled copies of the bundled example molecules (ase.Atoms), cycling through the 8 of them."""
    from ase.io import read

    from mftcalc.workflows.screening import example_path

    base = read(str(example_path("molecules.extxyz")), ":")
    out = []
    for k in range(n):
        atoms = base[k % len(base)].copy()
        atoms.positions += np.random.default_rng(k).normal(0.0, 0.05, atoms.positions.shape)
        out.append(atoms)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _row(path: str, n: int, wall: float, converged: List[bool], steps: List[int], note: str = "") -> Dict[str, Any]:
    return {"path": path, "n": n, "wall": wall, "rate": n / wall, "converged": float(np.mean(converged)),
            "steps": float(np.mean(steps)) if steps else None, "note": note}


def mftcalc_path(handle: Any, optimizer: str, n_max: int, seconds: float, device: str,
                 device_step: Any = "auto") -> Dict[str, Any]:
    """mftcalc.relax with ``optimizer`` and ``device_step`` (probe of 32, then a run sized to ``seconds``)."""
    from mftcalc.relaxation.api import relax

    def run(structures: list) -> tuple:
        _sync(device)
        start = time.perf_counter()
        results = relax(structures, handle, fmax=FMAX, steps=STEPS, optimizer=optimizer, device_step=device_step)
        _sync(device)
        return time.perf_counter() - start, results
    probe_wall, _ = run(molecules(min(32, n_max)))
    n = int(min(n_max, max(32, 32 / probe_wall * seconds)))
    wall, results = run(molecules(n))
    where = {True: "steps on the device", False: "steps on the host", "auto": "device_step auto"}[device_step]
    return _row(f"mftcalc relax, optimizer={optimizer!r}, {where} (batched)", n, wall, [r.converged for r in results],
                [r.steps for r in results], f"probe: 32 in {probe_wall:.1f} s")


def ase_loop(n: int, device: str) -> Dict[str, Any]:
    """ASE FIRE with MFTCalculator, one molecule at a time, then the gap from the calculator."""
    from ase.optimize import FIRE

    from mftcalc.calculators import MFTCalculator

    calculator = MFTCalculator(str(MODEL), device=device)
    name = calculator.handle.property_names[0]
    converged, steps = [], []
    warm = molecules(1)[0]
    warm.calc = calculator
    warm.get_forces()
    start = time.perf_counter()
    for atoms in molecules(n):
        atoms.calc = calculator
        opt = FIRE(atoms, logfile=None)
        converged.append(bool(opt.run(fmax=FMAX, steps=STEPS)))
        steps.append(opt.nsteps)
        atoms.calc.get_property(name, atoms)
    _sync(device)
    return _row("ASE FIRE + MFTCalculator, one molecule at a time", n, time.perf_counter() - start, converged, steps)


def torch_sim_path(handle: Any, n: int, device: str) -> Dict[str, Any]:
    """torch-sim's batched FIRE over the same model (adapter below), then mftcalc's batched prediction."""
    import torch_sim as ts

    from mftcalc.calculators.predict import predict

    model = _torch_sim_model(handle, molecules(1)[0])
    fire = ts.Optimizer.fire if hasattr(ts, "Optimizer") else ts.optimizers.fire   # torch-sim >= 0.5 / 0.3
    structures = molecules(n)
    _sync(device)
    start = time.perf_counter()
    state = ts.optimize(system=structures, model=model, optimizer=fire, max_steps=STEPS,
                        convergence_fn=ts.generate_force_convergence_fn(force_tol=FMAX, include_cell_forces=False))
    relaxed = state.to_atoms()
    predict(relaxed, handle)
    _sync(device)
    wall = time.perf_counter() - start
    forces = model(state)["forces"].detach()
    fmax = torch.zeros(state.n_systems, dtype=forces.dtype, device=forces.device).index_reduce_(
        0, state.system_idx, forces.norm(dim=1), "amax")
    version = getattr(ts, "__version__", "")
    return _row(f"torch-sim {version} batched FIRE + mftcalc predict", n, wall, (fmax < FMAX).tolist(), [],
                "steps not reported by ts.optimize")


def _torch_sim_model(handle: Any, example: Any) -> Any:
    """A torch-sim ``ModelInterface`` around mftcalc's model: energy [B] eV and forces [N, 3] eV/Å, no stress."""
    from torch_sim.models.interface import ModelInterface

    from mftcalc.data.structure import Structure

    dataset = handle.dataset_index(Structure.from_ase(example))

    class MFTTorchSim(ModelInterface):
        def __init__(self) -> None:
            super().__init__()
            self._device, self._dtype = handle.device, torch.float64
            self._compute_stress, self._compute_forces = False, True

        def forward(self, state: Any, **kwargs: Any) -> Dict[str, torch.Tensor]:
            system = state.system_idx
            n_systems = int(system.max()) + 1
            pbc = torch.as_tensor(state.pbc, device=system.device).bool()  # one bool (0.3), [3] or [B, 3]
            pbc = (pbc.reshape(1).expand(3) if pbc.numel() == 1 else pbc).reshape(-1, 3).expand(n_systems, 3)
            batch = {"positions": state.positions.to(torch.float64), "numbers": state.atomic_numbers.long(),
                     "batch": system, "cell": state.cell.transpose(1, 2).to(handle.dtype), "pbc": pbc,
                     "n_atoms": torch.bincount(system, minlength=n_systems),
                     "dataset": torch.full((n_systems,), dataset, dtype=torch.long, device=system.device)}
            out = handle.module(batch, compute_forces=True, compute_stress=False, compute_properties=False,
                                features=False)
            return {"energy": out["energy"].detach().to(self._dtype), "forces": out["forces"].detach().to(self._dtype)}
    return MFTTorchSim()


def run_section(device: str, dry_run: bool, n_max: int = 4096, seconds: float = 8.0,
                optimizers: Optional[List[str]] = None) -> List[str]:
    """The Markdown lines of the relax-then-predict section: each optimizer with its steps on the device (the
    on-device FIRE/BFGS of :data:`mftcalc.relaxation.optimizers.ON_DEVICE`, where it has one) and on the host."""
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.relaxation.optimizers import ON_DEVICE, OPTIMIZERS

    if dry_run:
        n_max, seconds = 32, 1.0
    handle = ModelHandle.load(str(MODEL), device=device)
    names = optimizers or [name for name in OPTIMIZERS if name != "bfgs-internal"]
    rows: List[Dict[str, Any]] = []
    for name in names:
        for device_step in ((True, False) if name in ON_DEVICE else (False,)):
            print(f"  relax: mftcalc optimizer {name}, device_step={device_step} ...", flush=True)
            try:
                rows.append(mftcalc_path(handle, name, n_max, seconds, device, device_step))
            except Exception as exc:  # the row says why
                rows.append({"path": f"mftcalc relax, optimizer={name!r}, device_step={device_step}",
                             "note": f"failed: {type(exc).__name__}: {exc}"})
    print("  relax: ASE loop ...", flush=True)
    try:
        rows.append(ase_loop(4 if dry_run else 24, device))
    except Exception as exc:
        rows.append({"path": "ASE FIRE + MFTCalculator", "note": f"failed: {type(exc).__name__}: {exc}"})
    print("  relax: torch-sim ...", flush=True)
    try:
        import torch_sim  # noqa: F401
    except Exception as exc:
        rows.append({"path": "torch-sim batched FIRE", "note": f"not installed ({type(exc).__name__})"})
    else:
        try:
            rows.append(torch_sim_path(handle, 32 if dry_run else min(n_max, 1024), device))
        except Exception as exc:
            rows.append({"path": "torch-sim batched FIRE", "note": f"failed: {type(exc).__name__}: {exc}"})
    loop = next((r for r in rows if r["path"].startswith("ASE") and "rate" in r), None)
    lines = ["| path | molecules | wall s | molecules/s | converged | mean steps | vs ASE loop | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "rate" not in r:
            lines.append(f"| {r['path']} | – | – | – | – | – | – | {str(r['note']).splitlines()[0][:160]} |")
            continue
        ratio = f"{r['rate'] / loop['rate']:.1f}x" if loop else "–"
        steps = "–" if r["steps"] is None else f"{r['steps']:.1f}"
        lines.append(f"| {r['path']} | {r['n']} | {r['wall']:.2f} | {r['rate']:,.1f} | {100 * r['converged']:.0f}% | "
                     f"{steps} | {ratio} | {r['note']} |")
    lines += ["", f"- model `models/mft_gap.pt` on {device} ({handle.dtype}); molecules: the 8 bundled examples "
              "(6-12 atoms) replicated, each copy rattled by 0.05 Å with its own seed; fmax 0.05 eV/Å, at most 300 "
              "steps; every path ends with the gap predicted at the minimum (inside the timed wall)."]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="a few molecules (CPU is fine)")
    parser.add_argument("--n", type=int, default=4096, help="most molecules of one batched path")
    parser.add_argument("--seconds", type=float, default=8.0, help="target wall of one batched path's timed run")
    parser.add_argument("--optimizers", default=None, help="comma list (default: every registered one but "
                        "bfgs-internal)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    names = args.optimizers.split(",") if args.optimizers else None
    text = "\n".join(["# Relax-then-predict on a GPU", ""] + run_section(args.device, args.dry_run, args.n,
                                                                        args.seconds, names))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
