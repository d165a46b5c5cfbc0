"""One fine-tuning run over the shared training loop, for any registered strategy (:mod:`mftcalc.training.strategies`).

:func:`finetune` builds the model the strategy starts from (random or pretrained backbone and force-field head,
plus a new property head and the applicability head), freezes what the strategy freezes, trains on the strategy's
sources (``mft``: the property task plus force-field data, drawn per step in ``alternate`` mode or summed in
``sum`` mode) with the authors' recipe as the defaults of :class:`FinetuneSettings`, and writes ONE checkpoint
holding the pretrained (``mft``: the jointly trained) force-field head next to the new property head, so the
calculator gives energy, forces, stress and the property from one model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from mftcalc.analysis.plots import plot_parity
from mftcalc.data.assembly import check_signed_weights, components_of
from mftcalc.data.structure import Structure
from mftcalc.experiments.tasks import PropertyTask
from mftcalc.model.applicability import fit_applicability, pooled_features
from mftcalc.model.intervals import calibrate_on_validation, interval_coverage
from mftcalc.model.checkpoint import load_model, model_metadata, save_model
from mftcalc.model.config import HeadConfig, ModelConfig
from mftcalc.model.fitting import fit_property_head
from mftcalc.model.mft_model import MFTModel
from mftcalc.schema import option
from mftcalc.training.evaluate import property_errors, property_predictions
from mftcalc.training.forcefield_data import replay_structures, task_domain
from mftcalc.training.loop import Trainer, TrainSettings
from mftcalc.training.anchor import check_anchor
from mftcalc.training.weight_average import check_decay
from mftcalc.training.losses import ForceFieldPrefactors
from mftcalc.training.distributed import rank_and_world
from mftcalc.training.domain_record import record_domains
from mftcalc.training.drift import DriftMonitor
from mftcalc.training.sampler import Source, resolve_batch_size
from mftcalc.training.schedule import ExponentialLR
from mftcalc.training.strategies import get_strategy, strategy_names

OOD_HEAD = "ood_score"     # the applicability head every fine-tuned model carries (mftcalc.model.applicability)


@dataclass
class FinetuneSettings:
    """Strategy and optimisation settings of one fine-tuning run (``settings:`` of the finetune and bench
    configs); the defaults are the authors' recipe, ``steps`` the budget per run."""

    strategy: str = option("mft", f"fine-tuning strategy: {', '.join(strategy_names())}")
    steps: int = option(2000, "optimiser steps")
    lr0: float = option(1e-3, "start learning rate")
    lr_end: float = option(1e-5, "learning rate at the last step (exponential decay)")
    decay_steps: Optional[int] = option(None, "steps between decays (default: steps / 100; the authors: 1,000 of "
                                              "100,000)")
    property_batch: Union[int, str] = option("auto:512", "property batch: structures (an integer) or 'auto:N' (N atoms on "
                                             "average)")
    ff_batch: Union[int, str] = option("auto:128", "force-field batch (mft), as property_batch")
    mode: str = option("alternate", "mft: 'alternate' (one task per step) or 'sum' (both tasks every step)")
    model_prob: float = option(0.5, "mft alternate: probability of a property step")
    lambda_reg: float = option(1.0, "mft sum: weight of the force-field loss")
    reinit_ff_head: bool = option(False, "ablation: start mft with a fresh force-field head (its energy shifts "
                                         "kept)")
    task_optimizers: bool = option(False, "mft alternate: one Adam state per task (property, force field)")
    head_hidden: Sequence[int] = option((240, 240, 240), "hidden widths of the property head")
    head_activation: str = option("tanh", "activation of the property head")
    head_resnet_dt: bool = option(True, "deepmd-kit's fitting net (timestep residuals; the authors' head)")
    grad_clip: float = option(5.0, "gradient norm clip (the authors' gradient_max_norm)")
    ema_decay: float = option(0.0, "> 0: keep an exponential moving average of the weights with this decay per "
                                   "step (0.999: about the last 1,000 steps); the average is what is validated "
                                   "(curve probes, drift, best-on-validation) and written; val.csv keeps the "
                                   "trained weights' val/... beside its ema/val/.... 0: off (the authors' recipe)")
    normalize_property_loss: bool = option(True, "divide property errors by the label std in the loss (as "
                                                 "deepmd-kit's out_std)")
    property_reduction: str = option("sum", "'sum' over the batch (deepmd-kit's PropertyLoss) or 'mean'")
    energy_norm: str = option("deepmd", "force-field energy/virial term: 'deepmd' (MSE(E)/N) or 'per_atom'")
    curve_probe: int = option(0, "> 0: fixed probes of this size (train, val, each test part) scored at every "
                                 "validation (curve/<part>/rmse in val.csv); the val probe is also the "
                                 "best-on-validation set")
    seed: int = option(0, "seed of the head, the batches and the probes")
    val_every: int = option(200, "steps between validations")
    checkpoint_every: int = option(100, "steps between training-state writes")
    dtype: str = option("float32", "'float32' or 'float64'")
    device: str = option("auto", "'cpu', 'cuda[:k]' or 'auto' (CUDA when available)")
    allow_new_elements: bool = option(False, "fine-tune on elements the pretrained model never saw (their type "
                                             "embeddings start untrained); refused by default")
    new_dataset_from: Optional[str] = option(None, "mft: auxiliary data of a dataset the model lacks gets a new "
                                                   "embedding column copied from this dataset, its energy shift "
                                                   "fitted by least squares")
    probe_size: int = option(64, "molecules of the drift probe set")
    interval_coverage: float = option(0.9, "coverage of the prediction-interval head <property>_pi90 "
                                           "(split-conformal on the validation set, scaled by ood_score); 0: none")
    anchor: str = option("none", "a control beside mft: hold the backbone near the prior by a penalty "
                                 "(mftcalc.training.anchor): 'features' (drift of backbone features on the "
                                 "property batches), 'weights' (L2-SP) or 'none'")
    anchor_weight: float = option(1.0, "λ of the anchor (relative squared drift; 1: a 100 % drift weighs like "
                                       "one unit of the normalised property loss)")
    progress: bool = option(True, "show a progress bar")

    def __post_init__(self) -> None:
        strategy = get_strategy(self.strategy)
        if self.mode not in ("alternate", "sum"):
            raise ValueError(f"mode must be 'alternate' or 'sum', got {self.mode!r}")
        if not 0 < self.model_prob <= 1:
            raise ValueError("model_prob must be in (0, 1]")
        if not 0 <= self.interval_coverage < 1:
            raise ValueError(f"interval_coverage must be in [0, 1) (0.9: a 90 % interval; 0: none), got "
                             f"{self.interval_coverage}")
        if self.task_optimizers and (not strategy.forcefield_data or self.mode != "alternate"):
            raise ValueError("task_optimizers applies to a strategy with force-field data (mft) in mode 'alternate'")
        if self.property_reduction not in ("sum", "mean"):
            raise ValueError(f"property_reduction must be 'sum' or 'mean', got {self.property_reduction!r}")
        if self.energy_norm not in ("deepmd", "per_atom"):
            raise ValueError(f"energy_norm must be 'deepmd' or 'per_atom', got {self.energy_norm!r}")
        check_decay(self.ema_decay)
        check_anchor(self.anchor, self.anchor_weight)
        if self.anchor != "none" and (not strategy.from_pretrained or strategy.trains == "property_head"):
            raise ValueError(f"anchor {self.anchor!r} holds a fine-tuned pretrained backbone near the prior; "
                             f"strategy {strategy.name!r} does not train one (use ft or mft, or anchor: none)")
        if self.curve_probe < 0:
            raise ValueError(f"curve_probe must be >= 0, got {self.curve_probe}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")


