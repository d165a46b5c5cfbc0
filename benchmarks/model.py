"""Energy+forces throughput of mftcalc beside deepmd-kit's DPA3 and MACE, measured in one run, printed as one table.

Workloads: (a) a batch of QM9 molecules (default 256 molecules of 18 atoms), molecules/s; (b) a rattled 1000-atom
Si diamond crystal (5×5×5 conventional cells, periodic), atoms/s. Rows: ours eager and TorchScript for each preset
(and each angle-block backend when the model has the switch); deepmd-kit DPA3 built with the same n_dim/e_dim/a_dim/
layers/cutoffs at sel 120/40 (truncates nothing here: the script counts the neighbours), at the paper's 1200/300 and
at the data's own maximum; MACE at a similar parameter count. The peers run in their own venvs (see
benchmarks/peers/README.md) through the subprocess workers ``_peer_deepmd.py`` and ``_peer_mace.py``.

Run from the repo root with mftcalc's venv::

    python benchmarks/model.py                      # full size (~15-30 min on 2 quiet cores)
    python benchmarks/model.py --quick              # smoke test (small sizes, ~3 min)
    python benchmarks/model.py --out benchmarks/results/model.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

from mftcalc.data import collate  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke test (16 molecules, 64-atom crystal)")
    p.add_argument("--out", help="also write the report as Markdown to this file")
    p.add_argument("--molecules", type=int, help="QM9 molecules in workload (a) (default 256; quick 16)")
    p.add_argument("--atoms", type=int, default=18, help="atoms per QM9 molecule (0 = any size; default 18)")
    p.add_argument("--crystal", type=int, help="Si supercell repeats of the 8-atom cell (default 5 = 1000 atoms; quick 2)")
    p.add_argument("--presets", default="dpa3-small,cpu", help="our presets (default dpa3-small,cpu; add paper)")
    p.add_argument("--peer-chunk", type=int, help="frames per deepmd-kit/MACE call (default 32; quick 8)")
    p.add_argument("--our-chunk", type=int, help="extra eager row of ours at this many molecules per call "
                                                 "(default: the peer chunk; 0 = none)")
    p.add_argument("--deepmd-presets", default="dpa3-small", help="presets whose sizes deepmd-kit DPA3 gets")
    p.add_argument("--deepmd-sel", default="120/40,1200/300,data",
                   help="deepmd-kit e_sel/a_sel values; 'data' = the largest neighbour counts in the workloads")
    p.add_argument("--mace-channels", type=int, default=80, help="MACE channels of 0e and 1o (80 -> ~350k params)")
    p.add_argument("--no-peers", action="store_true", help="ours only")
    p.add_argument("--no-script", action="store_true", help="skip the TorchScript rows")
    p.add_argument("--repeats", type=int, help="timed repeats, median reported (default 5; quick 2)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop repeating a row after this long (>= 2 repeats)")
    args = p.parse_args()
    quick = args.quick
    args.molecules = args.molecules or (16 if quick else 256)
    args.crystal = args.crystal or (2 if quick else 5)
    args.peer_chunk = args.peer_chunk or (8 if quick else 32)
    args.our_chunk = args.peer_chunk if args.our_chunk is None else args.our_chunk
    args.repeats = args.repeats or (2 if quick else 5)
    return args


def time_ours(model: Any, batches: List[Dict[str, torch.Tensor]], warmup: int, args: argparse.Namespace) -> C.Timing:
    def run() -> None:
        for b in batches:
            model(b, compute_forces=True, compute_stress=False)["forces"].sum().item()
    return C.time_call(run, warmup=warmup, repeats=args.repeats, max_seconds=args.max_seconds)


def our_rows(args: argparse.Namespace, mols: list, crystal: Any) -> tuple:
    """Rows of ours; returns (rows, notes)."""
    field, backends, note = C.angle_backends()
    one_call = [collate(mols, torch.float32)]
    chunks = [collate(mols[k:k + args.our_chunk], torch.float32) for k in range(0, len(mols), args.our_chunk)] \
        if args.our_chunk and args.our_chunk < len(mols) else None
    cryst = [collate([crystal], torch.float32)]
    rows, used = [], set()
    for preset in args.presets.split(","):
        for backend in backends:
            eager, params = C.build_ours(preset, field, backend)
            eager.eval()
            variants = [("eager", eager, one_call, f"{len(mols)}/call")]
            if chunks is not None:
                variants.append(("eager", eager, chunks, f"{args.our_chunk}/call"))
            if not args.no_script:
                scripted, why = C.script_model(eager, backend)
                variants.append(("TorchScript", scripted if scripted is not None else why, one_call, f"{len(mols)}/call"))
            for mode, model, mol_batches, per_call in variants:
                config = f"{preset} {C.size_text(preset)}; {mode}" + (f", angle {backend}" if backend else "") + \
                    f"; (a) {per_call}"
                print(f"  ours: {config} ...", flush=True)
                row = {"model": "mftcalc", "config": config, "params": params, "preset": preset}
                if isinstance(model, str):       # scripting failed: the reason goes in the row
                    row.update(a=None, a_text=model, b=None, b_text="–")
                    rows.append(row)
                    continue
                warmup = 3 if mode == "TorchScript" else 1   # the profiling executor optimises after 2 calls
                try:
                    ta = time_ours(model, mol_batches, warmup, args)
                    row["a"] = len(mols) / ta.median
                    row["a_text"] = C.fmt_rate(row["a"])
                    if mol_batches is one_call:
                        tb = time_ours(model, cryst, warmup, args)
                        row.update(b=crystal.n_atoms / tb.median, b_text=C.fmt_rate(crystal.n_atoms / tb.median))
                    else:
                        row.update(b=None, b_text="–")
                    used.add(C.angle_backend_in_use())
                except Exception as exc:  # e.g. the fused op failing: say so in the row
                    row.update(a=None, a_text=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}",
                               b=None, b_text="–")
                rows.append(row)
                print(f"    {row['a_text']} molecules/s, {row['b_text']} atoms/s; peak memory so far "
                      f"{C.peak_rss_gb():.1f} GB", flush=True)
    notes = [f"mftcalc: {note}; angle backend recorded by mftcalc.kernels.angle: {', '.join(sorted(used))}",
             "mftcalc: float32; the neighbour search runs inside the timed call (TorchScript: its pure-torch "
             "search); batches are collated before timing"]
    return rows, notes


def peer_rows(args: argparse.Namespace, tmp: Path, data_sel: tuple) -> tuple:
    """Rows of deepmd-kit and MACE; returns (rows, notes)."""
    spec_workloads = [
        {"name": "a", "npz": str(tmp / "qm9.npz"), "mode": "inference", "warmup": 1, "repeats": args.repeats,
         "max_seconds": args.max_seconds},
        {"name": "b", "npz": str(tmp / "crystal.npz"), "mode": "inference", "warmup": 1, "repeats": args.repeats,
         "max_seconds": args.max_seconds}]
    rows, notes, versions = [], [], {}
    for preset in args.deepmd_presets.split(","):
        for e_sel, a_sel in C.parse_sels(args.deepmd_sel, data_sel):
            tag = "data max" if (e_sel, a_sel) == tuple(data_sel) and "data" in args.deepmd_sel else ""
            config = f"{preset} {C.size_text(preset)}; sel {e_sel}/{a_sel}{' (' + tag + ')' if tag else ''}, " \
                     f"dynamic sel; {args.peer_chunk} frames/call"
            print(f"  deepmd-kit: {config} ...", flush=True)
            res = C.run_peer("deepmd", {"model": C.deepmd_spec(preset, e_sel, a_sel), "workloads": spec_workloads})
            a, a_text = C.peer_rate(res, "a", "frames")
            b, b_text = C.peer_rate(res, "b", "atoms")
            b_text = "–" if res.get("status") != "ok" else b_text   # the reason is in (a)
            rows.append({"model": "deepmd-kit DPA3", "config": config, "params": res.get("params", "–"),
                         "preset": preset, "sel": (e_sel, a_sel), "a": a, "a_text": a_text, "b": b, "b_text": b_text})
            if res.get("status") == "ok":
                versions["deepmd"] = f"deepmd-kit {res['version']} (torch {res['torch']}, {res['threads']} threads, " \
                                     f"compiled op library {res['op_library']})"
    mace_model = {"channels": args.mace_channels, "max_L": 1, "num_interactions": 2, "correlation": 3,
                  "r_max": 6.0, "max_ell": 3}
    print("  MACE ...", flush=True)
    res = C.run_peer("mace", {"model": mace_model, "workloads": spec_workloads})
    a, a_text = C.peer_rate(res, "a", "frames")
    b, b_text = C.peer_rate(res, "b", "atoms")
    b_text = "–" if res.get("status") != "ok" else b_text
    config = res.get("config", f"{args.mace_channels}x0e+{args.mace_channels}x1o, 2 interactions") + \
        f"; {args.peer_chunk} frames/call"
    rows.append({"model": "MACE", "config": config, "params": res.get("params", "–"), "preset": None,
                 "a": a, "a_text": a_text, "b": b, "b_text": b_text})
    if res.get("status") == "ok":
        versions["mace"] = f"mace-torch {res['version']} (torch {res['torch']}, {res['threads']} threads)"
    notes.append("deepmd-kit: " + versions.get("deepmd", C.NOT_INSTALLED if C.peer_python("deepmd") is None else "failed")
                 + "; DPA3 in float32 with SiLUT(10), residual updates 0.1, no angle compression, fitting net "
                   "128-128 (our head's widths), `use_dynamic_sel` + `smooth_edge_update` (much faster on CPU than "
                   "static padded sel); frames in one deepmd-kit call must share the atom count, so it runs "
                   f"{args.peer_chunk}-frame calls of molecules grouped by atom count; its own neighbour list is "
                   "inside the timed call")
    notes.append("MACE: " + versions.get("mace", C.NOT_INSTALLED if C.peer_python("mace") is None else "failed")
                 + f"; ScaleShiftMACE, {args.peer_chunk} molecules per batched call; its graphs (matscipy neighbour "
                   "lists) are built before timing, so MACE's times exclude the neighbour search")
    return rows, notes


def main() -> None:
    args = parse_args()
    C.set_threads()
    load_before = C.load_average()
    print(f"threads {torch.get_num_threads()}; load average {load_before}", flush=True)
    mols = C.qm9_structures(args.molecules, args.atoms)
    crystal = C.si_crystal(args.crystal)
    e_cut = max(C.backbone_cutoffs(p)[0] for p in args.presets.split(",") + args.deepmd_presets.split(","))
    a_cut = max(C.backbone_cutoffs(p)[1] for p in args.presets.split(",") + args.deepmd_presets.split(","))
    nb_mol = C.max_neighbours(mols, [e_cut, a_cut])
    nb_cry = C.max_neighbours([crystal], [e_cut, a_cut])
    data_sel = (max(nb_mol[0], nb_cry[0]), max(nb_mol[1], nb_cry[1]))
    nb_text = (f"largest neighbour counts within {e_cut:g}/{a_cut:g} Å: (a) molecules {nb_mol[0]}/{nb_mol[1]}, "
               f"(b) crystal {nb_cry[0]}/{nb_cry[1]}")
    if not args.quick:
        whole = C.qm9_max_neighbours(e_cut, a_cut)
        nb_text += f", all of QM9 {whole[0]}/{whole[1]}"
    print(nb_text, flush=True)

    rows, notes = our_rows(args, mols, crystal)
    if not args.no_peers:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            C.write_frames(tmp / "qm9.npz", C.group_equal_size(mols, args.peer_chunk))
            C.write_frames(tmp / "crystal.npz", [[crystal]])
            prows, pnotes = peer_rows(args, tmp, data_sel)
        rows += prows
        notes += pnotes

    # ratio: to deepmd-kit at sel 120/40 with the same preset, else with dpa3-small (marked †)
    ref = {r["preset"]: r for r in rows if r["model"].startswith("deepmd") and r.get("sel") == (120, 40)
           and (r["a"] is not None or r["b"] is not None)}
    table = []
    for r in rows:
        base = ref.get(r["preset"]) or ref.get("dpa3-small")
        mark = "" if base is None or base.get("preset") == r["preset"] else " †"
        ratio = "–" if base is None else \
            f"{C.fmt_ratio(r['a'], base['a'])} / {C.fmt_ratio(r['b'], base['b'])}{mark}"
        params = f"{r['params']:,}" if isinstance(r["params"], int) else r["params"]
        table.append([r["model"], r["config"], params, r["a_text"], r["b_text"], ratio])
    headers = ["model", "config", "params", f"(a) molecules/s E+F ({len(mols)} QM9, {args.atoms or 'mixed'} atoms)",
               f"(b) atoms/s E+F ({crystal.n_atoms}-atom Si crystal)", "ratio to deepmd-kit sel 120/40 (a) / (b)"]
    text = "\n".join([
        C.report_header("Energy+forces throughput: mftcalc vs deepmd-kit DPA3 and MACE (CPU)", sys.argv, load_before),
        "", C.markdown_table(headers, table, right=[2, 3, 4, 5]), "",
        f"- workloads: (a) {len(mols)} QM9 molecules ({'all with ' + str(args.atoms) + ' atoms' if args.atoms else 'mixed sizes'}, "
        f"fixed random pick), no periodicity; (b) Si diamond, {args.crystal}×{args.crystal}×{args.crystal} conventional "
        f"cells = {crystal.n_atoms} atoms, rattled by 0.05 Å, periodic",
        f"- {nb_text}; so deepmd-kit sel 120/40 "
        f"{'truncates nothing' if data_sel[0] <= 120 and data_sel[1] <= 40 else 'TRUNCATES neighbours here'}, "
        f"and the 'data max' rows use sel {data_sel[0]}/{data_sel[1]}",
        *[f"- {n}" for n in notes],
        f"- timing: warm-up call(s) (3 for TorchScript), then the median of up to {args.repeats} repeats "
        f"(fewer if a row passes {args.max_seconds:g} s); ratios are throughput / deepmd-kit's at sel 120/40 with the same "
        "preset († = deepmd-kit dpa3-small, i.e. different hyperparameters); target: ≥ 2× at equal hyperparameters "
        "(dpa3-small rows)",
    ])
    C.write_report(args.out, text)


if __name__ == "__main__":
    main()
