"""Force-training throughput on a GPU: ``mftcalc train`` end to end, and one training step of mftcalc beside
deepmd-kit's DPA3 with the same hyperparameters on the same GPU (section of ``gpu_session.py``; also runs alone).

Usage: ``python benchmarks/gpu_training.py [--device cuda] [--dry-run] [--out FILE]``.

- ``mftcalc train`` (the CLI, a subprocess): a small config (preset ``cpu``, 32 molecules per step, one dataset:
  the 8 bundled example molecules replicated and rattled, labelled with ``models/mft_gap.pt``'s energies and forces)
  on the device; steps/s from its ``train.csv`` (``wall_s`` sums the step times), after the first logged steps
  (warm-up and compilation excluded).
- One training step (forward with forces kept differentiable, loss MSE(E/N) + MSE(F), backward, Adam), as
  ``benchmarks/training.py`` times it, on 4 fixed batches of 32 equal-size molecules: mftcalc's model of the
  ``cpu`` and ``dpa3-small`` presets, and deepmd-kit's DPA3 of the same sizes (sel 120/40, which truncates nothing
  for these molecules) in a subprocess when ``deepmd`` imports (else "not installed").
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH = 32


def _structures(n: int) -> list:
    """mftcalc Structures of ``n`` rattled copies of the bundled molecules (gpu_relax.molecules)."""
    from gpu_relax import molecules

    from mftcalc.data.structure import Structure
    return [Structure.from_ase(a) for a in molecules(n)]


def train_cli(device: str, dry_run: bool, work: Path) -> Dict[str, Any]:
    """Run ``mftcalc train`` on a small labelled set; steps/s over the logged steps after the first log row."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    from mftcalc.calculators.predict import predict

    steps, log_every = (6, 2) if dry_run else (80, 10)
    structures = _structures(64 if dry_run else 1024)
    labels = predict(structures, str(REPO / "models" / "mft_gap.pt"), forces=True, device=device)
    frames = []
    for s, y in zip(structures, labels):
        atoms = s.to_ase()
        atoms.calc = SinglePointCalculator(atoms, energy=y["energy"], forces=y["forces"])
        frames.append(atoms)
    write(str(work / "train.extxyz"), frames)
    config = {"preset": "cpu", "steps": steps, "lr0": 1e-3, "log_every": log_every, "val_every": 10**9,
              "checkpoint_every": 10**9, "device": device, "out_dir": str(work / "run"),
              "state_path": str(work / "run" / "state.pt"), "model_out": str(work / "model.pt"), "replay": False,
              "progress": False, "datasets": [{"name": "bench", "path": str(work / "train.extxyz"),
                                               "batch_size": BATCH, "max_val": 8}]}
    (work / "train.yaml").write_text(json.dumps(config))  # JSON is YAML
    command = [sys.executable, "-c", "from mftcalc.cli import main; raise SystemExit(main())", "train",
               str(work / "train.yaml"), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        return {"note": f"failed (exit {done.returncode}): {tail[:200]}"}
    with open(work / "run" / "train.csv", newline="") as fh:
        rows = [(float(r["step"]), float(r["wall_s"])) for r in csv.DictReader(fh)]
    (s0, w0), (s1, w1) = rows[0], rows[-1]
    rate = (s1 - s0) / (w1 - w0)
    return {"steps_per_s": rate, "mols": rate * BATCH,
            "note": f"timed between the log rows at steps {int(s0)} and {int(s1)} of {steps} (before: warm-up)"}


def equal_size_batches(dry_run: bool) -> List[list]:
    """4 batches of ``BATCH`` molecules, each of one bundled molecule (deepmd-kit's calls need one atom count)."""
    per = 4 if dry_run else BATCH
    pool = _structures(8 * per)   # copy k is molecule k % 8
    return [[pool[8 * j + m] for j in range(per)] for m in (0, 1, 2, 5)]   # 9, 12, 8 and 9 atoms


def ours_step(preset: str, batches: List[list], device: str, steps: int) -> Dict[str, Any]:
    """Molecules/s of one training step of mftcalc's model (``benchmarks/training.py``'s step) on ``device``."""
    from training import train_step  # benchmarks/training.py

    from mftcalc.data import collate

    model, params = C.build_ours(preset)
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    collated = []
    for group in batches:
        b = collate(group, torch.float32, device=device)
        b["target_energy"] = torch.randn(len(group), generator=gen).to(device)
        b["target_forces"] = (0.1 * torch.randn(tuple(b["positions"].shape), generator=gen)).to(device)
        collated.append(b)
    counter = [0]

    def step() -> None:
        train_step(model, opt, collated[counter[0] % len(collated)])
        counter[0] += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    timing = C.time_call(step, warmup=3, repeats=steps, max_seconds=30.0)
    size = len(batches[0])
    return {"params": params, "mols": size / timing.median, "steps_per_s": 1.0 / timing.median}


def deepmd_step(preset: str, batches: List[list], device: str, steps: int, work: Path) -> Dict[str, Any]:
    """deepmd-kit DPA3 with ``preset``'s sizes, sel 120/40, in a subprocess (``--deepmd-worker``)."""
    import importlib.util
    if importlib.util.find_spec("deepmd") is None:
        return {"note": "not installed"}
    npz = work / f"frames_{preset}.npz"
    C.write_frames(npz, batches)
    spec = {"model": C.deepmd_spec(preset, 120, 40), "npz": str(npz), "device": device, "steps": steps}
    (work / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, __file__, "--deepmd-worker", str(work / "spec.json")],
                          capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        return {"note": f"failed (exit {done.returncode}): {tail[:200]}"}
    return json.loads(lines[-1])


def deepmd_worker(spec_path: str) -> None:
    """Time deepmd-kit DPA3 training steps on the spec's device; print one JSON line."""
    import numpy as np
    from _peer_deepmd import dpa3_config

    import deepmd
    from deepmd.pt.model.model import get_model

    spec = json.loads(Path(spec_path).read_text())
    device = spec["device"]
    model = get_model(dpa3_config(spec["model"])).to(device).train()
    to_type = np.zeros(119, dtype=np.int64)
    for z, symbol in C.SYMBOLS.items():
        to_type[z] = C.TYPE_MAP.index(symbol)
    calls = []
    gen = torch.Generator().manual_seed(0)
    for g in C.read_frames(spec["npz"]):
        nf, nat = g["numbers"].shape
        calls.append((torch.tensor(g["coords"].reshape(nf, nat * 3), dtype=torch.float64, device=device),
                      torch.tensor(to_type[g["numbers"]], device=device), nf, nat,
                      torch.randn(nf, 1, generator=gen, dtype=torch.float64).to(device),
                      (0.1 * torch.randn(nf, nat, 3, generator=gen, dtype=torch.float64)).to(device)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    counter = [0]

    def step() -> None:
        coord, atype, nf, nat, e_ref, f_ref = calls[counter[0] % len(calls)]
        counter[0] += 1
        opt.zero_grad(set_to_none=True)
        out = model(coord, atype, box=None)
        loss = torch.mean((out["energy"].view(nf, 1) / nat - e_ref / nat) ** 2) + \
            torch.mean((out["force"].view(nf, nat, 3) - f_ref) ** 2)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    timing = C.time_call(step, warmup=3, repeats=spec["steps"], max_seconds=30.0)
    print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "mols": calls[0][2] / timing.median,
                      "steps_per_s": 1.0 / timing.median, "version": deepmd.__version__}), flush=True)


