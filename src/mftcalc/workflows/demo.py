"""``mftcalc demo``: relax the bundled example molecules with the shipped model, predict, print and plot."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional



def run_demo(model: Optional[str], out_dir: Path) -> None:
    """Relax-then-predict the bundled molecules; prints a table, writes ``results.csv`` and ``demo.png``."""
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.workflows.screening import default_model_path, example_path, screen

    model_path = Path(model) if model else default_model_path()
    out_dir.mkdir(parents=True, exist_ok=True)
    handle = ModelHandle.load(model_path)
    csv_path = out_dir / "results.csv"
    if csv_path.exists():
        csv_path.unlink()
    start = time.perf_counter()
    rows = screen(example_path(), handle, csv_path, do_relax=True, fmax=0.05, steps=300, progress=False)
    wall = time.perf_counter() - start
    props = handle.property_names
    print(f"model: {model_path} (heads: {', '.join(handle.heads)}); relax-then-predict of "
          f"{len(rows)} bundled molecules in {wall:.1f} s")
    header = f"{'molecule':10s} {'formula':8s} {'energy (eV)':>12s} {'fmax (eV/Å)':>12s} {'steps':>6s} {'conv':>5s}"
    header += "".join(f" {p + ' (' + handle.unit(p) + ')':>18s}" for p in props)
    print(header)
    for r in rows:
        line = (f"{str(r['name']):10s} {str(r['formula']):8s} {float(r['energy_eV']):12.3f} "
                f"{float(r['fmax_eV_A']):12.3f} {int(r['steps']):6d} {str(r['converged']):>5s}")
        line += "".join(f" {float(r[p]):18.4f}" for p in props)
        print(line)
    _plot(rows, props, handle, out_dir / "demo.png")
    print(f"wrote {csv_path} and {out_dir / 'demo.png'}")


def _plot(rows, props, handle, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [str(r["name"]) for r in rows]
    panels = 1 + len(props)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    axes[0, 0].bar(names, [int(r["steps"]) for r in rows], color="tab:blue")
    axes[0, 0].set_ylabel("FIRE steps to fmax 0.05 eV/Å")
    for k, p in enumerate(props, start=1):
        axes[0, k].bar(names, [float(r[p]) for r in rows], color="tab:orange")
        axes[0, k].set_ylabel(f"{p} ({handle.unit(p)})")
    for ax in axes[0]:
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
