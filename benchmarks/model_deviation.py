"""Does the committee's force deviation (``mftcalc model-devi``, deepmd-kit's ``max_devi_f``) flag the structures
whose forces are wrong? Measured on the prior's own held-out data and on the same molecules pushed off it.

Committee: four states of the shipped prior's lineage, trained on the same data (`docs/pretraining.md`): the
cycle-3 end (step 126,001) and three cycle-4 arms that start from it — the 3-layer control, the 6-layer model
grown from it, and the Huber arm's weight average (`models/pretrained.pt`). They share an ancestor and their
batches, so they disagree less than a DP-GEN committee trained from independent seeds would: a test of the
indicator under unfavourable conditions.

Sets: the held-out structures shipped with the prior (`models/pretrained_heldout.extxyz.gz`: GFN2-xTB conformers
of molecules never trained on, and the DFT sets' held-out structures), and 150 of the xTB conformers rattled
further (Gaussian displacements of 0.1 and 0.2 Å per Cartesian component) and relabelled with GFN2-xTB (tblite).

Reports, per set: median largest force deviation and median largest force error of the committee mean per
structure, their Spearman rank correlation, and which fraction of each set a DP-GEN trust bound set at the 95th
percentile of the held-out molecules' deviation flags; a scatter plot. ``OMP_NUM_THREADS=1 python
benchmarks/model_deviation.py --report benchmarks/results/model_deviation.md``; reads only the repository's files.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, load_average, markdown_table, report_header, write_report  # noqa: E402

STATES = {"cycle 3 end (step 126,001)": "checkpoints/pretrain/state.pt",
          "cycle 4 control (3 layers)": "checkpoints/pretrain3_control/state.pt",
          "cycle 4, 6 layers (grown)": "checkpoints/pretrain6/state.pt"}


def committee_files(folder: Path) -> dict:
    """The committee as checkpoints: each training state's weights in the shipped prior's model (metadata and
    dataset domains), the 6-layer state in the prior grown by three layers."""
    import torch

    from mftcalc.model.checkpoint import load_model, read_checkpoint, save_model
    from mftcalc.model.grow import grow_layers
    prior = REPO / "models" / "pretrained.pt"
    metadata = read_checkpoint(prior)["metadata"]
    files = {"Huber arm, weight average (models/pretrained.pt)": str(prior)}
    for name, state_path in STATES.items():
        weights = torch.load(REPO / state_path, map_location="cpu", weights_only=False)["model"]
        model = load_model(prior)
        if any(".layers.3." in k for k in weights):
            model = grow_layers(model, 3)
        model.load_state_dict(weights)
        path = folder / (Path(state_path).parent.name + ".pt")
        save_model(model, path, metadata)
        files[name] = str(path)
    return files


def rattled_sets(molecules: list, sigmas=(0.1, 0.2), n: int = 150, seed: int = 0) -> dict:
    """``n`` of the held-out xTB conformers displaced by N(0, σ²) Å per component and relabelled by GFN2-xTB;
    a draw with two atoms within 0.6 Å is redrawn."""
    from mftcalc.labelling.xtb import XTBError, label, single_threaded
    rng = np.random.default_rng(seed)
    out = {}
    with single_threaded():
        for sigma in sigmas:
            frames = []
            for s in molecules[:n]:
                for _ in range(20):
                    x = s.positions + rng.normal(scale=sigma, size=s.positions.shape)
                    d = np.linalg.norm(x[:, None] - x[None], axis=-1) + np.eye(len(x)) * 9
                    if d.min() > 0.6:
                        break
                try:
                    frames.append(label(s.with_labels(positions=x, energy=None, forces=None)))
                except XTBError:
                    continue
            out[f"xTB conformers + {sigma:g} Å rattle"] = frames
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--report", default=None)
    parser.add_argument("--plot", default=None, help="scatter plot (default: beside the report, .png)")
    args = parser.parse_args()
    load_before = load_average()
    from scipy.stats import spearmanr

    from mftcalc.data.io import read_structures
    from mftcalc.workflows.model_deviation import model_deviation
    held = read_structures(REPO / "models" / "pretrained_heldout.extxyz.gz")
    by_set: dict = {}
    for s in held:
        key = "held-out xTB conformers" if s.info.get("dataset") == "xtb_qm9" else "held-out DFT structures (15 sets)"
        by_set.setdefault(key, []).append(s)
    t0 = time.time()
    by_set.update(rattled_sets(by_set["held-out xTB conformers"]))
    label_s = time.time() - t0
    with tempfile.TemporaryDirectory() as folder:
        files = committee_files(Path(folder))
        t0 = time.time()
        results = {name: model_deviation(frames, list(files.values())) for name, frames in by_set.items()}
        devi_s = time.time() - t0
    n_frames = sum(len(f) for f in by_set.values())
    trust = float(np.percentile(results["held-out xTB conformers"].max_devi_f, 95))
    rows = []
    for name, r in results.items():
        rho = spearmanr(r.max_devi_f, r.max_error_f).statistic
        moving = r.max_devi_f > 0                 # an isolated atom: no force, no deviation
        rows.append([name, len(r), f"{np.median(r.max_devi_f):.3f}", f"{np.median(r.max_error_f):.3f}",
                     f"{np.median(r.max_error_f[moving] / r.max_devi_f[moving]):.1f}", f"{rho:.2f}",
                     f"{100 * np.mean(r.max_devi_f >= trust):.0f} %"])
    pooled = np.concatenate([r.max_devi_f for r in results.values()])
    pooled_err = np.concatenate([r.max_error_f for r in results.values()])
    lines = [report_header("Committee force deviation as an error indicator (mftcalc model-devi)", sys.argv,
                           load_before), "",
             "- committee: " + "; ".join(f"{k} (`{Path(v).name}`)" for k, v in files.items()),
             f"- {n_frames} structures; xTB relabelling of the rattled sets {label_s:.0f} s; the committee's "
             f"deviation over all sets {devi_s:.0f} s (four models, float32)",
             f"- trust bound: the 95th percentile of max_devi_f on the held-out xTB conformers, {trust:.3f} eV/Å",
             "",
             markdown_table(["set", "structures", "median max_devi_f (eV/Å)", "median max error (eV/Å)",
                             "median error / deviation (deviation > 0)", "Spearman ρ (deviation, error)", "flagged by the bound"],
                            rows, right=range(1, 7)),
             "",
             f"Pooled over the sets: Spearman ρ = {spearmanr(pooled, pooled_err).statistic:.2f}. Max error: the "
             "largest ‖⟨F_i⟩ − F_i,ref‖ of a structure, ⟨·⟩ the committee mean."]
    text = "\n".join(lines)
    write_report(args.report, text)
    plot = args.plot or (str(Path(args.report).with_suffix(".png")) if args.report else None)
    if plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 5))
        for name, r in reversed(list(results.items())):        # the held-out molecules drawn last, on top
            ax.scatter(r.max_devi_f, r.max_error_f, s=6, alpha=0.5, label=name)
        ax.axvline(trust, color="k", lw=0.8, ls="--", label="trust bound (95th pct., held-out xTB)")
        ax.set(xscale="log", yscale="log", xlabel="max_devi_f, committee (eV/Å)",
               ylabel="largest force error of the committee mean (eV/Å)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(plot, dpi=130)
        print(f"plot written to {plot}")


if __name__ == "__main__":
    main()
