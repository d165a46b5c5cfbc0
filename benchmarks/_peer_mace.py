"""Peer worker: MACE energy+forces and force-training timings (run by the mace venv's python).

Usage (by ``_common.run_peer``): ``/work/peers/mace/bin/python benchmarks/_peer_mace.py SPEC.json``; prints one JSON
line. SPEC: ``{"model": {"channels", "max_L", "num_interactions", "correlation", "r_max", "max_ell"},
"workloads": [...], "threads": 2}`` as in ``_peer_deepmd.py``; or, with an ``"overfit"`` entry (``{"structures":
[{"numbers", "positions" Å, "forces" eV/Å}], "steps", "lr", "every"}``), the overfit probe's fit of one fixed
batch (forces only, Adam at a constant rate; ``benchmarks/overfit_probe.py``). Each npz group is one batched call. The graphs
(matscipy neighbour lists) are built once, outside the timed calls.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def describe(m: Dict[str, Any]) -> str:
    """Short text of a MACE config (what the table prints)."""
    return (f"{m['channels']}x0e" + "".join(f"+{m['channels']}x{L}{'o' if L % 2 else 'e'}" for L in range(1, m["max_L"] + 1))
            + f", {m['num_interactions']} interactions, correlation {m['correlation']}, max_ell {m['max_ell']}, "
            f"r_max {m['r_max']} Å, float32")


def build_model(m: Dict[str, Any], zs: list):
    import mace  # noqa: F401  (first: it makes e3nn 0.4.4's constants load under torch 2.13)
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    hidden = o3.Irreps(f"{m['channels']}x0e" + "".join(
        f"+{m['channels']}x{L}{'o' if L % 2 else 'e'}" for L in range(1, m["max_L"] + 1)))
    return modules.ScaleShiftMACE(
        atomic_inter_scale=1.0, atomic_inter_shift=0.0, r_max=m["r_max"], num_bessel=8, num_polynomial_cutoff=5,
        max_ell=m["max_ell"], interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=m["num_interactions"], num_elements=len(zs), hidden_irreps=hidden,
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(zs)), avg_num_neighbors=20.0,
        atomic_numbers=zs, correlation=m["correlation"], gate=torch.nn.functional.silu)


def overfit(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Force RMSE/MAE (eV/Å) of a fresh MACE on one fixed batch, every ``every`` Adam steps before that step's
    update, up to ``steps`` steps or ``seconds`` of fitting (when > 0): ``{"rows": [[step, rmse, mae, seconds], ...],
    "params": n}``."""
    import time

    import ase
    import torch
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    torch.set_num_threads(spec.get("threads", 1))
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    m, job = spec["model"], spec["overfit"]
    zs = sorted({int(z) for s in job["structures"] for z in s["numbers"]})
    model = build_model(m, zs).train()
    z_table = AtomicNumberTable(zs)
    graphs = [mace_data.AtomicData.from_config(mace_data.config_from_atoms(
        ase.Atoms(numbers=s["numbers"], positions=s["positions"])), z_table=z_table, cutoff=m["r_max"])
        for s in job["structures"]]
    batch = torch_geometric.Batch.from_data_list(graphs).to_dict()
    target = torch.tensor([f for s in job["structures"] for f in s["forces"]], dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=job["lr"])
    rows = []
    start = time.perf_counter()
    for step in range(job["steps"] + 1):
        out = model(dict(batch), training=True, compute_force=True)
        diff = out["forces"] - target
        loss = diff.pow(2).mean()
        elapsed = time.perf_counter() - start
        over = 0 < job.get("seconds", 0) <= elapsed
        if step % job["every"] == 0 or step == job["steps"] or over:
            rows.append([step, float(loss.detach().sqrt()), float(diff.detach().abs().mean()), elapsed])
            print(f"mace step {step}: force RMSE {rows[-1][1]:.4f}", file=sys.stderr, flush=True)
        if step == job["steps"] or over:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"rows": rows, "params": sum(p.numel() for p in model.parameters()), "config": describe(m)}


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    if "overfit" in spec:
        return overfit(spec)
    C.set_threads(spec.get("threads", C.THREADS))
    import ase
    import mace
    import torch
    from mace import data as mace_data
    from mace.tools import torch_geometric
    from mace.tools.utils import AtomicNumberTable

    torch.set_num_threads(spec.get("threads", C.THREADS))
    torch.set_default_dtype(torch.float32)
    m = spec["model"]
    zs = sorted(C.SYMBOLS)
    z_table = AtomicNumberTable(zs)
    model = build_model(m, zs)
    params = sum(p.numel() for p in model.parameters())
    results: Dict[str, Any] = {}
    for w in spec["workloads"]:
        calls = []
        for g in C.read_frames(w["npz"]):
            graphs = []
            for coords, numbers, box in zip(g["coords"], g["numbers"], g["boxes"]):
                periodic = bool(box.any())
                atoms = ase.Atoms(numbers=numbers, positions=coords, cell=box if periodic else None, pbc=periodic)
                config = mace_data.config_from_atoms(atoms)
                graphs.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=m["r_max"]))
            batch = torch_geometric.Batch.from_data_list(graphs).to_dict()
            nf, nat = g["numbers"].shape
            calls.append((batch, nf, nat))
        n_frames = sum(c[1] for c in calls)
        n_atoms = sum(c[1] * c[2] for c in calls)
        try:
            if w["mode"] == "inference":
                model.eval()

                def step() -> None:
                    for batch, _, _ in calls:
                        out = model(dict(batch), training=False, compute_force=True)
                        out["forces"].sum().item()
            else:
                model.train()
                opt = torch.optim.Adam(model.parameters(), lr=1e-4)
                gen = torch.Generator().manual_seed(0)
                targets = [(torch.randn(nf, generator=gen), 0.1 * torch.randn(nf * nat, 3, generator=gen))
                           for _, nf, nat in calls]
                counter = [0]

                def step() -> None:
                    k = counter[0] % len(calls)
                    counter[0] += 1
                    batch, nf, nat = calls[k]
                    e_ref, f_ref = targets[k]
                    opt.zero_grad(set_to_none=True)
                    out = model(dict(batch), training=True, compute_force=True)
                    loss = torch.mean((out["energy"] / nat - e_ref / nat) ** 2) + torch.mean((out["forces"] - f_ref) ** 2)
                    loss.backward()
                    opt.step()
            timing = C.time_call(step, warmup=w.get("warmup", 1), repeats=w.get("repeats", 5),
                                 max_seconds=w.get("max_seconds"))
            results[w["name"]] = {"times": timing.times, "median": timing.median, "frames": n_frames,
                                  "atoms": n_atoms, "calls": len(calls),
                                  "frames_per_step": calls[0][1] if w["mode"] == "train" else n_frames}
        except RuntimeError as exc:
            results[w["name"]] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"params": params, "workloads": results, "version": mace.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "config": describe(m)}


if __name__ == "__main__":
    C.peer_main(run)
