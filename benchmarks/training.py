"""Force-training throughput (steps/s, molecules/s) of mftcalc beside deepmd-kit's DPA3, in one run, one table.

A training step = forward with forces kept differentiable (``create_graph``), loss = MSE(E/N) + MSE(F) against fixed
random targets, backward (the double backward through the forces), Adam step. QM9 molecules of 18 atoms (so every
deepmd-kit call has frames of one atom count), cycling over 4 fixed batches. Rows: ours for each preset (the CPU
default ``cpu`` and the deepmd-kit comparison size ``dpa3-small``), each angle-block backend (eager reference vs
fused), at 32 and 64 molecules per step; deepmd-kit DPA3 with the same hyperparameters at sel 120/40 (truncates
nothing here: the script counts the neighbours), the paper's 1200/300 and the data's maximum, 32 molecules per step.

``--sweep``: training molecules/s of candidate CPU-default sizes (layers 2/3/4/6 × a_rcut 3.0/3.5/4.0 Å × a_dim
8/16, n_dim/e_dim 64/32), for choosing the CPU default (accuracy is measured elsewhere).

Run from the repo root with mftcalc's venv::

    python benchmarks/training.py [--quick] [--out benchmarks/results/training.md]
    python benchmarks/training.py --sweep [--quick] [--out benchmarks/results/training_sweep.md]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mftcalc.data import collate  # noqa: E402

N_BATCHES = 4   # distinct batches cycled through (per batch size)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke test (4 and 8 molecules per step)")
    p.add_argument("--out", help="also write the report as Markdown to this file")
    p.add_argument("--sweep", action="store_true", help="candidate CPU-default sizes, ours only")
    p.add_argument("--batch-sizes", help="molecules per step of ours (default 32,64; quick 4,8)")
    p.add_argument("--peer-batch", type=int, help="molecules per step of deepmd-kit (default 32; quick 4)")
    p.add_argument("--presets", default="cpu,dpa3-small", help="our presets (default cpu,dpa3-small)")
    p.add_argument("--deepmd-presets", default="dpa3-small,cpu", help="presets whose sizes deepmd-kit DPA3 gets")
    p.add_argument("--deepmd-sel", default="120/40,1200/300,data",
                   help="deepmd-kit e_sel/a_sel values; 'data' = the largest neighbour counts in the batches")
    p.add_argument("--mace", action="store_true", help="also a MACE row (~350k parameters)")
    p.add_argument("--no-peers", action="store_true", help="ours only")
    p.add_argument("--steps", type=int, help="timed steps, median step time reported (default 6; quick 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--max-seconds", type=float, default=90.0, help="stop timing a row after this long (>= 2 steps)")
    p.add_argument("--sweep-batch", type=int, help="molecules per step in --sweep (default 32; quick 4)")
    args = p.parse_args()
    quick = args.quick
    args.batch_sizes = [int(x) for x in (args.batch_sizes or ("4,8" if quick else "32,64")).split(",")]
    args.peer_batch = args.peer_batch or (4 if quick else 32)
    args.steps = args.steps or (2 if quick else 6)
    args.sweep_batch = args.sweep_batch or (4 if quick else 32)
    if quick:
        args.warmup = min(args.warmup, 1)
    return args


def make_batches(mols: list, size: int) -> List[Dict[str, torch.Tensor]]:
    """``N_BATCHES`` collated batches of ``size`` molecules with fixed random energy/force targets."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for k in range(N_BATCHES):
        b = collate(mols[k * size:(k + 1) * size], torch.float32)
        b["target_energy"] = torch.randn(size, generator=gen)
        b["target_forces"] = 0.1 * torch.randn(b["positions"].shape, generator=gen)
        batches.append(b)
    return batches


def train_step(model: Any, opt: torch.optim.Optimizer, b: Dict[str, torch.Tensor]) -> None:
    """One force-training step: forward with forces, MSE(E/N) + MSE(F), backward, Adam."""
    opt.zero_grad(set_to_none=True)
    out = model(b, compute_forces=True, compute_stress=False)
    n = b["n_atoms"].to(out["energy"].dtype)
    loss = torch.mean(((out["energy"] - b["target_energy"]) / n) ** 2) + \
        torch.mean((out["forces"] - b["target_forces"]) ** 2)
    loss.backward()
    opt.step()


