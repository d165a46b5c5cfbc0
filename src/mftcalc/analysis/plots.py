"""Every figure mftcalc writes (PNG, matplotlib's Agg backend): learning curves, parity plots, data efficiency,
phonon bands and DOS, the demo's bars, t-SNE maps and a committee's force deviation.

The functions take plain arrays or files and write one PNG each; what they show is computed by their callers
(training, fine-tuning, bench, ``mftcalc evaluate``, the phonon and demo workflows, ``mftcalc analyze``).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_learning_curves(out_dir: str | Path) -> Optional[Path]:
    """Plot the training loss (running median) and the validation errors from ``train.csv``/``val.csv``.

    Panels: training loss; validation force MAE (eV/Å) per dataset; validation energy MAE per atom (eV) or
    property MAE per task. Written to ``learning_curve.png``.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    train_csv, val_csv = out_dir / "train.csv", out_dir / "val.csv"
    if not train_csv.exists():
        return None
    with open(train_csv, newline="") as fh:
        train = list(csv.DictReader(fh))
    val: List[Dict[str, str]] = []
    if val_csv.exists():
        with open(val_csv, newline="") as fh:
            val = list(csv.DictReader(fh))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    steps = np.array([float(r["step"]) for r in train])
    loss = np.array([float(r["loss"]) for r in train])
    window = max(5, len(loss) // 30)
    smooth = np.array([np.median(loss[max(0, k - window):k + 1]) for k in range(len(loss))])
    axes[0].semilogy(steps, loss, lw=0.4, alpha=0.4, color="gray")
    axes[0].semilogy(steps, smooth, lw=1.2, color="black", label=f"running median ({window} rows)")
    axes[0].set(xlabel="step", ylabel="training loss")
    axes[0].legend(fontsize=7)
    panels = [(axes[1], ("/f_mae",), "validation force MAE (eV/Å)"),
              (axes[2], ("/e_mae_per_atom", "/mae"), "validation energy MAE (eV/atom) / property MAE")]
    if val:
        vsteps = np.array([float(r["step"]) for r in val])
        for ax, suffixes, label in panels:
            for key in val[-1]:
                if key.startswith("val/") and key.endswith(suffixes):
                    values = np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in val])
                    ax.semilogy(vsteps, values, marker="o", ms=3, lw=1, label=key[4:].rsplit("/", 1)[0])
            ax.set(xlabel="step", ylabel=label)
        handles, labels = axes[1].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[2].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12 if val else 0, 1, 1))
    path = out_dir / "learning_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_parity(parity: Dict[str, np.ndarray], path: Path, title: str, unit: str) -> None:
    """Predicted vs true property per evaluation set (``<part>_true`` / ``<part>_pred`` arrays [n] in ``unit``),
    RMSE in the legend."""
    plt = _pyplot()
    parts = [k[: -len("_true")] for k in parity if k.endswith("_true")]
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    lo = min(float(parity[f"{p}_true"].min()) for p in parts)
    hi = max(float(parity[f"{p}_true"].max()) for p in parts)
    for part in parts:
        t, y = parity[f"{part}_true"], parity[f"{part}_pred"]
        rmse = float(np.sqrt(np.mean((y - t) ** 2)))
        ax.scatter(t, y, s=3, alpha=0.4, label=f"{part} (RMSE {rmse:.4g})")
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"true ({unit})")
    ax.set_ylabel(f"predicted ({unit})")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_forcefield_parity(parity: Sequence[tuple], path: str | Path) -> None:
    """Energy and force parity of ``mftcalc evaluate``: one ``(name, e_ref, e_pred, f_ref, f_pred)`` per file,
    energies [n] in eV/atom (shown relative to the reference mean), force components [m] in eV/Å."""
    plt = _pyplot()
    fig, (ax_e, ax_f) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, e_ref, e_pred, f_ref, f_pred in parity:
        if e_ref.size:
            ax_e.scatter(e_ref - e_ref.mean(), e_pred - e_ref.mean(), s=4, label=name)
        if f_ref.size:
            ax_f.scatter(f_ref, f_pred, s=2, alpha=0.4, label=name)
    for ax, label in [(ax_e, "energy − mean (eV/atom)"), (ax_f, "force component (eV/Å)")]:
        lims = ax.get_xlim()
        ax.plot(lims, lims, "k--", lw=0.8)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_data_efficiency(results: Dict[str, Dict], path: Path) -> None:
    """ID and OOD error against the number of training molecules, per (task, strategy) with cells at two or more
    training sizes (QM9 cells of a bench ``results.json``; single-size cells of other grids sharing the results
    file are left out)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series: Dict[tuple, List[tuple]] = {}
    for key, r in results.items():
        if key.startswith("_") or "ood_test" not in r:
            continue
        task, strategy, _, _ = key.split("|")
        series.setdefault((task, strategy), []).append((r["n_train"], r["id_test"]["rmse"], r["ood_test"]["rmse"]))
    series = {key: pts for key, pts in series.items() if len({p[0] for p in pts}) >= 2}
    for (task, strategy), pts in sorted(series.items()):
        pts.sort()
        n = sorted({p[0] for p in pts})
        for ax, col in ((axes[0], 1), (axes[1], 2)):
            ax.loglog(n, [np.mean([p[col] for p in pts if p[0] == k]) for k in n], marker="o",
                      label=f"{task} {strategy}")
    for ax, title in zip(axes, ("ID test RMSE", "OOD test RMSE")):
        ax.set_xlabel("training molecules")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_phonons(ph: Any, path: str, npoints: int = 51, band: Optional[str] = None) -> None:
    """Band structure and DOS of a ``phonopy.Phonopy`` (from :func:`mftcalc.workflows.phonons.phonons`, on its
    q-mesh) in one PNG at ``path``; frequencies in THz.

    ``band``: ASE path string (see :func:`mftcalc.workflows.phonons.band_path`; default ASE's standard path of the
    lattice), ``npoints`` q-points on its longest segment.
    """
    from mftcalc.workflows.phonons import band_path
    _pyplot()
    qpoints, connections, labels = band_path(ph, band, npoints)
    ph.run_band_structure(qpoints, path_connections=connections, labels=labels)
    ph.run_total_dos()
    plt = ph.plot_band_structure_and_dos()
    plt.gcf().axes[0].set_ylabel("Frequency (THz)")
    plt.savefig(path, dpi=110)
    plt.close("all")


def plot_bars(names: Sequence[str], panels: Dict[str, Sequence[float]], path: Path,
              errors: Optional[Dict[str, Sequence[float]]] = None) -> None:
    """One bar panel per entry of ``panels`` (y-axis label -> one value per name), side by side (the demo's
    relaxation steps and predicted properties per molecule); ``errors`` (y-axis label -> half-widths) draws
    error bars on a panel (a property's prediction interval)."""
    plt = _pyplot()
    errors = errors or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    for k, (label, values) in enumerate(panels.items()):
        yerr = list(errors[label]) if label in errors else None
        axes[0, k].bar(list(names), list(values), color="tab:blue" if k == 0 else "tab:orange", yerr=yerr,
                       capsize=3 if yerr else 0)
        axes[0, k].set_ylabel(label)
    for ax in axes[0]:
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_embedding(embedding: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """A 2-D embedding [n, 2] (t-SNE of atomic features) coloured by label [n], the 12 most frequent labels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    names: List[str] = sorted(set(labels.tolist()), key=lambda n: -int((labels == n).sum()))
    for name in names[:12]:
        sel = labels == name
        ax.scatter(embedding[sel, 0], embedding[sel, 1], s=3, label=f"{name} ({int(sel.sum())})")
    ax.set_title(title)
    ax.legend(fontsize=6, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_model_deviation(max_devi_f: np.ndarray, path: str | Path, unit: str = "eV/Å",
                         trust: Optional[Sequence[float]] = None, max_error_f: Optional[np.ndarray] = None) -> None:
    """The committee's ``max_devi_f`` per structure ([n_frames]): its histogram (log bins), with DP-GEN's trust
    bounds ``trust`` = (lo, hi) as lines; beside it, where ``max_error_f`` ([n_frames] eV/Å, NaN where a structure
    has no reference forces) has values, the deviation against the committee mean's largest force error."""
    plt = _pyplot()
    labelled = None if max_error_f is None else np.isfinite(max_error_f) & (max_devi_f > 0)
    panels = 2 if labelled is not None and labelled.any() else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    positive = max_devi_f[max_devi_f > 0]
    if positive.size:
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, 40)
        ax.hist(positive, bins=bins, color="C0")
        ax.set_xscale("log")
    for bound, name in zip(trust or (), ("trust_lo", "trust_hi")):
        ax.axvline(bound, color="k", ls="--", lw=0.8)
        ax.text(bound, ax.get_ylim()[1] * 0.95, f" {name}", fontsize=7, va="top")
    ax.set(xlabel=f"max_devi_f ({unit})", ylabel="structures", title=f"{len(max_devi_f)} structures")
    if panels == 2:
        ax = axes[0, 1]
        ax.scatter(max_devi_f[labelled], max_error_f[labelled], s=6, alpha=0.6)
        ax.set(xscale="log", yscale="log", xlabel=f"max_devi_f ({unit})",
               ylabel="largest force error of the committee mean (eV/Å)", title="against the reference forces")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