def run_section(device: str, dry_run: bool) -> List[str]:
    """The Markdown lines of the training section."""
    steps = 2 if dry_run else 20
    lines = ["| what | config | params | steps/s | molecules/s | note |", "|---|---|---:|---:|---:|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("  training: mftcalc train (CLI) ...", flush=True)
        try:
            r = train_cli(device, dry_run, work)
        except Exception as exc:
            r = {"note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
        lines.append(_line("mftcalc train (CLI, end to end)", f"cpu {C.size_text('cpu')}; {BATCH} molecules/step",
                           r))
        batches = equal_size_batches(dry_run)
        for preset in ("cpu", "dpa3-small"):
            config = f"{preset} {C.size_text(preset)}; {len(batches[0])} molecules/step"
            print(f"  training: one step, {preset} ...", flush=True)
            for name, run in (("mftcalc, one training step", lambda: ours_step(preset, batches, device, steps)),
                              ("deepmd-kit DPA3 (sel 120/40), one training step",
                               lambda: deepmd_step(preset, batches, device, steps, work))):
                try:
                    r = run()
                except Exception as exc:
                    r = {"note": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                lines.append(_line(name, config, r))
    lines += ["", f"- device {device}; float32 models; the step is `benchmarks/training.py`'s (forces in the loss, "
              "double backward, Adam); batches collated on the device before timing; median of timed steps after 3 "
              "warm-up steps.",
              "- deepmd-kit: DPA3 with the same sizes, cutoffs and head widths (`benchmarks/_peer_deepmd.py`'s "
              "config), `use_dynamic_sel`, no box, frames of one call share the atom count."]
    return lines


def _line(name: str, config: str, r: Dict[str, Any]) -> str:
    params = f"{r['params']:,}" if isinstance(r.get("params"), int) else "–"
    if "mols" not in r:
        return f"| {name} | {config} | {params} | – | – | {r.get('note', '')} |"
    note = r.get("note", "") + (f"deepmd-kit {r['version']}" if "version" in r else "")
    return f"| {name} | {config} | {params} | {r['steps_per_s']:.2f} | {r['mols']:,.0f} | {note} |"


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--deepmd-worker":
        deepmd_worker(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="a few steps on tiny batches (CPU is fine)")
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    text = "\n".join(["# Training throughput on a GPU", ""] + run_section(args.device, args.dry_run))
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