def build_finetune_model(pretrained: Optional[MFTModel], task: PropertyTask, settings: FinetuneSettings,
                         backbone_cfg=None) -> MFTModel:
    """The model a strategy starts from: its backbone (of ``pretrained``'s size, or ``backbone_cfg``) with the
    pretrained force-field head when the strategy starts from pretrained weights, a new property head and the
    applicability head; weights initialised by :meth:`Strategy.initialise`."""
    strategy = get_strategy(settings.strategy)
    recipe = task.recipe
    if strategy.linear_head and recipe["kind"] not in ("scalar", "group"):
        raise ValueError(f"{strategy.name} fits scalar and group properties; {task.property!r} has a "
                         f"{recipe['kind']} head")
    head = HeadConfig(kind=recipe["kind"], unit=task.unit,
                      hidden=() if strategy.linear_head else tuple(settings.head_hidden),
                      activation=settings.head_activation, extensive=recipe["extensive"],
                      element_bias=recipe["element_bias"], resnet_dt=settings.head_resnet_dt,
                      deepmd_fitting=settings.head_resnet_dt, frame_params=task.frame_params,
                      group_reduce=recipe.get("group_reduce", "mean"))
    torch.manual_seed(settings.seed)
    if not strategy.from_pretrained or pretrained is None:
        if pretrained is None and strategy.from_pretrained:
            raise ValueError(f"strategy {strategy.name!r} needs a pretrained model")
        cfg_backbone = backbone_cfg if backbone_cfg is not None else pretrained.config.backbone
        return MFTModel(ModelConfig(backbone=cfg_backbone, heads={task.property: head,
                                                                  OOD_HEAD: HeadConfig(kind="knn_ood", unit="")}))
    heads = {k: v for k, v in pretrained.config.heads.items() if v.kind == "forcefield"}
    heads[task.property] = head
    heads[OOD_HEAD] = HeadConfig(kind="knn_ood", unit="")
    dtype = next(pretrained.parameters()).dtype
    model = MFTModel(ModelConfig(backbone=pretrained.config.backbone, heads=heads,
                                 datasets=list(pretrained.config.datasets))).to(dtype)
    strategy.initialise(model, pretrained, settings.reinit_ff_head)
    return model


