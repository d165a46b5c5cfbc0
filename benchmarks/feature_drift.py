"""How far fine-tuned models moved from their prior: in features and in weights.

For each model, against the prior it started from:

- ``drift_rel`` of the backbone's per-atom features, Σ‖h − h₀‖²/Σ‖h₀‖² atom by atom, on seeded draws of QM9
  molecules from BOOM's training and OOD sets of a property (the quantity ``--anchor features`` penalises;
  :func:`mftcalc.analysis.metrics.relative_drift`);
- the relative squared drift of the backbone's weights, Σ(θ − θ₀)²/Σθ₀² (what ``--anchor weights``, L2-SP,
  penalises).

Prints a Markdown table and writes it to ``benchmarks/results/feature_drift.md`` with ``--write``.

    python benchmarks/feature_drift.py --prior checkpoints/protocol_gate/prior/pretrained.pt \\
        ft=models/ft_gap.pt mft=models/mft_gap.pt [--molecules 200] [--write]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def weight_drift(prior: Dict[str, torch.Tensor], tuned: Dict[str, torch.Tensor]) -> float:
    """Σ(θ − θ₀)²/Σθ₀² over the floating-point ``backbone.*`` tensors of two state dicts."""
    keys = [k for k in prior if k.startswith("backbone.") and prior[k].is_floating_point()]
    num = sum(float(((tuned[k].double() - prior[k].double()) ** 2).sum()) for k in keys)
    return num / sum(float((prior[k].double() ** 2).sum()) for k in keys)


def measure(prior_path: str, models: Dict[str, str], prop: str, n: int, seed: int = 0) -> List[Dict]:
    """One row per model: its feature drift on ``n`` training and ``n`` OOD molecules, and its weight drift."""
    from mftcalc.analysis.features import per_atom_features
    from mftcalc.analysis.metrics import relative_drift
    from mftcalc.data.boom import load_splits
    from mftcalc.data.qm9 import load_qm9
    from mftcalc.model.checkpoint import load_model, read_checkpoint
    dataset = load_qm9(progress=False)
    split = load_splits(Path(__file__).parents[1] / "data" / "boom_splits.json.gz")[prop]
    position = {int(q): k for k, q in enumerate(dataset.qm9_index)}
    rng = np.random.default_rng(seed)
    sets = {part: dataset.structures([position[int(q)] for q in rng.choice(getattr(split, part), n, replace=False)])
            for part in ("train", "ood_test")}
    prior = load_model(prior_path, torch.float64)
    reference = {part: per_atom_features(prior, s) for part, s in sets.items()}
    prior_state = read_checkpoint(prior_path)["state_dict"]
    rows = []
    for name, path in models.items():
        model = load_model(path, torch.float64)
        row = {"model": name, "path": path, "weights": weight_drift(prior_state, read_checkpoint(path)["state_dict"])}
        row.update({part: relative_drift(reference[part], per_atom_features(model, s)) for part, s in sets.items()})
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=CHECKPOINT")
    parser.add_argument("--prior", required=True, help="the pretrained model the fine-tunes started from")
    parser.add_argument("--property", default="gap", help="the BOOM split whose training and OOD sets are drawn")
    parser.add_argument("--molecules", type=int, default=200, help="molecules drawn from each set (seed 0)")
    parser.add_argument("--write", action="store_true", help="write benchmarks/results/feature_drift.md")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.models)
    rows = measure(args.prior, models, args.property, args.molecules)
    command = (f"python benchmarks/feature_drift.py --prior {args.prior} {' '.join(args.models)} --property "
               f"{args.property} --molecules {args.molecules}")
    lines = ["# Feature and weight drift from the prior", "", f"`{command}`", "",
             f"| model | feature drift, {args.molecules} training molecules | feature drift, {args.molecules} OOD "
             "molecules | weight drift (backbone) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['model']} (`{r['path']}`) | {r['train']:.3f} | {r['ood_test']:.3f} | {r['weights']:.4f} |"
              for r in rows]
    lines += ["", "Feature drift: Σ‖h − h₀‖²/Σ‖h₀‖² of the backbone's per-atom features (float64); weight drift: "
              "Σ(θ − θ₀)²/Σθ₀² over the backbone's weights."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "feature_drift.md").write_text(text)


if __name__ == "__main__":
    main()
