"""Model cards from checkpoint metadata: what a shipped model is, how it was trained and how well it does.

Every figure comes from the checkpoint itself (written by ``mftcalc train`` / ``mftcalc finetune``), so the card of
``models/README.md`` can be regenerated with ``mftcalc info MODEL --markdown``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from ase.data import chemical_symbols


def _metric_table(validation: Dict[str, float], datasets: Dict[str, Dict[str, Any]]) -> List[str]:
    """Per-dataset validation errors (energy meV/atom, forces meV/Å) as Markdown rows."""
    rows = ["| dataset | train structures | batch | E MAE (meV/atom) | F MAE (meV/Å) | F RMSE (meV/Å) |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, info in datasets.items():
        def get(metric: str) -> str:
            value = validation.get(f"val/{name}/{metric}")
            return "–" if value is None else f"{1000 * value:.1f}" if metric.startswith("e_") else f"{1000 * value:.0f}"
        rows.append(f"| {name} | {info.get('train', 0):,} | {info.get('batch_size', '–')} | {get('e_mae_per_atom')} "
                    f"| {get('f_mae')} | {get('f_rmse')} |")
    return rows


def pretraining_lineage(card: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The chain of pretraining runs behind a pretraining card, oldest first: one entry per run with its
    ``steps``, ``train_wall_s`` (seconds of training), ``grown`` ((layers before, layers added) when the run
    started from a model deepened by ``mftcalc grow``, else None) and ``init`` (the model file it started from,
    None for the first run)."""
    chain: List[Dict[str, Any]] = []
    while card:
        init = card.get("init") or {}
        grown = init.get("grown_from") or {}
        chain.append({"steps": int(card.get("steps", 0)), "train_wall_s": float(card.get("train_wall_s", 0.0)),
                      "init": init.get("path"), "grown": (grown.get("n_layers"), grown.get("n_new")) if grown else None})
        card = init.get("pretraining") or {}
    return chain[::-1]


def _lineage_line(chain: List[Dict[str, Any]]) -> str:
    parts = []
    for k, run in enumerate(chain):
        grown = (f", after `mftcalc grow` {run['grown'][0]} → {run['grown'][0] + run['grown'][1]} layers"
                 if run["grown"] else "")
        start = f" from `{run['init']}`{grown}" if k else ""
        parts.append(f"run {k + 1}{start}: {run['steps']:,} steps, {run['train_wall_s'] / 3600:.1f} h")
    steps = sum(r["steps"] for r in chain)
    hours = sum(r["train_wall_s"] for r in chain) / 3600
    return (f"- **Pretraining in all**: {steps:,} steps in {hours:.1f} h of training over {len(chain)} runs, each "
            f"continuing the last ({'; '.join(parts)})")


