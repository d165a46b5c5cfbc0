"""On-device batched optimisers (fire-torch, bfgs-torch) against the host path (ASE's objects, one per structure) on
CPU: cost of the optimiser's part of a relaxation step, and whole relax-then-predict runs.

Usage: OMP_NUM_THREADS=1 python benchmarks/device_optimizers.py [--model models/mft_gap.pt] [--sizes 8,64,256]
       [--cells 8,64] [--steps 10] [--whole-steps 40] [--repeats 2] [--out benchmarks/results/device_optimizers.md]

Workloads: QM9 molecules rattled by 0.05 Å (``--sizes``; 18 atoms on average), and strained, rattled Si diamond
crystals of 16 atoms with a cell filter (``--cells``). Both paths run the engine (``relax_stream``, one in-flight
batch holding every structure).

- step: every structure takes ``--steps`` steps (fmax 0: none leaves early); "step ms" is the CPU time of this
  process between the end of one model call and the start of the next (results to the optimiser, fmax, emits, the
  step, the next batch's inputs), averaged over steps 3..; "model ms" the forward + backward pass.
- whole: ``mftcalc.relax`` (fmax 0.05 eV/Å, at most ``--whole-steps`` steps) then the property prediction, wall
  and CPU seconds.

The two paths alternate (host, device, host, device, ...) ``--repeats`` times per case so that drift in the load of
the shared machine (another job on the other core) falls on both; the load average is printed per case.
"max |Δx|" compares the device path's final positions with the host path's.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch


RULE = """## The rule of `device_step="auto"` (`mftcalc.relaxation.optimizers.step_path`)

