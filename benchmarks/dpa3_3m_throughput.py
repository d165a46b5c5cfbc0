"""Throughput of the imported DPA-3.1-3M-size model: mftcalc (eager, fused C++ angle operator) beside deepmd-kit's
own DPA3 with the same weights, in one run: energy+forces inference and a force-training step, float32, one table.

One run: (1) the deepmd-kit side of ``tests/golden/make_deepmd_golden.py --full-size`` (the random-weight
DPA-3.1-3M-size checkpoint of ``benchmarks/dpa3_import_parity.py``: 128/64/32 x 16, cutoffs 6/4 Å, exp switch,
dynamic sel 1200/300 / 10, split angle compression, silut:3, fitting 240^3, 2 branches) writes the checkpoint;
(2) mftcalc imports it (``mftcalc.model.deepmd_import``), float32, ``angle_backend="fused"``; (3) deepmd-kit, in
its own venv (this file run with ``--worker`` by ``--deepmd-python``), builds the same branch in float32
(``get_model`` from the checkpoint's own model parameters, weights loaded from the checkpoint) at the smallest sel
that truncates nothing for each workload (and at the paper's 1200/300 with ``--paper-sel``). Sel changes only the
padding and, with dynamic sel, the normalisation constants sel/10; these are reset to the checkpoint's 1200/300
values so every deepmd-kit row computes the checkpoint's function (checked: energies and forces against mftcalc's).

Workloads: (a) 32 QM9 molecules of 18 atoms in one call/batch, (b) a rattled periodic Si diamond crystal of 216
atoms (3x3x3 conventional cells). Inference = energy + forces (crystal: + virial/stress, which deepmd-kit always
returns); training step = forward with forces kept differentiable, loss MSE(E/N) + MSE(F) against fixed random
targets (the same on both sides), backward (double backward through the forces), Adam (lr 1e-4).

``--pause-pids`` (e.g. the project's background jobs): SIGSTOP them around each timed section only (not during
setup), SIGCONT right after, also on errors, on SIGTERM/SIGINT and by a watchdog after ``--pause-cap`` seconds;
the total paused time is capped by ``--pause-budget`` (sections that do not fit are left out and say so).

    MFTCALC_BENCH_THREADS=1 python benchmarks/dpa3_3m_throughput.py --deepmd-python /tmp/dpvenv/bin/python \
        [--paper-sel] [--pause-pids 123,456] [--out benchmarks/results/dpa3_3m_throughput.md]
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402   (numpy + torch only: the deepmd-kit worker imports this file too)

GENERATOR = C.REPO / "tests" / "golden" / "make_deepmd_golden.py"
CASE = "dpa3_31_3m"
BRANCH = "SPICE2"
PAPER_SEL = (1200, 300)


# ------------------------------------------------------------------------------------------- pausing other jobs
class Pauser:
    """SIGSTOP ``pids`` for timed sections only; SIGCONT after each section (finally), at exit, on SIGTERM/SIGINT
    and from a watchdog thread after ``cap_s``; sections stop being paused once ``budget_s`` is used up."""

    def __init__(self, pids: Sequence[int], cap_s: float, budget_s: float) -> None:
        self.pids = [int(p) for p in pids]
        self.cap_s, self.budget_s, self.used_s = cap_s, budget_s, 0.0
        self.paused = False
        self.watchdog_fired = False
        if self.pids:
            atexit.register(self.resume)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.resume()
        raise SystemExit(128 + signum)

    def _send(self, sig: int) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def resume(self) -> None:
        if self.paused:
            self._send(signal.SIGCONT)
            self.paused = False

    def _watchdog(self) -> None:
        if self.paused:
            self.watchdog_fired = True
            self.resume()

    @property
    def left_s(self) -> float:
        return self.budget_s - self.used_s

    @contextmanager
    def section(self) -> Iterator[Dict[str, Any]]:
        """Pause the pids for the body; ``info``: ``paused`` (bool), ``seconds``, ``watchdog`` (the cap cut the
        pause short: the end of the section ran beside the other jobs)."""
        info: Dict[str, Any] = {"paused": False, "seconds": 0.0, "watchdog": False}
        if not self.pids:
            yield info
            return
        cap = min(self.cap_s, self.left_s)
        self.watchdog_fired = False
        self._send(signal.SIGSTOP)
        self.paused = True
        start = time.perf_counter()
        timer = threading.Timer(max(cap, 0.0), self._watchdog)
        timer.daemon = True
        timer.start()
        info["paused"] = True
        try:
            yield info
        finally:
            timer.cancel()
            self.resume()
            info["seconds"] = time.perf_counter() - start
            info["watchdog"] = self.watchdog_fired
            self.used_s += min(info["seconds"], cap)


def timed(pauser: Pauser, fn: Any, repeats: int, max_seconds: float, warm_s: float) -> Dict[str, Any]:
    """``repeats`` timed calls of ``fn`` (no warm-up: the caller warmed up before pausing, in ``warm_s``) inside one
    paused section; ``{"times", "median", "pause"}`` or ``{"skipped": why}`` when the pause budget left cannot hold
    the section (estimated from the warm-up)."""
    need_s = min(repeats * warm_s, max_seconds + 2 * warm_s)
    if pauser.pids and pauser.left_s < need_s:
        return {"skipped": f"pause budget left {pauser.left_s:.0f} s < about {need_s:.0f} s needed"}
    with pauser.section() as info:
        t = C.time_call(fn, warmup=0, repeats=repeats, max_seconds=max_seconds)
    return {"times": t.times, "median": t.median, "pause": info}


# ----------------------------------------------------------------------------------------------- deepmd-kit side
def limit_memory(margin_gb: float = 1.5) -> None:
    """Cap this process's address space below the free memory, so running out raises (RuntimeError in torch)
    instead of waking the kernel's OOM killer, which could pick another process."""
    import resource

    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return
    limit = int(avail - margin_gb * 1e9)
    if limit > 2e9:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def deepmd_model(ckpt: Dict[str, Any], branch: str, e_sel: int, a_sel: int) -> Any:
    """deepmd-kit single-branch model of ``branch`` in float32 at sel ``e_sel``/``a_sel``, the checkpoint's
    weights loaded (float64 -> float32) and its normalisation constants (dynamic sel: sel / sel_reduce_factor)
    kept at the checkpoint's values, so only the padding differs from the checkpoint's model."""
    import copy

    import torch
    from deepmd.pt.model.model import get_model

    params = copy.deepcopy(ckpt["_extra_state"]["model_params"]["model_dict"][branch])
    rf = params["descriptor"]["repflow"]
    e0, a0, factor = rf["e_sel"], rf["a_sel"], rf["sel_reduce_factor"]
    assert rf["use_dynamic_sel"], "the normalisation reset below assumes dynamic sel"
    rf["e_sel"], rf["a_sel"] = int(e_sel), int(a_sel)
    params["descriptor"]["precision"] = "float32"
    params["fitting_net"]["precision"] = "float32"
    model = get_model(params)
    prefix = f"model.{branch}."
    state = {}
    for name, own in model.state_dict().items():
        src = ckpt[prefix + name]
        if src.shape != own.shape:           # mean/stddev [ntypes, sel, 4]: constants with fix_stat_std
            value = float(src.flatten()[0])
            assert name.endswith(("mean", "stddev")) and bool((src == value).all()), name
            state[name] = torch.full_like(own, value)
        else:
            state[name] = src.to(own.dtype) if torch.is_tensor(src) else src
    model.load_state_dict(state)
    repflows = model.atomic_model.descriptor.repflows
    for layer in repflows.layers:
        layer.dynamic_e_sel = e0 / factor
        layer.dynamic_a_sel = a0 / factor
    repflows.sel_reduce_factor = repflows.nnei / (e0 / factor)   # only the h2g2 scale reads it after __init__
    return model