def model_card(path: str | Path) -> str:
    """Markdown card of a checkpoint: heads and units, elements, size, pretraining/fine-tuning provenance and the
    validation errors stored with it."""
    from mftcalc.model.checkpoint import read_checkpoint
    from mftcalc.model.config import ModelConfig
    from mftcalc.model.mft_model import MFTModel, count_parameters

    ckpt = read_checkpoint(path)
    meta = ckpt.get("metadata", {})
    n_params = count_parameters(MFTModel(ModelConfig.from_dict(ckpt["config"])))
    lines = [f"## `{Path(path).name}`", ""]
    backbone = ckpt["config"].get("backbone", {})
    size = ", ".join(f"{k} {backbone[k]}" for k in ("n_dim", "e_dim", "a_dim", "n_layers", "e_rcut", "a_rcut")
                     if k in backbone)
    lines.append(f"- **Backbone**: {size}")
    lines.append(f"- **Parameters**: {n_params:,}")
    heads = meta.get("heads", {})
    lines.append("- **Heads**: " + ", ".join(f"`{n}` ({h.get('kind')}, {h.get('unit')})" for n, h in heads.items()))
    for name, head in heads.items():
        if head.get("frame_params"):
            given = ", ".join(f"`{k}`" + (f" ({u})" if u else "") for k, u in head["frame_params"].items())
            lines.append(f"- **Frame parameters** of `{name}`: {given}, read from each structure's `info` "
                         "(`mftcalc.data.frame_params`)")
        if head.get("kind") == "group":
            domain = head.get("domain") or {}
            key = domain.get("group_key")
            how = "weighted mean" if head.get("group_reduce", "mean") == "mean" else "weighted sum"
            lines.append(f"- **Group head** `{name}`: one value per group of structures, the {how} of the "
                         "components' pooled features" + (f", frames grouped by `info['{key}']` and weighted by "
                         f"`info['{domain.get('weight_key', 'weight')}']` in training" if key else "")
                         + " (`mftcalc predict --group-key`; one structure alone is a group of one)")
        if head.get("kind") == "knn_ood":
            ref = ckpt["state_dict"].get(f"property_heads.{name}.reference")
            if ref is not None and ref.shape[0] >= 2:
                from mftcalc.model.applicability import KnnApplicabilityHead, training_score_limit
                knn = KnnApplicabilityHead(int(ref.shape[1]))
                knn.load_state_dict({k.split(".", 2)[2]: v for k, v in ckpt["state_dict"].items()
                                     if k.startswith(f"property_heads.{name}.")})
                lines.append(f"- **Applicability score** `{name}`: the k-nearest-neighbour distance of a structure's "
                             f"pooled features to {ref.shape[0]:,} training structures, about 1 for a typical one; "
                             f"above {training_score_limit(knn):.3g}, the largest a training structure has against "
                             "the others, the calculators and predict/relax/screen warn (`DomainWarning`) that the "
                             "properties are extrapolations (`mftcalc.model.applicability`)")
        iv = head.get("interval")
        if iv:
            lines.append(f"- **Prediction interval** `{name}`: `{iv['of']}` ± `{name}` holds the true value with "
                         f"probability {iv['coverage']:g} for structures like its {iv['n_calibration']:,} calibration "
                         f"structures ({iv.get('source') or 'source not recorded'}); half-width {iv['q']:.4g} "
                         f"{head.get('unit', '')} × `{iv['score']}` (split-conformal, `mftcalc.model.intervals`)")
    if meta.get("datasets"):
        lines.append(f"- **Datasets of the force-field head**: {', '.join(meta['datasets'])}")
    if meta.get("elements"):
        lines.append("- **Elements seen in training**: " + " ".join(chemical_symbols[z] for z in meta["elements"]))
    lines.append(f"- **mftcalc version**: {meta.get('mftcalc_version', '?')}")
    pre = meta.get("pretraining")
    if pre:
        cfg = pre.get("config", {})
        lines += [f"- **Pretraining**: {pre.get('steps', '?'):,} steps in {pre.get('train_wall_s', 0) / 60:.0f} min "
                  f"of training (config steps {cfg.get('steps')}, lr {cfg.get('lr0')} → {cfg.get('lr_end')}, "
                  f"decay every {cfg.get('decay_steps')} steps from step {cfg.get('lr_start_step', 0)})", ""]
        lineage = pretraining_lineage(pre)
        if len(lineage) > 1:
            lines += [_lineage_line(lineage), ""]
        validation = pre.get("validation") or {}
        if validation:
            lines.append(f"Validation errors at step {int(validation.get('step', pre.get('steps', 0))):,}:")
            lines.append("")
            lines += _metric_table(validation, pre.get("datasets", {})) + [""]
        refit = pre.get("energy_shift_refit") or {}
        if refit:
            lines.append("Energy shifts refitted to the training residuals before export (per-atom energy MAE on "
                         "the fitted training structures, meV/atom): " + ", ".join(
                             f"{name} {1000 * r['mae_before']:.1f} → {1000 * r['mae_after']:.1f}"
                             for name, r in refit.items()) + ". The validation errors above are after the refit.")
            lines.append("")
    for refit in meta.get("energy_shift_refits", []):           # mftcalc change-bias
        lines.append(f"- **Energy shift refitted** (`mftcalc change-bias`): dataset `{refit['dataset']}` on "
                     f"{', '.join(refit['data'])} ({refit['n']} structures): per-atom energy MAE on them "
                     f"{1000 * refit['mae_before']:.1f} → {1000 * refit['mae_after']:.1f} meV/atom")
    fine = meta.get("finetuning")
    if fine:
        settings = fine.get("settings", {})
        anchor = settings.get("anchor", "none")
        kind = {"features": "feature anchor", "weights": "weight anchor (L2-SP)"}.get(anchor, f"{anchor} anchor")
        anchored = (f", with a {kind} to the prior (weight {settings.get('anchor_weight')})"
                    if anchor not in ("none", None) else "")
        lines.append(f"- **Fine-tuning**: strategy `{fine.get('strategy')}`{anchored} on {fine.get('description')}, "
                     f"{settings.get('steps')} steps, from `{fine.get('pretrained')}`")
    bench = meta.get("benchmark")
    if bench:
        unit = meta.get("heads", {}).get(bench.get("property"), {}).get("unit", "")
        errors = ", ".join(f"{part} RMSE {bench[part]['rmse']:.5f} {unit} ({int(bench[part]['n']):,})"
                           for part in ("val", "id_test", "ood_test") if part in bench)
        lines.append(f"- **Benchmark** (bench cell `{bench.get('cell')}`, splits `{bench.get('splits')}`): {errors}")
    return "\n".join(lines) + "\n"
