"""Peer worker: deepmd-kit DPA3 energy+forces and force-training timings (run by the deepmd venv's python).

Usage (by ``_common.run_peer``): ``/work/peers/deepmd/bin/python benchmarks/_peer_deepmd.py SPEC.json``; prints one
JSON line. SPEC: ``{"model": {...}, "workloads": [{"name", "npz", "mode": "inference"|"train", "warmup",
"repeats", "max_seconds"}], "threads": 2}``; ``model`` has ``n_dim e_dim a_dim nlayers e_rcut e_rcut_smth a_rcut
a_rcut_smth e_sel a_sel dynamic_sel fitting_neuron``. Frames of one npz group share the atom count and go into
one call ``model(coord[nf, nat*3], atype[nf, nat], box)``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def dpa3_config(m: Dict[str, Any]) -> Dict[str, Any]:
    """deepmd-kit model dict of a DPA3 with the given sizes: float32, SiLUT(10), residual updates with 0.1, no
    angle compression (as mftcalc's backbone); dynamic sel needs smooth_edge_update (deepmd-kit requires it)."""
    repflow = {
        "n_dim": m["n_dim"], "e_dim": m["e_dim"], "a_dim": m["a_dim"], "nlayers": m["nlayers"],
        "e_rcut": m["e_rcut"], "e_rcut_smth": m["e_rcut_smth"], "e_sel": m["e_sel"],
        "a_rcut": m["a_rcut"], "a_rcut_smth": m["a_rcut_smth"], "a_sel": m["a_sel"],
        "axis_neuron": 4, "update_angle": True, "update_style": "res_residual", "update_residual": 0.1,
        "update_residual_init": "const", "smooth_edge_update": bool(m["dynamic_sel"]),
        "use_dynamic_sel": bool(m["dynamic_sel"]), "sel_reduce_factor": 10.0,
    }
    return {
        "type_map": C.TYPE_MAP,
        "descriptor": {"type": "dpa3", "repflow": repflow, "activation_function": "silut:10.0",
                       "use_tebd_bias": False, "precision": "float32", "concat_output_tebd": False, "seed": 1},
        "fitting_net": {"neuron": list(m["fitting_neuron"]), "resnet_dt": True, "precision": "float32",
                        "activation_function": "silut:10.0", "seed": 1},
    }


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np
    import torch

    C.set_threads(spec.get("threads", C.THREADS))   # before deepmd reads its thread variables
    import deepmd
    from deepmd.pt.model.model import get_model

    torch.set_num_threads(spec.get("threads", C.THREADS))
    model = get_model(dpa3_config(spec["model"]))
    params = sum(p.numel() for p in model.parameters())
    index = {C.TYPE_MAP.index(C.SYMBOLS[z]): z for z in C.SYMBOLS}
    to_type = np.zeros(119, dtype=np.int64)
    for t, z in index.items():
        to_type[z] = t
    results: Dict[str, Any] = {}
    for w in spec["workloads"]:
        calls = []
        for g in C.read_frames(w["npz"]):
            nf, nat = g["numbers"].shape
            coord = torch.tensor(g["coords"].reshape(nf, nat * 3), dtype=torch.float64)
            atype = torch.tensor(to_type[g["numbers"]])
            box = None if not g["boxes"].any() else torch.tensor(g["boxes"].reshape(nf, 9), dtype=torch.float64)
            calls.append((coord, atype, box, nf, nat))
        n_frames = sum(c[3] for c in calls)
        n_atoms = sum(c[3] * c[4] for c in calls)
        try:
            if w["mode"] == "inference":
                model.eval()

                def step() -> None:
                    for coord, atype, box, _, _ in calls:
                        out = model(coord, atype, box=box)
                        out["force"].sum().item()
            else:
                model.train()
                opt = torch.optim.Adam(model.parameters(), lr=1e-4)
                gen = torch.Generator().manual_seed(0)
                targets = [(torch.randn(nf, 1, generator=gen, dtype=torch.float64),
                            0.1 * torch.randn(nf, nat, 3, generator=gen, dtype=torch.float64)) for _, _, _, nf, nat in calls]
                counter = [0]

                def step() -> None:
                    k = counter[0] % len(calls)
                    counter[0] += 1
                    coord, atype, box, nf, nat = calls[k]
                    e_ref, f_ref = targets[k]
                    opt.zero_grad(set_to_none=True)
                    out = model(coord, atype, box=box)
                    loss = torch.mean((out["energy"].view(nf, 1) / nat - e_ref / nat) ** 2) + \
                        torch.mean((out["force"].view(nf, nat, 3) - f_ref) ** 2)
                    loss.backward()
                    opt.step()
            timing = C.time_call(step, warmup=w.get("warmup", 1), repeats=w.get("repeats", 5),
                                 max_seconds=w.get("max_seconds"))
            results[w["name"]] = {"times": timing.times, "median": timing.median, "frames": n_frames,
                                  "atoms": n_atoms, "calls": len(calls),
                                  "frames_per_step": calls[0][3] if w["mode"] == "train" else n_frames}
        except RuntimeError as exc:  # e.g. out of memory: the row says so, the other workloads still run
            results[w["name"]] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    return {"params": params, "workloads": results, "version": deepmd.__version__, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "op_library": "disabled" if not _op_library_loaded() else "loaded"}


def _op_library_loaded() -> bool:
    import deepmd

    return (Path(deepmd.__file__).parent / "lib" / "libdeepmd_op_pt.so").exists()


if __name__ == "__main__":
    C.peer_main(run)
