"""Where a force-training step's time goes: torch.profiler over training steps of ours, grouped by kind of work.

Usage: python benchmarks/training_profile.py [--preset dpa3-small] [--molecules 32] [--steps 6] [--out FILE]
Same step as ``benchmarks/training.py`` (forward with forces, MSE(E/N) + MSE(F), backward through the force
graph, Adam) on QM9 molecules of 18 atoms, eager, fused angle block. Prints self CPU time per group (the fused
angle operator's forward, backward and double backward; matrix products; elementwise arithmetic; gathers and
scatters; the rest) and the top operators, with the thread count and load average.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from training import make_batches, train_step  # noqa: E402

GROUPS = [
    ("fused angle block: backward of its backward (parameter gradients through the forces)",
     lambda n: "AngleBlockBackwardFn" in n or "DoubleBackwardFn" in n),
    ("fused angle block: backward (forces)", lambda n: "AngleBlockFn" in n),
    ("fused angle block: forward", lambda n: n.startswith("mftcalc::angle_block")),
    ("matrix products (mm, bmm, addmm, linear)", lambda n: n in ("aten::mm", "aten::bmm", "aten::addmm",
                                                                 "aten::linear", "aten::matmul")),
    ("elementwise (mul, add, sub, div, neg, activations)", lambda n: n in (
        "aten::mul", "aten::add", "aten::add_", "aten::sub", "aten::div", "aten::neg", "aten::silu",
        "aten::silu_backward", "aten::sigmoid", "aten::sigmoid_backward", "aten::tanh", "aten::tanh_backward",
        "aten::mul_", "aten::where", "aten::gt", "aten::lt", "aten::pow", "aten::sqrt", "aten::clamp")),
    ("gathers, scatters, segment sums", lambda n: n in (
        "aten::index", "aten::index_select", "aten::scatter_add_", "aten::segment_reduce", "aten::_index_put_impl_",
        "aten::index_add_", "aten::gather", "aten::_segment_reduce_backward")),
    ("memory (fill, copy, cat, empty)", lambda n: n in ("aten::fill_", "aten::copy_", "aten::cat", "aten::empty",
                                                        "aten::zeros", "aten::zero_", "aten::empty_strided")),
    ("Adam", lambda n: "Adam" in n or "_foreach" in n),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dpa3-small")
    parser.add_argument("--molecules", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("MFTCALC_BENCH_THREADS", "1")))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mols = C.qm9_structures(args.molecules * 4)
    field, _, _ = C.angle_backends()
    model, params = C.build_ours(args.preset, field, "fused")
    batches = make_batches(mols, args.molecules)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step(b) -> None:
        train_step(model, optimizer, b)

    for b in batches[:2]:
        step(b)
    load = os.getloadavg()
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(args.steps):
            step(batches[k % len(batches)])
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    grouped = defaultdict(float)
    for e in events:
        name = next((g for g, match in GROUPS if match(e.key)), "other")
        grouped[name] += e.self_cpu_time_total
    lines = [f"# Force-training step profile: {args.preset}, {args.molecules} molecules/step",
             "",
             f"`python benchmarks/training_profile.py --preset {args.preset} --molecules {args.molecules} --steps "
             f"{args.steps} --threads {args.threads}`; torch {torch.__version__}, {args.threads} thread(s), "
             f"{params:,} parameters; load average before {load[0]:.1f} on {os.cpu_count()} cores (above the "
             "thread count: other processes shared the cores; the shares below still hold, the absolute times do "
             "not).",
             "",
             f"Self CPU time over {args.steps} steps: {total / 1e6:.2f} s ({total / 1e3 / args.steps:.0f} ms per step).",
             "",
             "| group | self CPU ms per step | share |",
             "|---|---:|---:|"]
    for name, _ in GROUPS + [("other", None)]:
        if grouped.get(name):
            lines.append(f"| {name} | {grouped[name] / 1e3 / args.steps:.1f} | {grouped[name] / total:.1%} |")
    lines += ["", "Top operators:", "", "| operator | calls per step | self CPU ms per step | share |",
              "|---|---:|---:|---:|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]:
        name = e.key.replace("torch::autograd::CppNode<mftcalc_angle::(anonymous namespace)::", "CppNode<")
        lines.append(f"| `{name}` | {e.count / args.steps:.0f} | {e.self_cpu_time_total / 1e3 / args.steps:.1f} | "
                     f"{e.self_cpu_time_total / total:.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