def finetune(task: PropertyTask, settings: FinetuneSettings, out_dir: str | Path,
             pretrained_path: Optional[str | Path] = None, ff_structures: Optional[Dict[str, List[Structure]]] = None,
             backbone_cfg=None) -> Dict[str, Any]:
    """Run one fine-tuning (resumable from ``out_dir/state.pt``); writes ``out_dir/model.pt`` (best on
    validation) and returns validation/test metrics.

    Args:
        task: the property task. settings: strategy and optimisation settings.
        pretrained_path: pretrained checkpoint (all strategies but ``scratch``; for ``scratch`` it only gives
            the backbone size unless ``backbone_cfg`` is passed).
        ff_structures: force-field data for ``mft`` by dataset name (names must be datasets of the pretrained
            model; see :func:`mftcalc.training.pretrain.load_forcefield_set`); default: the replay set of the
            task's domain beside the checkpoint (:func:`replay_structures`).
    """
    out_dir = Path(out_dir)
    strategy = get_strategy(settings.strategy)
    dtype = {"float32": torch.float32, "float64": torch.float64}[settings.dtype]
    pretrained = load_model(pretrained_path, dtype) if pretrained_path is not None else None
    # what the run starts from: a resume from another pretrained model is refused (Trainer ``origin``)
    origin = {"pretrained": pretrained.content_sha256} if pretrained is not None and strategy.from_pretrained else {}
    if pretrained is not None and strategy.from_pretrained and not settings.allow_new_elements:
        check_elements(pretrained, task, pretrained_path)
    ff = None
    if strategy.forcefield_data:
        cutoff = float(pretrained.e_rcut) if pretrained is not None else None    # a boxed molecule: molecules
        ff = ff_structures if ff_structures is not None else replay_structures(pretrained_path,
                                                                                task_domain(task.train, cutoff))
        pretrained = add_aux_datasets(pretrained, ff, settings.new_dataset_from)
    recipe = task.recipe
    if recipe["kind"] == "group":       # signed weights (a reaction) need a summing head
        check_signed_weights([*task.train, *task.val, *(a for part in task.test_parts.values() for a in part)],
                             recipe.get("group_reduce", "mean") == "mean", f"task {task.name}")
    model = build_finetune_model(pretrained, task, settings, backbone_cfg)
    fit_property_head(model.head_module(task.property), task.train, task.property, recipe["kind"],
                      recipe["extensive"], recipe["element_bias"])
    strategy.freeze(model, task.property)
    prop_batch = resolve_batch_size(settings.property_batch, task.train)
    loss_scale = label_std(task.train, task.property) if settings.normalize_property_loss else 1.0
    prop_source = Source(task.name, task.train, "property", 0, prop_batch, 1.0, task.property, recipe["loss"],
                         loss_scale, settings.property_reduction)
    sources = strategy.sources(prop_source, ff, list(model.config.datasets), settings.model_prob, settings.ff_batch)
    curve_sets = curve_probes(task, settings.curve_probe, settings.seed) if settings.curve_probe else {}
    val_structures = curve_sets.get("val", task.val)
    val_sources = [Source(task.name, val_structures, "property", 0, prop_batch, 1.0, task.property, recipe["loss"],
                          loss_scale, settings.property_reduction)]
    probe = components_of(task.val)[: settings.probe_size]      # assemblies: their component structures
    drift = DriftMonitor(model, probe, settings.seed) if strategy.from_pretrained else None

    def on_validate(step: int, metrics: Dict[str, float], kept: torch.nn.Module) -> Dict[str, float]:
        """Drift and probe curves of the weights that are kept (the average with ema_decay > 0)."""
        out = drift(kept) if drift is not None else {}
        for part, structures in curve_sets.items():
            scored = f"val/{task.name}/rmse" in metrics and structures is val_structures
            # the val probe is the trainer's validation set: reuse its errors instead of a second pass
            errs = ({"rmse": metrics[f"val/{task.name}/rmse"], "mae": metrics[f"val/{task.name}/mae"]} if scored
                    else property_errors(kept, structures, task.property))
            out[f"curve/{part}/rmse"] = errs["rmse"]
            out[f"curve/{part}/mae"] = errs["mae"]
        return out

    decay = settings.decay_steps or max(1, settings.steps // 100)
    train_settings = TrainSettings(
        num_steps=settings.steps, lr=ExponentialLR(settings.lr0, settings.lr_end, settings.steps, decay),
        prefactors=ForceFieldPrefactors(), grad_clip=settings.grad_clip, seed=settings.seed, mode=settings.mode,
        sum_weight=settings.lambda_reg, val_every=settings.val_every, checkpoint_every=settings.checkpoint_every,
        dtype=dtype, best_metric=f"val/{task.name}/mae", progress=settings.progress,
        optimizer_per_kind=settings.task_optimizers, energy_norm=settings.energy_norm, ema_decay=settings.ema_decay,
        device=settings.device, anchor=settings.anchor, anchor_weight=settings.anchor_weight)
    metadata = model_metadata(model, _elements(model, task), finetuning={
        "strategy": settings.strategy, "task": task.name, "description": task.description,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "pretrained": str(pretrained_path) if pretrained_path else None})
    record_domains(metadata, pretrained, task, ff, float(model.e_rcut))

    def save_best(m: torch.nn.Module, path: Path) -> None:
        save_model(m, path, metadata)

    if not strategy.optimiser and rank_and_world()[1] > 1:
        raise ValueError(f"strategy {settings.strategy!r} trains nothing: run it as one process, not under torchrun")
    if not strategy.optimiser:                       # frozen-sklearn: a ridge fit written into the linear head
        import time
        from mftcalc.training.frozen import fit_frozen_group_head, fit_frozen_head
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        fit = (fit_frozen_group_head(model, task.property, task.train, recipe.get("group_reduce") == "mean")
               if recipe["kind"] == "group" else fit_frozen_head(model, task.property, task.train, recipe["extensive"]))
        metadata["finetuning"]["ridge"] = fit
        save_best(model, out_dir / "model.pt")
        steps, wall, device = 0, time.perf_counter() - started, next(model.parameters()).device
    else:
        trainer = Trainer(model, sources, train_settings, out_dir, out_dir / "state.pt", val_sources,
                          on_validate=on_validate, best_path=out_dir / "model.pt", save_model_fn=save_best,
                          origin=origin)
        trainer.run()
        steps, wall, device = trainer.step, trainer.wall, trainer.device
        if trainer.rank != 0:                     # data-parallel run: rank 0 scores and writes the model
            return {"strategy": settings.strategy, "task": task.name, "steps": steps, "rank": trainer.rank}
    best = load_model(out_dir / "model.pt", dtype).to(device)
    reference = components_of(task.train)         # features of at most 2,000 of them: the head keeps no more
    if len(reference) > 2000:
        keep = np.sort(np.random.default_rng(settings.seed).choice(len(reference), 2000, replace=False))
        reference = [reference[i] for i in keep]
    fit_applicability(best.property_heads[OOD_HEAD], pooled_features(best, reference),
                      [s.numbers for s in components_of(task.train)], seed=settings.seed)
    predicted = {}                                # one pass per part: (labelled, property, ood_score)
    for part, structures in {"val": task.val, **task.test_parts}.items():
        labelled = [s for s in structures if task.property in s.properties]
        predicted[part] = (labelled, *property_predictions(best, labelled, [task.property, OOD_HEAD]))
    grouped = recipe["kind"] == "group"           # intervals scale by one ood_score per structure: none for groups
    if grouped and settings.interval_coverage > 0:
        print(f"{task.property!r} is a group property: the model gets no prediction interval (its ood_score is the "
              "largest of the components')")
    interval = calibrate_on_validation(best, task.val, task.property, 0.0 if grouped else settings.interval_coverage,
                                       metadata, predictions=predicted["val"][1:])
    save_model(best, out_dir / "model.pt", metadata)
    result: Dict[str, Any] = {"strategy": settings.strategy, "task": task.name, "steps": steps,
                              "train_wall_s": wall, "n_train": len(task.train)}
    if interval is not None:
        result["interval"] = interval
    parity: Dict[str, np.ndarray] = {}
    for part, (labelled, pred, score) in predicted.items():
        result[part] = property_errors(best, labelled, task.property, predictions=pred)
        truth = parity[f"{part}_true"] = np.array([s.properties[task.property] for s in labelled])
        if interval is not None:
            result[part]["interval_coverage"] = interval_coverage(truth, pred, interval["q"] * score)
        parity[f"{part}_pred"], parity[f"{part}_ood_score"] = pred, score
    result["ood_score"] = applicability_report(parity)
    np.savez_compressed(out_dir / "parity.npz", **parity)
    plot_parity(parity, out_dir / "parity.png", f"{task.description}: {settings.strategy}", task.unit)
    if drift is not None:
        result.update(drift(best))
    return result


def label_std(structures: Sequence[Structure], name: str) -> float:
    """Standard deviation of the labels of property ``name`` (1.0 when it is zero or undefined)."""
    y = np.array([s.properties[name] for s in structures if name in s.properties], dtype=float)
    std = float(y.std()) if y.size > 1 else 0.0
    return std if std > 0 else 1.0


def _elements(model: MFTModel, task: PropertyTask) -> List[int]:
    seen = set(getattr(model, "metadata", {}).get("elements", []))
    seen.update(int(z) for s in task.train for z in np.unique(s.numbers))
    return sorted(seen)


def add_aux_datasets(pretrained: MFTModel, ff: Dict[str, List[Structure]], new_from: Optional[str]) -> MFTModel:
    """The pretrained model, extended by an embedding column for each auxiliary dataset it lacks (copied from
    ``new_from``; energy shift fitted on the auxiliary data). Without ``new_from`` such a dataset is refused."""
    missing = [name for name in ff if name not in pretrained.config.datasets]
    if not missing:
        return pretrained
    if new_from is None:
        raise KeyError(f"force-field data {missing} are not datasets of the pretrained model "
                       f"({list(pretrained.config.datasets)}); name them as one of those, or set new_dataset_from to "
                       "the dataset whose embedding a new one should start from")
    from mftcalc.model.datasets import extend_datasets
    from mftcalc.model.fitting import fit_forcefield_shift
    extended = extend_datasets(pretrained, list(pretrained.config.datasets) + missing,
                               {name: new_from for name in missing})
    names = list(extended.config.datasets)
    for name in missing:
        fit_forcefield_shift(extended.ff_heads["forcefield"], ff[name], [names.index(name)] * len(ff[name]))
    return extended


def applicability_report(parity: Dict[str, np.ndarray]) -> Dict[str, float]:
    """How well ``ood_score`` flags trouble: its median per part, the AUROC of telling ``ood_test`` from
    ``id_test`` structures by it, and per part its Spearman correlation with the absolute error."""
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score
    out: Dict[str, float] = {}
    for key in parity:
        if not key.endswith("_ood_score"):
            continue
        part = key[: -len("_ood_score")]
        score = parity[key]
        finite = np.isfinite(score)
        out[f"{part}_median"] = float(np.median(score[finite])) if finite.any() else float("nan")
        err = np.abs(parity[f"{part}_pred"] - parity[f"{part}_true"])
        if finite.sum() > 2:
            out[f"{part}_spearman_abs_error"] = float(spearmanr(score[finite], err[finite]).statistic)
    if "id_test_ood_score" in parity and "ood_test_ood_score" in parity:
        s_id, s_ood = parity["id_test_ood_score"], parity["ood_test_ood_score"]
        labels = np.concatenate([np.zeros(len(s_id)), np.ones(len(s_ood))])
        scores = np.nan_to_num(np.concatenate([s_id, s_ood]), posinf=np.finfo(float).max)
        out["auroc_id_vs_ood"] = float(roc_auc_score(labels, scores))
    return out


def check_elements(pretrained: MFTModel, task, path) -> None:
    """Refuse a task whose structures hold elements the pretrained model never saw (its metadata ``elements``):
    their type embeddings are untrained, so fine-tuning would start from noise for them. Names the elements."""
    from ase.data import chemical_symbols
    known = set(getattr(pretrained, "metadata", {}).get("elements", []))
    if not known:
        return
    parts = {"train": task.train, "val": task.val, **task.test_parts}
    for part, structures in parts.items():
        seen = {int(z) for s in structures for z in np.unique(s.numbers)}
        unknown = sorted(seen - known)
        if unknown:
            raise ValueError(f"the {part} data of {task.name} holds elements the pretrained model {path} was not "
                             f"trained on: {', '.join(chemical_symbols[z] for z in unknown)} (it knows "
                             f"{', '.join(chemical_symbols[z] for z in sorted(known))}); drop those structures, "
                             "use strategy scratch, or set allow_new_elements: true to train them from scratch")


def curve_probes(task, size: int, seed: int) -> Dict[str, List[Structure]]:
    """Fixed probe sets scored at every validation: ``train`` (of this run's training set), ``val`` and each test
    part, at most ``size`` structures each. The val and test probes use seed 0 whatever the run's seed, so every
    run of a task is scored on the same molecules; the train probe is drawn with the run's seed."""
    def pick(structures: List[Structure], draw_seed: int) -> List[Structure]:
        if len(structures) <= size:
            return list(structures)
        keep = np.sort(np.random.default_rng(draw_seed).choice(len(structures), size, replace=False))
        return [structures[i] for i in keep]

    probes = {"train": pick(task.train, seed), "val": pick(task.val, 0)}
    probes.update({part: pick(structures, k + 1) for k, (part, structures) in enumerate(task.test_parts.items())})
    return probes
