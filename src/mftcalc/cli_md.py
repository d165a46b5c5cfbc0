"""``mftcalc md``: molecular dynamics of one structure with the model's force field (:mod:`mftcalc.workflows.md`),
optionally watched by a committee (DP-GEN's exploration: run, then ``mftcalc model-devi`` picks what to label)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional


def run_md_command(model: str, input_path: str, out: str, settings: Any, index: Optional[int] = None,
                   committee: Optional[List[str]] = None, dataset: Optional[str] = None, dtype: str = "float32",
                   device: str = "auto") -> Dict[str, Any]:
    """Run :func:`mftcalc.workflows.md.run_md` on structure ``index`` of ``input_path`` (the only one when the file
    holds one) and print its summary; a rerun with the same options continues the trajectory ``out`` from its
    last complete frame (a larger ``steps`` extends it; other changed options are refused)."""
    from pathlib import Path

    from mftcalc.calculators import CommitteeCalculator, MFTCalculator
    from mftcalc.cli_evaluate import read_input
    from mftcalc.cli_model import DTYPES
    from mftcalc.filehash import sha256_file
    from mftcalc.workflows.md import run_md
    if not out.lower().endswith((".extxyz", ".xyz")):
        raise SystemExit(f"--out {out}: the trajectory is written as extended XYZ; give a name ending in .extxyz")
    settings.check(committee=bool(committee))
    structures = read_input(input_path)
    if index is None and len(structures) != 1:
        raise SystemExit(f"{input_path} holds {len(structures)} structures; choose one with --index I (0-based)")
    k = 0 if index is None else index
    if not 0 <= k < len(structures):
        raise SystemExit(f"--index {index}: {input_path} holds {len(structures)} structures (0 to "
                         f"{len(structures) - 1})")
    atoms = structures[k].to_ase()
    atoms.calc = None
    members = [model, *(committee or [])]
    if committee:
        calc = CommitteeCalculator(members, device=device, dtype=DTYPES[dtype], dataset=dataset, drive="first")
    else:
        calc = MFTCalculator(model, device=device, dtype=DTYPES[dtype], dataset=dataset)
    record = {"models": [sha256_file(m) for m in members], "input": sha256_file(input_path), "index": k,
              "dataset": dataset, "dtype": dtype}
    summary = run_md(atoms, calc, settings, Path(out), record, committee=bool(committee))
    how = (f"stopped at step {summary['step']}: the committee's max_devi_f reached {settings.stop_devi:g} eV/Å"
           if summary["stopped"] else f"{summary['step']} steps")
    line = (f"{how} ({summary['step'] * settings.timestep / 1000:g} ps, {settings.ensemble} at "
            f"{settings.temperature:g} K); {summary['frames']} frames in {out}; mean temperature of the second half "
            f"{summary['temperature_K']:.1f} K")
    if summary["drift_eV_per_atom_per_ps"] is not None:
        line += f"; total-energy drift {1000 * summary['drift_eV_per_atom_per_ps']:.3g} meV/atom/ps"
    if committee:
        devi = summary["max_devi_f"]
        line += f"; committee max_devi_f {min(devi):.3g}–{max(devi):.3g} eV/Å (frames' info['max_devi_f'])"
    print(line)
    return summary


def _md(args: argparse.Namespace) -> int:
    from mftcalc.workflows.md import MDSettings
    settings = MDSettings(temperature=args.temperature, steps=args.steps, timestep=args.timestep,
                          interval=args.interval, ensemble=args.ensemble, friction=args.friction, taut=args.taut,
                          seed=args.seed, stop_devi=args.stop_devi)
    run_md_command(args.model, args.input, args.out, settings, args.index, args.committee, args.dataset, args.dtype,
                   args.device)
    return 0


def add_md_parser(subparsers: Any) -> None:
    """Register ``md``."""
    from mftcalc.cli_model import DATASET_HELP
    from mftcalc.workflows.md import ENSEMBLES
    p = subparsers.add_parser("md", help="molecular dynamics of one structure (ASE's NVE, Langevin or Bussi), "
                              "resumable, optionally watched by a committee (max_devi_f per frame)")
    p.add_argument("model", help="checkpoint (.pt) or TorchScript export with a force-field head (drives the run)")
    p.add_argument("input", help="the starting structure (extxyz, ASE db, CIF, POSCAR, ...); its momenta are used "
                   "if it has any, else Maxwell-Boltzmann velocities at --temperature")
    p.add_argument("--out", required=True, help="trajectory .extxyz (a frame every --interval steps: positions, "
                   "momenta, energy, forces; info md_step, time_fs, temperature_K, max_devi_f); rerun to continue")
    p.add_argument("--index", type=int, default=None, help="which structure of a multi-structure input (0-based)")
    p.add_argument("--ensemble", choices=ENSEMBLES, default="langevin", help="nve: velocity Verlet; langevin, "
                   "bussi: NVT")
    p.add_argument("--temperature", type=float, default=300.0, help="K (thermostat target and initial velocities)")
    p.add_argument("--steps", type=int, default=1000, help="total steps of the run (a rerun with more extends it)")
    p.add_argument("--timestep", type=float, default=0.5, help="fs")
    p.add_argument("--interval", type=int, default=10, help="steps between written frames")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--taut", type=float, default=100.0, help="Bussi thermostat time constant, fs")
    p.add_argument("--seed", type=int, default=0, help="initial velocities and the thermostat's random stream")
    p.add_argument("--committee", nargs="+", default=None, metavar="MODEL", help="other members: each frame then "
                   "carries the committee's max_devi_f (eV/Å); MODEL still drives, as LAMMPS' pair_style deepmd")
    p.add_argument("--stop-devi", type=float, default=None, help="stop at the first frame whose max_devi_f reaches "
                   "this (eV/Å; DP-GEN's trust_hi): past it the structures are no longer worth labelling")
    p.add_argument("--dataset", default=None, help=DATASET_HELP)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="model precision (float64 "
                   "for energy-conservation checks)")
    p.set_defaults(func=_md)
