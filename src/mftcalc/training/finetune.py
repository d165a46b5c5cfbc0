"""Fine-tuning strategies over the shared training loop: ``scratch``, ``ft``, ``lp`` and ``mft``.

A strategy differs only in what it initialises (random or pretrained backbone; force-field head transferred or
re-initialised), what it freezes (``lp``: everything but the new property head) and which sources it trains on
(``mft``: the property task plus force-field data, drawn per step in ``alternate`` mode or summed in ``sum``
mode). Every strategy writes ONE checkpoint; it holds the pretrained (``mft``: the jointly trained)
force-field head next to the new property head, so the calculator gives energy, forces, stress and the
property from one model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc.analysis.metrics import sliced_drift
from mftcalc.data.structure import Structure
from mftcalc.model.applicability import fit_applicability, pooled_features
from mftcalc.model.checkpoint import load_model, model_metadata, save_model
from mftcalc.model.config import HeadConfig, ModelConfig
from mftcalc.model.fitting import fit_property_head
from mftcalc.model.mft_model import MFTModel
from mftcalc.training.evaluate import property_errors, property_predictions
from mftcalc.training.loop import Trainer, TrainSettings
from mftcalc.training.pretrain import replay_path, task_domain
from mftcalc.training.losses import ForceFieldPrefactors
from mftcalc.training.sampler import Source, resolve_batch_size
from mftcalc.training.schedule import ExponentialLR
from mftcalc.experiments.tasks import PropertyTask

STRATEGIES = ("scratch", "ft", "lp", "mft", "frozen-sklearn")
OOD_HEAD = "ood_score"     # the applicability head every fine-tuned model carries (mftcalc.model.applicability)


@dataclass
class FinetuneSettings:
    """Strategy and optimisation settings (paper defaults; ``steps`` is the budget per run)."""

    strategy: str = "mft"
    steps: int = 2000
    lr0: float = 1e-3
    lr_end: float = 1e-5
    decay_steps: Optional[int] = None          # default: steps / 100 (the authors: 1,000 of 100,000)
    property_batch: Any = "auto:512"
    ff_batch: Any = "auto:128"
    mode: str = "alternate"                   # mft: "alternate" or "sum"
    model_prob: float = 0.5                   # mft alternate: probability of a property step
    lambda_reg: float = 1.0                   # mft sum: weight of the force-field loss
    reinit_ff_head: bool = False              # ablation: mft with a fresh force-field head
    task_optimizers: bool = False             # mft alternate: one Adam state per task (property, force field)
    head_hidden: Sequence[int] = (240, 240, 240)
    head_activation: str = "tanh"
    head_resnet_dt: bool = True               # deepmd-kit's fitting net (the authors' property head)
    grad_clip: float = 5.0                    # the authors' gradient_max_norm
    normalize_property_loss: bool = True      # property errors / label std in the loss (as deepmd-kit's out_std)
    property_reduction: str = "sum"           # "sum" over the batch (deepmd-kit PropertyLoss) or "mean"
    energy_norm: str = "deepmd"               # force-field energy/virial term: "deepmd" (MSE(E)/N) or "per_atom"
    curve_probe: int = 0                      # > 0: fixed probes of this size (train, val, each test part) scored at
                                              # every validation (curve/<part>/rmse in val.csv); the val probe is
                                              # also the best-on-validation set
    seed: int = 0
    val_every: int = 200
    checkpoint_every: int = 100
    dtype: str = "float32"
    device: str = "cpu"                       # "cpu", "cuda[:k]" or "auto" (CUDA when available)
    allow_new_elements: bool = False          # fine-tune on elements the pretrained model never saw (their type
                                              # embeddings start untrained); refused by default
    new_dataset_from: Optional[str] = None    # mft: auxiliary data of a dataset the model lacks (e.g. our xTB set on
                                              # an imported DPA-3.1-3M) gets a new embedding column copied from this
                                              # dataset, its energy shift fitted by least squares
    probe_size: int = 64                      # molecules of the drift probe set
    progress: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.mode not in ("alternate", "sum"):
            raise ValueError(f"mode must be 'alternate' or 'sum', got {self.mode!r}")
        if not 0 < self.model_prob <= 1:
            raise ValueError("model_prob must be in (0, 1]")
        if self.task_optimizers and (self.strategy != "mft" or self.mode != "alternate"):
            raise ValueError("task_optimizers applies to strategy 'mft' in mode 'alternate'")
        if self.property_reduction not in ("sum", "mean"):
            raise ValueError(f"property_reduction must be 'sum' or 'mean', got {self.property_reduction!r}")
        if self.energy_norm not in ("deepmd", "per_atom"):
            raise ValueError(f"energy_norm must be 'deepmd' or 'per_atom', got {self.energy_norm!r}")
        if self.curve_probe < 0:
            raise ValueError(f"curve_probe must be >= 0, got {self.curve_probe}")


def build_finetune_model(pretrained: Optional[MFTModel], task: PropertyTask, settings: FinetuneSettings,
                         backbone_cfg=None) -> MFTModel:
    """Model for a strategy: (pretrained or random) backbone + force-field head + a new property head."""
    recipe = task.recipe
    frozen = settings.strategy == "frozen-sklearn"
    if frozen and recipe["kind"] != "scalar":
        raise ValueError(f"frozen-sklearn fits scalar properties; {task.property!r} has a {recipe['kind']} head")
    head = HeadConfig(kind=recipe["kind"], unit=task.unit, hidden=() if frozen else tuple(settings.head_hidden),
                      activation=settings.head_activation, extensive=recipe["extensive"],
                      element_bias=recipe["element_bias"], resnet_dt=settings.head_resnet_dt,
                      deepmd_fitting=settings.head_resnet_dt)
    torch.manual_seed(settings.seed)
    if settings.strategy == "scratch" or pretrained is None:
        if pretrained is None and settings.strategy != "scratch":
            raise ValueError(f"strategy {settings.strategy!r} needs a pretrained model")
        cfg_backbone = backbone_cfg if backbone_cfg is not None else pretrained.config.backbone
        model = MFTModel(ModelConfig(backbone=cfg_backbone, heads={task.property: head,
                                                                   OOD_HEAD: HeadConfig(kind="knn_ood", unit="")}))
        return model
    heads = {k: v for k, v in pretrained.config.heads.items() if v.kind == "forcefield"}
    heads[task.property] = head
    heads[OOD_HEAD] = HeadConfig(kind="knn_ood", unit="")
    dtype = next(pretrained.parameters()).dtype
    model = MFTModel(ModelConfig(backbone=pretrained.config.backbone, heads=heads,
                                 datasets=list(pretrained.config.datasets))).to(dtype)
    state = {k: v for k, v in pretrained.state_dict().items() if k.startswith(("backbone.", "ff_heads."))}
    if settings.reinit_ff_head:
        state = {k: v for k, v in state.items() if not k.startswith("ff_heads.") or k.endswith("shift")}
    model.load_state_dict(state, strict=False)
    model.metadata = dict(getattr(pretrained, "metadata", {}))  # type: ignore[attr-defined]
    return model


def _freeze(model: MFTModel, settings: FinetuneSettings, task: PropertyTask) -> None:
    for name, p in model.named_parameters():
        trainable = True
        if settings.strategy in ("lp", "frozen-sklearn"):
            trainable = name.startswith(f"property_heads.{task.property}.")
        elif settings.strategy in ("ft", "scratch"):
            trainable = not name.startswith("ff_heads.")
        p.requires_grad_(trainable)


class DriftMonitor:
    """Sliced 1-Wasserstein distance between current and pretrained atomic backbone features on a probe set."""

    def __init__(self, model: MFTModel, probe: List[Structure], seed: int = 0) -> None:
        self.probe = probe
        self.seed = seed
        self.reference = self._features(model)

    def _features(self, model: MFTModel) -> np.ndarray:
        from mftcalc.model.inference import predict_structures
        rows = predict_structures(model, self.probe, compute_forces=False, compute_stress=False, features=True)
        return np.concatenate([r["node_features"] for r in rows]).astype(np.float64)

    def __call__(self, model: MFTModel) -> float:
        return sliced_drift(self.reference, self._features(model), seed=self.seed)


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
    dtype = {"float32": torch.float32, "float64": torch.float64}[settings.dtype]
    pretrained = load_model(pretrained_path, dtype) if pretrained_path is not None else None
    if pretrained is not None and settings.strategy != "scratch" and not settings.allow_new_elements:
        check_elements(pretrained, task, pretrained_path)
    ff = None
    if settings.strategy == "mft":
        ff = ff_structures if ff_structures is not None else replay_structures(pretrained_path,
                                                                                task_domain(task.train))
        pretrained = add_aux_datasets(pretrained, ff, settings.new_dataset_from)
    model = build_finetune_model(pretrained, task, settings, backbone_cfg)
    recipe = task.recipe
    fit_property_head(model.property_heads[task.property], task.train, task.property, recipe["kind"],
                      recipe["extensive"], recipe["element_bias"])
    _freeze(model, settings, task)
    prop_batch = resolve_batch_size(settings.property_batch, task.train)
    loss_scale = label_std(task.train, task.property) if settings.normalize_property_loss else 1.0
    sources = [Source(task.name, task.train, "property", 0, prop_batch,
                      settings.model_prob if settings.strategy == "mft" else 1.0, task.property, recipe["loss"],
                      loss_scale, settings.property_reduction)]
    if settings.strategy == "mft":
        names = list(model.config.datasets)
        n_ff = sum(len(v) for v in ff.values())
        for name, structures in ff.items():
            if name not in names:
                raise KeyError(f"force-field data {name!r} is not a dataset of the pretrained model ({names})")
            prob = (1.0 - settings.model_prob) * len(structures) / n_ff
            sources.append(Source(f"ff:{name}", structures, "forcefield", names.index(name),
                                  resolve_batch_size(settings.ff_batch, structures), prob))
    curve_sets = curve_probes(task, settings.curve_probe, settings.seed) if settings.curve_probe else {}
    val_structures = curve_sets.get("val", task.val)
    val_sources = [Source(task.name, val_structures, "property", 0, prop_batch, 1.0, task.property, recipe["loss"],
                          loss_scale, settings.property_reduction)]
    probe = task.val[: settings.probe_size]
    drift = DriftMonitor(model, probe, settings.seed) if settings.strategy != "scratch" else None

    def on_validate(step: int, metrics: Dict[str, float]) -> Dict[str, float]:
        out = {"drift_w1": drift(model)} if drift is not None else {}
        for part, structures in curve_sets.items():
            errs = property_errors(model, structures, task.property)
            out[f"curve/{part}/rmse"] = errs["rmse"]
            out[f"curve/{part}/mae"] = errs["mae"]
        return out

    decay = settings.decay_steps or max(1, settings.steps // 100)
    train_settings = TrainSettings(
        num_steps=settings.steps, lr=ExponentialLR(settings.lr0, settings.lr_end, settings.steps, decay),
        prefactors=ForceFieldPrefactors(), grad_clip=settings.grad_clip, seed=settings.seed, mode=settings.mode,
        sum_weight=settings.lambda_reg, val_every=settings.val_every, checkpoint_every=settings.checkpoint_every,
        dtype=dtype, best_metric=f"val/{task.name}/mae", progress=settings.progress,
        optimizer_per_kind=settings.task_optimizers, energy_norm=settings.energy_norm, device=settings.device)
    metadata = model_metadata(model, _elements(model, task), finetuning={
        "strategy": settings.strategy, "task": task.name, "description": task.description,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "pretrained": str(pretrained_path) if pretrained_path else None})
    record_domains(metadata, pretrained, task, ff if settings.strategy == "mft" else None)

    def save_best(m: torch.nn.Module, path: Path) -> None:
        save_model(m, path, metadata)

    if settings.strategy == "frozen-sklearn":                                   # no optimiser: a ridge fit written into the linear head
        import time
        from mftcalc.training.frozen import fit_frozen_head
        out_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        fit = fit_frozen_head(model, task.property, task.train, recipe["extensive"])
        metadata["finetuning"]["ridge"] = fit
        save_best(model, out_dir / "model.pt")
        steps, wall, device = 0, time.perf_counter() - started, next(model.parameters()).device
    else:
        trainer = Trainer(model, sources, train_settings, out_dir, out_dir / "state.pt", val_sources,
                          on_validate=on_validate, best_path=out_dir / "model.pt", save_model_fn=save_best)
        trainer.run()
        steps, wall, device = trainer.step, trainer.wall, trainer.device
    best = load_model(out_dir / "model.pt", dtype).to(device)
    reference = task.train                        # features of at most 2,000 of them: the head keeps no more
    if len(reference) > 2000:
        keep = np.sort(np.random.default_rng(settings.seed).choice(len(reference), 2000, replace=False))
        reference = [reference[i] for i in keep]
    fit_applicability(best.property_heads[OOD_HEAD], pooled_features(best, reference),
                      [s.numbers for s in task.train], seed=settings.seed)
    save_model(best, out_dir / "model.pt", metadata)
    result: Dict[str, Any] = {"strategy": settings.strategy, "task": task.name, "steps": steps,
                              "train_wall_s": wall, "n_train": len(task.train)}
    parity: Dict[str, np.ndarray] = {}
    for part, structures in {"val": task.val, **task.test_parts}.items():
        labelled = [s for s in structures if task.property in s.properties]
        pred, score = property_predictions(best, labelled, [task.property, OOD_HEAD])
        result[part] = property_errors(best, labelled, task.property, predictions=pred)
        parity[f"{part}_true"] = np.array([s.properties[task.property] for s in labelled])
        parity[f"{part}_pred"] = pred
        parity[f"{part}_ood_score"] = score
    result["ood_score"] = applicability_report(parity)
    np.savez_compressed(out_dir / "parity.npz", **parity)
    plot_parity(parity, out_dir / "parity.png", f"{task.description}: {settings.strategy}", task.unit)
    if drift is not None:
        result["drift_w1"] = drift(best)
    return result


def plot_parity(parity: Dict[str, np.ndarray], path: Path, title: str, unit: str) -> None:
    """Predicted vs true property per evaluation set (``<part>_true`` / ``<part>_pred`` arrays), RMSE in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def record_domains(metadata: Dict[str, Any], pretrained: Optional[MFTModel], task, ff: Optional[Dict]) -> None:
    """Write into the fine-tuned model's metadata where it is meant to be used (read by the calculator's dataset
    rule and domain warnings, :mod:`mftcalc.calculators.domains`): the pretrained datasets' domains, the property
    head's domain (the task's elements and periodicity) and, for MFT, the dataset holding most (over half) of its
    auxiliary structures as the model's default for structures of the task's kind (the force field it kept)."""
    from types import SimpleNamespace
    from mftcalc.training.pretrain import source_domains
    base = getattr(pretrained, "metadata", {}) if pretrained is not None else {}
    domains = dict(base.get("dataset_domains") or {})
    for name, structures in (ff or {}).items():           # auxiliary datasets, new ones included
        domains.setdefault(name, source_domains([SimpleNamespace(name=name, structures=structures)]).get(name))
    domains = {k: v for k, v in domains.items() if v is not None}
    if domains:
        metadata["dataset_domains"] = domains
    periodic = task_domain(task.train) == "materials"
    elements = sorted({int(z) for s in task.train for z in np.unique(s.numbers)})
    metadata["heads"][task.property]["domain"] = {"elements": elements, "periodic": periodic}
    if ff:
        sizes = {name: len(structures) for name, structures in ff.items()}
        main = max(sizes, key=sizes.get)
        if sizes[main] > 0.5 * sum(sizes.values()):
            metadata["default_datasets"] = {"crystal" if periodic else "molecule": main}


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


def replay_structures(pretrained_path: Optional[str | Path], domain: str = "molecules"
                      ) -> Dict[str, List[Structure]]:
    """The domain-matched replay set shipped beside a pretrained checkpoint (``molecules``: the GFN2-xTB
    conformers; ``materials``: the periodic DFT sets), grouped by ``info["dataset"]``."""
    if pretrained_path is None:
        raise ValueError("mft needs a pretrained checkpoint (its replay set is the default force-field data)")
    from mftcalc.data.io import read_structures
    path = Path(pretrained_path)
    replay = replay_path(path, domain)
    if not replay.exists():
        raise FileNotFoundError(f"no {domain} replay set {replay} beside {path}; pass force-field data "
                                "explicitly (ff_data in the config)")
    groups: Dict[str, List[Structure]] = {}
    for s in read_structures(replay):
        groups.setdefault(str(s.info.get("dataset", "default")), []).append(s)
    return groups
