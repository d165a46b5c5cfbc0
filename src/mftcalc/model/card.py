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
        lines.append(f"- **Fine-tuning**: strategy `{fine.get('strategy')}` on {fine.get('description')}, "
                     f"{settings.get('steps')} steps, from `{fine.get('pretrained')}`")
    bench = meta.get("benchmark")
    if bench:
        unit = meta.get("heads", {}).get(bench.get("property"), {}).get("unit", "")
        errors = ", ".join(f"{part} RMSE {bench[part]['rmse']:.5f} {unit} ({int(bench[part]['n']):,})"
                           for part in ("val", "id_test", "ood_test") if part in bench)
        lines.append(f"- **Benchmark** (bench cell `{bench.get('cell')}`, splits `{bench.get('splits')}`): {errors}")
    return "\n".join(lines) + "\n"