def time_training(model: Any, batches: List[Dict[str, torch.Tensor]], args: argparse.Namespace) -> C.Timing:
    """Median wall time of one training step (``train_step``)."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    counter = [0]

    def step() -> None:
        b = batches[counter[0] % len(batches)]
        counter[0] += 1
        train_step(model, opt, b)
    return C.time_call(step, warmup=args.warmup, repeats=args.steps, max_seconds=args.max_seconds)


def our_rows(args: argparse.Namespace, mols: list) -> tuple:
    field, backends, note = C.angle_backends()
    batches = {size: make_batches(mols, size) for size in args.batch_sizes}
    rows, used = [], set()
    for preset in args.presets.split(","):
        for backend in backends:
            for size in args.batch_sizes:
                model, params = C.build_ours(preset, field, backend)
                config = f"{preset} {C.size_text(preset)}; eager" + (f", angle {backend}" if backend else "") + \
                    f"; {size} molecules/step"
                print(f"  ours: {config} ...", flush=True)
                row = {"model": "mftcalc", "config": config, "params": params, "preset": preset, "size": size}
                try:
                    t = time_training(model, batches[size], args)
                    row.update(steps=1.0 / t.median, mols=size / t.median)
                    used.add(C.angle_backend_in_use())
                except Exception as exc:  # e.g. the fused op failing: the row says so
                    row.update(steps=None, mols=None,
                               error=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                rows.append(row)
                print(f"    {C.fmt_rate(row['mols'])} molecules/s; peak memory so far {C.peak_rss_gb():.1f} GB", flush=True)
    notes = [f"mftcalc: {note}; angle backend recorded by mftcalc.kernels.angle: {', '.join(sorted(used))}",
             "mftcalc: float32, eager; the neighbour search runs inside the timed step; batches collated before timing"]
    return rows, notes


def peer_rows(args: argparse.Namespace, mols: list, data_sel: tuple) -> tuple:
    rows, notes, versions = [], [], {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        npz = Path(tmp_dir) / "train.npz"
        size = args.peer_batch
        C.write_frames(npz, [mols[k * size:(k + 1) * size] for k in range(N_BATCHES)])
        workload = [{"name": "train", "npz": str(npz), "mode": "train", "warmup": args.warmup,
                     "repeats": args.steps, "max_seconds": args.max_seconds}]
        for preset in args.deepmd_presets.split(","):
            for e_sel, a_sel in C.parse_sels(args.deepmd_sel, data_sel):
                tag = " (data max)" if (e_sel, a_sel) == tuple(data_sel) and "data" in args.deepmd_sel else ""
                config = f"{preset} {C.size_text(preset)}; sel {e_sel}/{a_sel}{tag}, dynamic sel; {size} molecules/step"
                print(f"  deepmd-kit: {config} ...", flush=True)
                res = C.run_peer("deepmd", {"model": C.deepmd_spec(preset, e_sel, a_sel), "workloads": workload})
                rows.append(peer_row("deepmd-kit DPA3", config, preset, (e_sel, a_sel), size, res))
                if res.get("status") == "ok":
                    versions["deepmd"] = f"deepmd-kit {res['version']} (torch {res['torch']}, {res['threads']} " \
                                         f"threads, compiled op library {res['op_library']})"
        if args.mace:
            print("  MACE ...", flush=True)
            res = C.run_peer("mace", {"model": {"channels": 80, "max_L": 1, "num_interactions": 2, "correlation": 3,
                                                "r_max": 6.0, "max_ell": 3}, "workloads": workload})
            rows.append(peer_row("MACE", res.get("config", "80x0e+80x1o") + f"; {size} molecules/step", None, None,
                                 size, res))
            if res.get("status") == "ok":
                versions["mace"] = f"mace-torch {res['version']}"
    notes.append("deepmd-kit: " + versions.get("deepmd", C.NOT_INSTALLED if C.peer_python("deepmd") is None else "failed")
                 + "; DPA3 in float32, SiLUT(10), residual updates 0.1, no angle compression, fitting net 128-128 (our "
                   "head's widths), `use_dynamic_sel` + `smooth_edge_update`; train mode, so its forces keep the graph "
                   "(create_graph) and the same loss (MSE(E/N) + MSE(F)) is built on its `energy`/`force` outputs; "
                   "frames of one call share the atom count (18)")
    if args.mace:
        notes.append("MACE: " + versions.get("mace", C.NOT_INSTALLED if C.peer_python("mace") is None else "failed")
                     + "; graphs built before timing (its neighbour search is not in the timed step)")
    return rows, notes


def peer_row(name: str, config: str, preset: Any, sel: Any, size: int, res: Dict[str, Any]) -> Dict[str, Any]:
    rate, text = C.peer_rate(res, "train", "frames_per_step")
    row = {"model": name, "config": config, "params": res.get("params", "–"), "preset": preset, "sel": sel,
           "size": size, "mols": rate, "steps": None if rate is None else rate / size}
    if rate is None:
        row["error"] = text
    return row


def main_compare(args: argparse.Namespace) -> str:
    n_needed = N_BATCHES * max(args.batch_sizes + [args.peer_batch])
    mols = C.qm9_structures(n_needed, 18)
    presets = args.presets.split(",") + args.deepmd_presets.split(",")
    e_cut = max(C.backbone_cutoffs(p)[0] for p in presets)
    a_cut = max(C.backbone_cutoffs(p)[1] for p in presets)
    data_sel = tuple(C.max_neighbours(mols, [e_cut, a_cut]))
    print(f"largest neighbour counts within {e_cut:g}/{a_cut:g} Å: {data_sel[0]}/{data_sel[1]}", flush=True)
    rows, notes = our_rows(args, mols)
    if not args.no_peers:
        prows, pnotes = peer_rows(args, mols, data_sel)
        rows += prows
        notes += pnotes
    ref = {r["preset"]: r for r in rows if r["model"].startswith("deepmd") and r.get("sel") == (120, 40)}
    table = []
    for r in rows:
        base = ref.get(r["preset"])
        params = f"{r['params']:,}" if isinstance(r["params"], int) else r["params"]
        if r.get("mols") is None:
            table.append([r["model"], r["config"], params, r.get("error", "–"), "–", "–"])
            continue
        table.append([r["model"], r["config"], params, f"{r['steps']:.3g}", C.fmt_rate(r["mols"]),
                      C.fmt_ratio(r["mols"], base["mols"] if base else None)])
    headers = ["model", "config", "params", "steps/s", "molecules/s (forces in the loss)",
               "ratio to deepmd-kit sel 120/40, same hyperparameters"]
    return "\n".join([
        C.markdown_table(headers, table, right=[2, 3, 4, 5]), "",
        f"- data: QM9 molecules of 18 atoms, {N_BATCHES} fixed batches per batch size cycled; largest neighbour counts "
        f"within {e_cut:g}/{a_cut:g} Å: {data_sel[0]}/{data_sel[1]}, so deepmd-kit sel 120/40 "
        f"{'truncates nothing' if data_sel[0] <= 120 and data_sel[1] <= 40 else 'TRUNCATES neighbours here'} and the "
        f"'data max' rows use sel {data_sel[0]}/{data_sel[1]}",
        "- step: forward with forces (create_graph), loss = MSE(E/N) + MSE(F) against fixed random targets, backward, "
        "Adam (lr 1e-4)",
        *[f"- {n}" for n in notes],
        f"- timing: {args.warmup} warm-up step(s), then the median step time of up to {args.steps} steps (fewer if a "
        f"row passes {args.max_seconds:g} s); molecules/s = molecules per step / median step time; targets: ≥ 3× "
        "deepmd-kit at dpa3-small (64/32/16×6, a_rcut 4 Å), ≥ 100 molecules/s for the CPU default (`cpu`)",
    ])


def main_sweep(args: argparse.Namespace) -> str:
    field, backends, note = C.angle_backends()
    backend = "fused" if "fused" in backends else None
    size = args.sweep_batch
    mols = C.qm9_structures(N_BATCHES * size, 18)
    batches = make_batches(mols, size)
    table = []
    for layers, a_rcut, a_dim in itertools.product((2, 3, 4, 6), (3.0, 3.5, 4.0), (8, 16)):
        over = dict(n_layers=layers, a_rcut=a_rcut, a_rcut_smth=a_rcut - 0.5, a_dim=a_dim)
        model, params = C.build_ours("cpu", field, backend, **over)
        print(f"  sweep: {C.size_text('cpu', **over)} ...", flush=True)
        try:
            t = time_training(model, batches, args)
            rate, steps = C.fmt_rate(size / t.median), f"{1.0 / t.median:.3g}"
        except Exception as exc:
            rate, steps = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", "–"
        table.append([layers, f"{a_rcut:g}", a_dim, f"{params:,}", steps, rate])
    headers = ["layers", "a_rcut Å", "a_dim", "params", "steps/s", "training molecules/s"]
    return "\n".join([
        C.markdown_table(headers, table, right=[0, 1, 2, 3, 4, 5]), "",
        f"- candidates of the CPU default: n_dim/e_dim 64/32, e_rcut 6 Å (switch from 5), a_rcut_smth = a_rcut − 0.5 Å; "
        f"angle backend {backend or 'default'} ({note})",
        f"- {size} QM9 molecules (18 atoms) per step, {N_BATCHES} fixed batches cycled; step as in the comparison "
        f"(forces in the loss, Adam); {args.warmup} warm-up step(s), median of up to {args.steps} steps",
        "- speed only: the accuracy of each candidate is measured separately",
    ])


def main() -> None:
    args = parse_args()
    C.set_threads()
    load_before = C.load_average()
    print(f"threads {torch.get_num_threads()}; load average {load_before}", flush=True)
    if args.sweep:
        title = "Training throughput of candidate CPU-default sizes (mftcalc, CPU)"
        body = main_sweep(args)
    else:
        title = "Force-training throughput: mftcalc vs deepmd-kit DPA3 (CPU)"
        body = main_compare(args)
    C.write_report(args.out, C.report_header(title, sys.argv, load_before) + "\n\n" + body)


if __name__ == "__main__":
    main()
