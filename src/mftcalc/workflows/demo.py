"""``mftcalc demo``: relax the bundled example molecules with the shipped model, predict, print and plot."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional


def run_demo(model: Optional[str], out_dir: Path, dataset: Optional[str] = None,
             device: str = "cpu") -> List[Dict[str, Any]]:
    """Relax-then-predict the bundled molecules; prints a table, writes ``results.csv`` and ``demo.png``; returns
    the rows. ``dataset``: force-field dataset (default: ``xtb_qm9`` when the model has it, since the bundled
    molecules are QM9 molecules, else the per-structure rule of :mod:`mftcalc.calculators.domains`). ``device``:
    ``cpu``, ``cuda[:k]`` or ``auto`` (:meth:`ModelHandle.load`)."""
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.workflows.screening import (ENERGY, FMAX, default_model_path, example_path, property_column,
                                             results_files, screen)

    model_path = Path(model) if model else default_model_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = ModelHandle.load(model_path, dataset=dataset, device=device)
    if dataset is None and "xtb_qm9" in handle.dataset_names:
        handle.dataset = handle.dataset_names.index("xtb_qm9")
    chosen = "inferred per molecule" if handle.dataset is None else handle.dataset_names[handle.dataset]
    csv_path = out_dir / "results.csv"
    for path in results_files(csv_path):                 # the demo starts over every time
        if path.exists():
            path.unlink()
    start = time.perf_counter()
    rows = screen(example_path(), handle, csv_path, do_relax=True, fmax=0.05, steps=300, progress=False)
    wall = time.perf_counter() - start
    props = handle.property_names
    print(f"model: {model_path} (heads: {', '.join(handle.heads)}; force-field dataset: {chosen}); "
          f"relax-then-predict of {len(rows)} bundled molecules in {wall:.1f} s")
    header = f"{'molecule':10s} {'formula':8s} {'energy (eV)':>12s} {'fmax (eV/Å)':>12s} {'steps':>6s} {'conv':>5s}"
    header += "".join(f" {_titled(p, handle.unit(p)):>18s}" for p in props)
    print(header)
    for r in rows:
        if r["error"]:
            print(f"{str(r['name']):10s} {str(r['formula']):8s} failed: {r['error']}")
            continue
        line = (f"{str(r['name']):10s} {str(r['formula']):8s} {float(r[ENERGY]):12.3f} "
                f"{float(r[FMAX]):12.3f} {int(r['steps']):6d} {str(r['converged']):>5s}")
        line += "".join(f" {float(r[property_column(handle, p)]):18.4f}" for p in props)
        print(line)
    from mftcalc.analysis.plots import plot_bars
    done = [r for r in rows if not r["error"]]
    panels = {"FIRE steps to fmax 0.05 eV/Å": [int(r["steps"]) for r in done]}
    from mftcalc.model.intervals import intervals_by_property   # an interval: error bars on the property it bounds
    bounds = {of: p for of, p in intervals_by_property(handle.heads).items() if p in props and of in props}
    label = {p: _titled(p, handle.unit(p)) + (f" ± {bounds[p]}" if p in bounds else "") for p in props}
    panels.update({label[p]: [float(r[property_column(handle, p)]) for r in done] for p in props
                   if p not in bounds.values()})
    errors = {label[of]: [float(r[property_column(handle, p)]) for r in done] for of, p in bounds.items()}
    plot_bars([str(r["name"]) for r in done], panels, out_dir / "demo.png", errors)
    print(f"wrote {csv_path} and {out_dir / 'demo.png'}")
    return rows


def _titled(name: str, unit: str) -> str:
    """``gap (Hartree)``; a unitless head (the applicability score) by its name alone."""
    return f"{name} ({unit})" if unit else name
