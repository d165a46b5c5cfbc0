"""``mftcalc analyze``: drift (W1) and Davies–Bouldin tables of fine-tuned vs pretrained backbones, t-SNE plots."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from mftcalc.analysis.features import atom_features, edge_features
from mftcalc.analysis.metrics import db_index_pair, normalise, tsne_embedding, wasserstein_drift
from mftcalc.analysis.plots import plot_embedding
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import load_model


def analyze(pretrained: str | Path, finetuned: Dict[str, str | Path], sets: Dict[str, Sequence[Structure]],
            out_dir: str | Path, n_samples: int = 5000, tsne: bool = True, seed: int = 0) -> Dict[str, Dict]:
    """Compare each fine-tuned backbone with the pretrained one on every structure set.

    Per model and set: W1 drift of atomic features from the pretrained model's; DB index of atomic features
    clustered by (element, covalent neighbours), raw and on t-SNE, normalised by the pretrained value; DB index
    of C–H/C–O edge features by (pair, distance stratum), raw. Writes ``analysis.json``, ``analysis.md`` and
    ``tsne_<model>_<set>.png``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = {"pretrained": load_model(pretrained, torch.float32)}
    models.update({name: load_model(path, torch.float32) for name, path in finetuned.items()})
    results: Dict[str, Dict] = {}
    ref_atoms = {k: atom_features(models["pretrained"], v) for k, v in sets.items()}
    ref_db = {}
    for set_name, structures in sets.items():
        ref_db[set_name] = db_index_pair(ref_atoms[set_name].features, ref_atoms[set_name].labels, n_samples, seed,
                                         tsne)
        e = edge_features(models["pretrained"], structures)
        if len(e.features):
            ref_db[set_name]["db_edge_raw"] = db_index_pair(e.features, np.char.add(e.pairs, e.strata), n_samples,
                                                            seed, tsne=False)["db_raw"]
    for name, model in models.items():
        results[name] = {}
        for set_name, structures in sets.items():
            atoms = ref_atoms[set_name] if name == "pretrained" else atom_features(model, structures)
            row = db_index_pair(atoms.features, atoms.labels, n_samples, seed, tsne)
            e = edge_features(model, structures)
            if len(e.features):
                row["db_edge_raw"] = db_index_pair(e.features, np.char.add(e.pairs, e.strata), n_samples, seed,
                                                   tsne=False)["db_raw"]
            entry = {"w1": wasserstein_drift(ref_atoms[set_name].features, atoms.features, n_samples, seed),
                     **{f"{k}_rel": v for k, v in normalise(row, ref_db[set_name]).items()}, **row}
            results[name][set_name] = entry
            if tsne:
                features, labels = atoms.features, atoms.labels
                if len(features) > n_samples:
                    idx = np.sort(np.random.default_rng(seed).choice(len(features), n_samples, replace=False))
                    features, labels = features[idx], labels[idx]
                plot_embedding(tsne_embedding(features, seed), labels, out_dir / f"tsne_{name}_{set_name}.png",
                               f"{name} — {set_name}")
    (out_dir / "analysis.json").write_text(json.dumps(results, indent=1))
    (out_dir / "analysis.md").write_text(markdown_table(results))
    return results


def markdown_table(results: Dict[str, Dict]) -> str:
    """One row per (model, set): W1, DB raw/t-SNE/edge relative to the pretrained model."""
    lines = ["| model | set | W1 drift | DB atoms raw (rel.) | DB atoms t-SNE (rel.) | DB edges raw (rel.) |",
             "|---|---|---|---|---|---|"]
    for model, sets in results.items():
        for set_name, r in sets.items():
            lines.append(f"| {model} | {set_name} | {r['w1']:.3f} | {r.get('db_raw_rel', float('nan')):.3f} | "
                         f"{r.get('db_tsne_rel', float('nan')):.3f} | {r.get('db_edge_raw_rel', float('nan')):.3f} |")
    lines += ratio_lines(results)
    return "\n".join(lines) + "\n"


def ratio_lines(results: Dict[str, Dict], first: str = "ft", second: str = "mft") -> List[str]:
    """FT/MFT ratios of W1 drift and relative DB indices per set (when both models were analysed): above 1 means
    FT moved further from the pretrained representation than MFT."""
    if first not in results or second not in results:
        return []
    out = ["", f"Ratios {first}/{second} on the same molecules:", ""]
    for set_name, a in results[first].items():
        b = results[second].get(set_name)
        if b is None:
            continue
        parts = []
        for key, label in (("w1", "W1 drift"), ("db_raw_rel", "DB atoms raw"), ("db_tsne_rel", "DB atoms t-SNE"),
                           ("db_edge_raw_rel", "DB edges raw")):
            if key in a and key in b and b[key]:
                parts.append(f"{label} {a[key] / b[key]:.2f}")
        out.append(f"- {set_name}: " + ", ".join(parts))
    return out