On CPU, FIRE (fixed cell and both cell filters) always steps on the device: its step costs less than the host path's
in every row above. BFGS steps on the device unless the padding factor W = B · d_max³ / Σ d³ of the structures
(d = 3 × rows per structure; the cost of the padded Hessian algebra relative to per-structure algebra) exceeds
`CPU_BFGS_MAX_PADDING` = 4: below it the device step is cheaper, with one large structure among QM9 molecules
(W ≈ 20) it costs several times the host step. On CUDA both always step on the device; not measured here (no GPU in
this session): the host path there copies forces to the host and positions back every step, per structure work
that the device path does not have. On CPU the optimiser is a few per cent of a step (the model's forward and
backward pass dominates), so whole relaxations change by about as much."""


class TimedModule:
    """The model, recording the CPU time at the start and end of each call."""

    def __init__(self, module: Any) -> None:
        self.module, self.marks = module, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.process_time()
        out = self.module(*args, **kwargs)
        self.marks.append((t0, time.process_time()))
        return out


def step_cost(handle: Any, structures: list, name: str, cell_filter: Any, steps: int) -> tuple:
    """(model ms, step ms, final positions) of ``steps`` steps of every structure with optimiser ``name``."""
    from threadpoolctl import threadpool_limits
    from mftcalc.relaxation.engine import relax_stream
    from mftcalc.relaxation.optimizers import FireParams, make_optimizer

    timed = TimedModule(handle.module)
    original, handle.module = handle.module, timed
    results: Dict[int, Any] = {}
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            relax_stream([(k, s, None) for k, s in enumerate(structures)], results.__setitem__, handle, fmax=0.0,
                         max_steps=steps, fire=FireParams(), cell_filter=cell_filter, max_atoms=10 ** 9,
                         optimizer=make_optimizer(name))
    finally:
        handle.module = original
    marks = timed.marks
    gaps = [marks[i + 1][0] - marks[i][1] for i in range(2, len(marks) - 1)]
    model = [end - start for start, end in marks[2:]]
    return 1e3 * np.mean(model), 1e3 * np.mean(gaps), [results[k].structure.positions for k in range(len(structures))]


def whole_run(handle: Any, structures: list, name: str, cell_filter: Any, steps: int) -> tuple:
    """(wall s, CPU s, mean steps) of ``mftcalc.relax`` with optimiser ``name`` on the host path (device_step=False)
    or its device variant."""
    from mftcalc.relaxation.api import relax
    host = not name.endswith("-torch")
    w0, c0 = time.perf_counter(), time.process_time()
    res = relax(structures, handle, fmax=0.05, steps=steps, optimizer=name, cell_filter=cell_filter,
                device_step=False if host else True)
    return time.perf_counter() - w0, time.process_time() - c0, float(np.mean([r.steps for r in res]))


def workloads(sizes: List[int], cells: List[int], mixed: List[int]) -> Dict[str, tuple]:
    """name -> (structures, cell filter, host optimiser, device optimiser). ``mixed``: numbers of QM9 molecules
    placed 12 Å apart in one structure, which joins 63 molecules (the padding of the device path)."""
    from ase.build import bulk
    from mftcalc.data import Structure
    from mftcalc.data.qm9 import load_qm9
    ds = load_qm9(progress=False)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(ds), max(sizes + [64 + sum(mixed)]), replace=False))
    pool = [s.with_labels(positions=s.positions + rng.normal(scale=0.05, size=s.positions.shape))
            for s in ds.structures(rows, properties=[])]
    crystals = []
    for k in range(max(cells)):
        atoms = bulk("Si", "diamond", a=5.3 + 0.3 * (k % 8) / 7, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=k)
        crystals.append(Structure.from_ase(atoms))
    out: Dict[str, tuple] = {}
    for opt in ("fire", "bfgs"):
        for n in sizes:
            out[f"{opt.upper()}, {n} molecules"] = (pool[:n], None, opt, f"{opt}-torch")
    for opt in ("fire", "bfgs"):                 # padding: one big structure among QM9 molecules
        for k in mixed:
            big = pool[-k:]
            glued = Structure(numbers=np.concatenate([s.numbers for s in big]),
                              positions=np.concatenate([s.positions - s.positions.mean(0) + [12.0 * j, 0.0, 0.0]
                                                        for j, s in enumerate(big)]))
            out[f"{opt.upper()}, 63 molecules + 1 of {glued.n_atoms} atoms"] = (pool[:63] + [glued], None, opt,
                                                                               f"{opt}-torch")
    for opt, filt in (("fire", "unitcell"), ("fire", "frechet"), ("bfgs", "unitcell")):
        for n in cells:
            out[f"{opt.upper()} + {filt}, {n} Si16 cells"] = (crystals[:n], filt, opt, f"{opt}-torch")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/mft_gap.pt")
    parser.add_argument("--sizes", default="8,64,256", help="molecule batch sizes")
    parser.add_argument("--cells", default="8,64", help="crystal batch sizes")
    parser.add_argument("--mixed", default="4,8", help="molecules glued into the one big structure of a mixed batch")
    parser.add_argument("--steps", type=int, default=10, help="steps of the step-cost runs")
    parser.add_argument("--whole-steps", type=int, default=40, help="step limit of the whole runs (0: none)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default="", help="run the cases whose name contains this text")
    parser.add_argument("--out", default="benchmarks/results/device_optimizers.md")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.relaxation.optimizers import padding_factor
    handle = ModelHandle.load(args.model)
    cases = workloads([int(v) for v in args.sizes.split(",")], [int(v) for v in args.cells.split(",")],
                      [int(v) for v in args.mixed.split(",") if v])
    step_rows = ["| case | padding W | path | model ms/step | step ms/step (runs) | step / model | "
                 "device / host step | max \\|Δx\\| Å | load |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    whole_rows = ["| case | path | mean steps | wall s (runs) | CPU s (runs) | device / host wall | load |",
                  "|---|---|---:|---:|---:|---:|---:|"]
    for label, (structures, filt, host, device) in cases.items():
        if args.only not in label:
            continue
        load = os.getloadavg()[0]
        runs: Dict[str, list] = {host: [], device: []}
        for _ in range(args.repeats):
            for name in (host, device):
                runs[name].append(step_cost(handle, structures, name, filt, args.steps))
        host_step = np.mean([r[1] for r in runs[host]])
        for name in (host, device):
            model, step = np.mean([r[0] for r in runs[name]]), np.mean([r[1] for r in runs[name]])
            dx = max(np.abs(a - b).max() for a, b in zip(runs[name][-1][2], runs[host][-1][2]))
            each = ", ".join(f"{r[1]:.2f}" for r in runs[name])
            step_rows.append(f"| {label} | {padding_factor(structures, filt):.1f} | {name} | {model:.1f} | "
                             f"{step:.2f} ({each}) | {100 * step / model:.1f} % | {step / host_step:.2f} | {dx:.1e} | "
                             f"{load:.1f}-{os.getloadavg()[0]:.1f} |")
            print(step_rows[-1], flush=True)
        if not args.whole_steps:
            continue
        load = os.getloadavg()[0]
        whole: Dict[str, list] = {host: [], device: []}
        for _ in range(args.repeats):
            for name in (host, device):
                whole[name].append(whole_run(handle, structures, name, filt, args.whole_steps))
        host_wall = np.mean([r[0] for r in whole[host]])
        for name in (host, device):
            wall = np.mean([r[0] for r in whole[name]])
            walls, cpus = (", ".join(f"{r[i]:.2f}" for r in whole[name]) for i in (0, 1))
            whole_rows.append(f"| {label} | {name} | {whole[name][0][2]:.1f} | {wall:.2f} ({walls}) | "
                              f"{np.mean([r[1] for r in whole[name]]):.2f} ({cpus}) | {wall / host_wall:.3f} | {load:.1f}-{os.getloadavg()[0]:.1f} |")
            print(whole_rows[-1], flush=True)
    command = (f"OMP_NUM_THREADS={torch.get_num_threads()} python benchmarks/device_optimizers.py --model {args.model} "
               f"--sizes {args.sizes} --cells {args.cells} --mixed {args.mixed} --steps {args.steps} "
               f"--whole-steps {args.whole_steps} "
               f"--repeats {args.repeats}" + (f" --only '{args.only}'" if args.only else ""))
    text = (f"# On-device batched optimisers against the host path (CPU)\n\n`{command}`; torch {torch.__version__} "
            f"({torch.get_num_threads()} thread(s)), numpy BLAS 1 thread, {platform.machine()}, {os.cpu_count()} CPUs; "
            "load average (1 min) at the start and end of each case in the last column (another job holds about one "
            "core). Host: ASE's FIRE/BFGS objects (BFGS with mftcalc's Cholesky solve) and cell filters, one per "
            "structure; device: fire-torch / bfgs-torch, all structures in one batched step.\n\n"
            f"## Optimiser step (CPU ms between model calls, steps 3-{args.steps})\n\n" + "\n".join(step_rows)
            + ("\n\n## Relax-then-predict (fmax 0.05 eV/Å, at most "
               f"{args.whole_steps} steps; the in-flight batch under relax's default max_atoms and max_angles)\n\n"
               + "\n".join(whole_rows) if args.whole_steps else "") + "\n\n" + RULE + "\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