def worker(spec_path: str) -> None:
    """Run by the deepmd-kit venv's python: times the workloads of the spec, prints one JSON line."""
    spec = json.loads(Path(spec_path).read_text())
    C.set_threads(spec["threads"])      # before deepmd-kit reads its thread variables
    limit_memory()
    import deepmd
    import torch

    torch.set_num_threads(spec["threads"])
    pauser = Pauser(spec["pause_pids"], spec["pause_cap_s"], spec["pause_budget_s"])
    ckpt = torch.load(spec["checkpoint"], map_location="cpu", weights_only=False)["model"]
    out: Dict[str, Any] = {"version": deepmd.__version__, "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "rows": [],
                           "op_library": "loaded" if (Path(deepmd.__file__).parent / "lib" /
                                                      "libdeepmd_op_pt.so").exists() else "disabled"}
    for job in spec["jobs"]:
        e_sel, a_sel = job["sel"]
        row: Dict[str, Any] = {"workload": job["workload"], "sel": job["sel"]}
        out["rows"].append(row)
        model = None
        try:
            model = deepmd_model(ckpt, spec["branch"], e_sel, a_sel)
            out["params"] = sum(p.numel() for p in model.parameters())
            with np.load(job["npz"]) as z:
                nf, nat = z["numbers"].shape
                coord = torch.tensor(z["coords"].reshape(nf, nat * 3), dtype=torch.float64)
                atype = torch.tensor(z["numbers"] - 1, dtype=torch.long)   # 118-element type map
                box = None if not z["boxes"].any() else torch.tensor(z["boxes"].reshape(nf, 9), dtype=torch.float64)
                e_ref = torch.tensor(z["target_energy"], dtype=torch.float64).view(nf, 1)
                f_ref = torch.tensor(z["target_forces"], dtype=torch.float64).view(nf, nat, 3)
            # calls of at most ``chunk`` frames; a training step accumulates their gradients (loss weighted by
            # frames, so it is the loss of all nf frames) before one Adam step
            chunk = job.get("chunk") or nf
            parts = [slice(k, min(k + chunk, nf)) for k in range(0, nf, chunk)]
            calls = [(coord[s], atype[s], None if box is None else box[s], e_ref[s], f_ref[s]) for s in parts]
            row["calls"] = len(calls)
            model.eval()
            t0 = time.perf_counter()
            res = [model(c, a, box=b) for c, a, b, _, _ in calls]   # untimed: warm-up and the parity check
            row["first_call_s"] = time.perf_counter() - t0
            row["energy"] = torch.cat([r["energy"].detach().double().view(-1) for r in res]).tolist()
            row["forces"] = torch.cat([r["force"].detach().double().reshape(-1, 3) for r in res]).tolist()
            del res

            def infer() -> None:
                for c, a, b, _, _ in calls:
                    model(c, a, box=b)["force"].sum().item()
            row["inference"] = timed(pauser, infer, spec["repeats"], spec["max_seconds"], row["first_call_s"])
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)

            def train() -> None:
                opt.zero_grad(set_to_none=True)
                for c, a, b, e, f in calls:
                    k = c.shape[0]
                    res = model(c, a, box=b)
                    loss = torch.mean((res["energy"].view(k, 1) / nat - e / nat) ** 2) + \
                        torch.mean((res["force"].view(k, nat, 3) - f) ** 2)
                    (loss * (k / nf)).backward()
                opt.step()
            t0 = time.perf_counter()
            train()                                              # untimed warm-up (Adam state, graph)
            row["first_step_s"] = time.perf_counter() - t0
            row["train"] = timed(pauser, train, spec["train_repeats"], spec["max_seconds"], row["first_step_s"])
        except (RuntimeError, MemoryError) as exc:      # e.g. out of memory at the paper's sel: the row says so
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        row["peak_rss_gb"] = C.peak_rss_gb()
        print(f"    deepmd-kit {job['workload']} sel {e_sel}/{a_sel}: "
              + ", ".join(f"{k} {row[k]['median']:.2f} s" for k in ("inference", "train")
                          if k in row and "median" in row[k])
              + (f" {row['error']}" if "error" in row else ""), file=sys.stderr, flush=True)
        model = None     # noqa: F841  (frees it before the next job's model)
    out["paused_s"] = pauser.used_s
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------------- mftcalc side
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--deepmd-python", default=str(C.PEER_VENVS["deepmd"] / "bin" / "python"),
                   help="python of the deepmd-kit venv")
    p.add_argument("--molecules", type=int, default=32, help="QM9 molecules (18 atoms) in workload (a)")
    p.add_argument("--crystal", type=int, default=3, help="Si supercell repeats of the 8-atom cell (3 -> 216 atoms)")
    p.add_argument("--repeats", type=int, default=4, help="timed inference calls (median reported)")
    p.add_argument("--train-repeats", type=int, default=3, help="timed training steps (median reported)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="stop repeating a section after this long (>= 2)")
    p.add_argument("--peer-chunk", type=int, default=8,
                   help="molecules per deepmd-kit call in (a) (default 8: one 32-frame call of the full-size model "
                        "ran out of memory at 18 GB in training here, 16-frame calls trained 4x slower per frame)")
    p.add_argument("--paper-sel", action="store_true", help="also deepmd-kit at the paper's sel 1200/300")
    p.add_argument("--pause-pids", default="", help="comma-separated pids to SIGSTOP while timing (SIGCONT after)")
    p.add_argument("--pause-cap", type=float, default=220.0, help="longest single pause, s (watchdog resumes)")
    p.add_argument("--pause-budget", type=float, default=570.0, help="total paused time of the run, s")
    p.add_argument("--weight-scale", type=float, default=1.0, help="random weights: std x sqrt(fan_in)")
    p.add_argument("--out", help="also write the report as Markdown here")
    return p.parse_args()


def workloads(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """name -> {structures, unit, count (structures or atoms the rate counts), targets}."""
    import torch

    mols = C.qm9_structures(args.molecules, atoms=18, seed=0)
    crystal = C.si_crystal(args.crystal)
    out = {}
    gen = torch.Generator().manual_seed(0)
    for name, structs, unit in ((f"(a) {len(mols)} QM9 molecules of 18 atoms", mols, "molecules"),
                                (f"(b) Si crystal, {crystal.n_atoms} atoms, periodic", [crystal], "atoms")):
        n_atoms = sum(s.n_atoms for s in structs)
        out[name] = {"structures": structs, "unit": unit,
                     "count": len(structs) if unit == "molecules" else n_atoms,
                     "target_energy": torch.randn(len(structs), generator=gen, dtype=torch.float64),
                     "target_forces": 0.1 * torch.randn(n_atoms, 3, generator=gen, dtype=torch.float64)}
    return out


def import_model(path: Path) -> tuple:
    """(float32 mftcalc model on the fused angle backend, dataset index of ``BRANCH``, parameter count)."""
    import torch

    from mftcalc.model.config import ModelConfig
    from mftcalc.model.deepmd_import import build_imported_model
    from mftcalc.model.deepmd_source import read_deepmd_checkpoint
    from mftcalc.model.mft_model import MFTModel, count_parameters

    imported, _, branches = build_imported_model(read_deepmd_checkpoint(path))
    config = ModelConfig.from_dict(imported.config.to_dict())
    config.backbone.angle_backend = "fused"          # raises on use if the C++ operator does not build
    model = MFTModel(config).to(torch.float32)
    model.load_state_dict(imported.state_dict())
    model.active_ff_head = imported.active_ff_head
    return model.eval(), branches.index(BRANCH), count_parameters(model)


def our_rows(model: Any, dataset: int, loads: Dict[str, Dict[str, Any]], pauser: Pauser,
             args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    import torch

    from mftcalc.data import collate
    from mftcalc.kernels.angle import angle_backend_in_use, load_library

    load_library()
    rows: Dict[str, Dict[str, Any]] = {}
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for name, w in loads.items():
        model.load_state_dict(initial)          # the imported weights again (the previous training steps moved them)
        b = collate(w["structures"], torch.float32, dataset=dataset)
        periodic = bool(b["pbc"].all())
        model.eval()
        t0 = time.perf_counter()
        res = model(b, compute_forces=True, compute_stress=periodic)     # untimed: warm-up and parity check
        row: Dict[str, Any] = {"first_call_s": time.perf_counter() - t0,
                               "energy": res["energy"].detach().double().tolist(),
                               "forces": res["forces"].detach().double().tolist()}
        print(f"  mftcalc {name}: first call {row['first_call_s']:.1f} s", flush=True)

        def infer() -> None:
            model(b, compute_forces=True, compute_stress=periodic)["forces"].sum().item()
        row["inference"] = timed(pauser, infer, args.repeats, args.max_seconds, row["first_call_s"])
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        e_ref, f_ref = w["target_energy"].float(), w["target_forces"].float()
        n = b["n_atoms"].float()

        def train() -> None:
            opt.zero_grad(set_to_none=True)
            res = model(b, compute_forces=True, compute_stress=False)
            loss = torch.mean(((res["energy"] - e_ref) / n) ** 2) + torch.mean((res["forces"] - f_ref) ** 2)
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        train()
        row["first_step_s"] = time.perf_counter() - t0
        row["train"] = timed(pauser, train, args.train_repeats, args.max_seconds, row["first_step_s"])
        model.eval()
        row["backend"] = angle_backend_in_use()
        assert row["backend"] == "fused", f"angle backend in use: {row['backend']} (fused required)"
        for k in ("inference", "train"):
            if "median" in row[k]:
                print(f"    {k}: {row[k]['median']:.2f} s", flush=True)
        rows[name] = row
    return rows


def free_memory() -> None:
    """Return this process's freed heap to the system (glibc ``malloc_trim``) and say how much it still holds."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/status") as fh:
        rss = next((line.split()[1] for line in fh if line.startswith("VmRSS:")), "?")
    print(f"mftcalc process now holds {int(rss) / 1e6:.1f} GB" if rss != "?" else "", flush=True)


def rate_cell(w: Dict[str, Any], part: Optional[Dict[str, Any]], per_step: bool = False) -> tuple:
    """(rate or None, cell text) of a timed section."""
    if part is None:
        return None, "–"
    if "median" not in part:
        return None, part.get("skipped", part.get("error", "–"))
    rate = w["count"] / part["median"]
    flag = " ‡" if part["pause"].get("watchdog") else ""
    return rate, f"{C.fmt_rate(rate)} ({part['median']:.2f} s){flag}"


def parity(ours: Dict[str, Any], theirs: Dict[str, Any]) -> str:
    e_a, e_b = np.array(ours["energy"]), np.array(theirs["energy"])
    f_a, f_b = np.array(ours["forces"]), np.array(theirs["forces"])
    return (f"energy {np.abs(e_a - e_b).max() / np.abs(e_b).max():.1e} rel., forces "
            f"{np.abs(f_a - f_b).max() / np.abs(f_b).max():.1e} of max |F|")


def main() -> None:
    args = parse_args()
    C.set_threads()
    load_before = C.load_average()
    import torch

    print(f"threads {torch.get_num_threads()}; load average {load_before}", flush=True)
    pids = [int(p) for p in args.pause_pids.split(",") if p.strip()]
    pauser = Pauser(pids, args.pause_cap, args.pause_budget)
    loads = workloads(args)
    sels = {name: tuple(C.max_neighbours(w["structures"], [6.0, 4.0])) for name, w in loads.items()}
    print("smallest sel that truncates nothing (neighbours within 6/4 Å): "
          + "; ".join(f"{n}: {s[0]}/{s[1]}" for n, s in sels.items()), flush=True)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        from dpa3_import_parity import workloads as parity_structures
        (tmp / "structures.json").write_text(json.dumps(parity_structures()))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        t0 = time.perf_counter()
        gen = subprocess.run([args.deepmd_python, str(GENERATOR), "--full-size", "--out", str(tmp), "--structures",
                              str(tmp / "structures.json"), "--weight-scale", str(args.weight_scale)],
                             capture_output=True, text=True, env=env)
        if gen.returncode != 0:
            raise SystemExit(f"deepmd-kit generator failed ({args.deepmd_python}):\n{gen.stderr[-3000:]}")
        refs = json.loads((tmp / "references.json").read_text())
        ckpt_path = tmp / refs["cases"][CASE]["file"]
        print(f"checkpoint written by deepmd-kit {refs['deepmd_kit_version']} in {time.perf_counter() - t0:.0f} s "
              f"({ckpt_path.stat().st_size / 1e6:.1f} MB)", flush=True)
        t0 = time.perf_counter()
        model, dataset, params = import_model(ckpt_path)
        t_import = time.perf_counter() - t0
        print(f"imported into mftcalc in {t_import:.1f} s: {params:,} parameters", flush=True)

        ours = our_rows(model, dataset, loads, pauser, args)
        del model
        free_memory()     # deepmd-kit's training of the full-size model needs most of the machine's memory

        jobs = []
        for k, (name, w) in enumerate(loads.items()):
            structs = w["structures"]
            np.savez(tmp / f"w{k}.npz", coords=np.stack([s.positions for s in structs]),
                     numbers=np.stack([s.numbers for s in structs]),
                     boxes=np.stack([s.cell if s.pbc.all() else np.zeros((3, 3)) for s in structs]),
                     target_energy=w["target_energy"].numpy(), target_forces=w["target_forces"].numpy())
            jobs.append({"workload": name, "npz": str(tmp / f"w{k}.npz"), "sel": list(sels[name]),
                         "chunk": args.peer_chunk if w["unit"] == "molecules" else None})
        if args.paper_sel:
            jobs += [dict(j, sel=list(PAPER_SEL)) for j in list(jobs)]
        spec = {"checkpoint": str(ckpt_path), "branch": BRANCH, "threads": C.THREADS, "jobs": jobs,
                "repeats": args.repeats, "train_repeats": args.train_repeats, "max_seconds": args.max_seconds,
                "pause_pids": pids, "pause_cap_s": args.pause_cap, "pause_budget_s": pauser.left_s}
        (tmp / "spec.json").write_text(json.dumps(spec))
        print(f"deepmd-kit: {len(jobs)} jobs ...", flush=True)
        proc = subprocess.run([args.deepmd_python, str(Path(__file__).resolve()), "--worker", str(tmp / "spec.json")],
                              stdout=subprocess.PIPE, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if not lines:
            raise SystemExit(f"deepmd-kit worker failed (exit {proc.returncode})")
        peer = json.loads(lines[-1])
    pauser.used_s += peer["paused_s"]

    # ----------------------------------------------------------------------------------------------- the table
    table, parities = [], []
    paper = {r["workload"]: r for r in peer["rows"] if tuple(r["sel"]) == PAPER_SEL}
    small = {r["workload"]: r for r in peer["rows"] if tuple(r["sel"]) != PAPER_SEL}
    summary = {}
    for name, w in loads.items():
        mine, dp, dp_paper = ours[name], small.get(name, {}), paper.get(name)
        if "energy" in dp:
            parities.append(f"{name}: {parity(mine, dp)} (deepmd-kit sel {dp['sel'][0]}/{dp['sel'][1]})")
        if dp_paper is not None and "energy" in dp_paper:
            parities.append(f"{name}: {parity(mine, dp_paper)} (deepmd-kit sel 1200/300)")
        for part, label in (("inference", "energy + forces" + (" + virial" if w["unit"] == "atoms" else "")),
                            ("train", "training step (forces in the loss)")):
            r_ours, c_ours = rate_cell(w, mine.get(part))
            r_dp, c_dp = rate_cell(w, dp.get(part)) if "error" not in dp else (None, dp["error"])
            row = [name, label, f"{w['unit']}/s", c_ours, f"{dp['sel'][0]}/{dp['sel'][1]}" if dp else "–", c_dp,
                   C.fmt_ratio(r_ours, r_dp)]
            summary[(name, part)] = (r_ours / r_dp) if r_ours and r_dp else None
            if args.paper_sel:
                if dp_paper is None:
                    row += ["–", "–"]
                elif "error" in dp_paper:
                    row += [dp_paper["error"], "–"]
                else:
                    r_p, c_p = rate_cell(w, dp_paper.get(part))
                    row += [c_p, C.fmt_ratio(r_ours, r_p)]
            table.append(row)
    headers = ["workload", "measure", "unit", "mftcalc eager, fused angle op (median s)", "deepmd-kit sel e/a",
               "deepmd-kit (median s)", "mftcalc / deepmd-kit"]
    if args.paper_sel:
        headers += ["deepmd-kit sel 1200/300 (median s)", "mftcalc / deepmd-kit 1200/300"]
    backends = sorted({r["backend"] for r in ours.values()})
    dp_peak = max((r.get("peak_rss_gb", 0.0) for r in peer["rows"]), default=0.0)
    pause_note = (f"the other jobs on the machine (pids {', '.join(map(str, pids))}) were paused (SIGSTOP) during each "
                  f"timed section only, {pauser.used_s:.0f} s in all" if pids else
                  "no other jobs were paused (--pause-pids not given)")
    text = "\n".join([
        C.report_header("Imported DPA-3.1-3M-size model: mftcalc vs deepmd-kit throughput (CPU, float32)",
                        sys.argv, load_before), "",
        C.markdown_table(headers, table, right=range(3, len(headers))), "",
        f"- model: the random-weight DPA-3.1-3M-size checkpoint written by deepmd-kit {refs['deepmd_kit_version']} "
        f"(`tests/golden/make_deepmd_golden.py --full-size`: {refs['cases'][CASE]['doc']}; "
        f"{refs['cases'][CASE]['n_parameters']:,} parameters per branch in deepmd-kit), branch {BRANCH}; "
        f"imported into mftcalc ({params:,} parameters, import {t_import:.1f} s) and cast to float32",
        f"- mftcalc: eager, `angle_backend=\"fused\"`, each workload in one batch, from the imported weights; angle backend recorded by mftcalc.kernels.angle after the "
        f"timed calls: {', '.join(backends)}; the neighbour search is inside the timed call; batches collated "
        "before timing; the crystal's inference also computes the stress (deepmd-kit always returns the virial)",
        f"- deepmd-kit {peer['version']} (torch {peer['torch']}, {peer['threads']} thread(s), compiled op library "
        f"{peer['op_library']}: DPA3 in pure PyTorch), its own venv, `get_model` of the checkpoint's branch "
        "parameters with precision float32, weights loaded from the checkpoint; `model(coord, atype, box)`, its own "
        "neighbour list inside the timed call; (a) in calls of "
        f"{args.peer_chunk} frames (its training step accumulates their gradients, then one Adam step: the same "
        f"loss and step as one {args.molecules}-frame call; in setup probes on this machine, not paused, one "
        "32-frame call of the full-size model was ~5x slower per molecule in inference and its training step ran "
        "out of memory at 18 GB; 16-frame calls trained ~4x slower per molecule than 8-frame ones), (b) in one call",
        "- sel: the smallest that truncates nothing for each workload (largest neighbour counts within 6/4 Å: "
        + "; ".join(f"{n}: {s[0]}/{s[1]}" for n, s in sels.items())
        + "); the dynamic-sel normalisation constants stay the checkpoint's (1200/10, 300/10), so each deepmd-kit "
          "model computes the checkpoint's function. Same results, float32, mftcalc vs deepmd-kit: "
        + "; ".join(parities),
        "- training step: forward with forces kept differentiable, loss MSE(E/N) + MSE(F) against fixed random "
        "targets (the same on both sides), backward (double backward), Adam lr 1e-4; the same batch every step",
        f"- timing: one untimed warm-up call/step (outside the pause), then the median of {args.repeats} inference "
        f"calls / {args.train_repeats} training steps (fewer, but >= 2, past {args.max_seconds:g} s); "
        f"{C.THREADS} thread(s) on both sides; {pause_note}; ‡ = a pause was cut short by the watchdog; peak memory "
        f"deepmd-kit {dp_peak:.1f} GB, mftcalc {C.peak_rss_gb():.1f} GB",
    ])
    C.write_report(args.out, text)
    print("\nratios mftcalc / deepmd-kit: " + "; ".join(f"{n} {p}: {'–' if r is None else f'{r:.2f}x'}"
                                                       for (n, p), r in summary.items()))
    if backends != ["fused"]:
        raise SystemExit("the fused angle operator was not the backend in use")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
