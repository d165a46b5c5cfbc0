"""The one training loop: sources drawn per step, losses, Adam + exponential LR, clipping, validation,
atomic checkpoints with exact resume (:mod:`mftcalc.training.resume`), learning curves, an optional anchor to the
starting backbone (:mod:`mftcalc.training.anchor`), and data parallelism with DistributedDataParallel
(:mod:`mftcalc.training.distributed`: per-rank batches, rank-0 I/O).

Pretraining (several force-field sources) and every fine-tuning strategy (a property source, optionally with
force-field sources in ``alternate`` or ``sum`` mode, optionally with frozen parameters) run through
:class:`Trainer`; they differ only in the model they pass in, which parameters require grad and the sources.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from mftcalc import keys as K
from mftcalc.analysis.plots import plot_learning_curves
from mftcalc.data.batch import collate
from mftcalc.devices import describe_device, resolve_device
from mftcalc.training.distributed import all_reduce_logged_parts, all_reduce_sum, barrier, local_device, rank_and_world, wrap_data_parallel
from mftcalc.training.anchor import build_anchor
from mftcalc.training.best_checkpoint import snapshot
from mftcalc.training.csv_log import append_row
from mftcalc.training.resume import ResumableState
from mftcalc.training.evaluate import validation_metrics
from mftcalc.training.losses import ForceFieldPrefactors, forcefield_loss, property_loss
from mftcalc.training.sampler import EpochSampler, Source, choose_source
from mftcalc.training.schedule import ExponentialLR
from mftcalc.training.weight_average import AVERAGE_PREFIX, final_metrics, update_weight_average, weight_average


@dataclass
class TrainSettings:
    """Loop settings. ``mode``: ``alternate`` (one source per step, by probability) or ``sum`` (the first
    property source every step + ``sum_weight`` × one force-field source). ``optimizer_per_kind`` (alternate
    mode): one Adam state per source kind (property, forcefield) over the same parameters, so that each task's
    steps are normalised by its own gradient moments instead of the larger task's."""

    num_steps: int = 1000
    lr: ExponentialLR = field(default_factory=ExponentialLR)
    prefactors: ForceFieldPrefactors = field(default_factory=ForceFieldPrefactors)
    grad_clip: float = 10.0
    seed: int = 0
    mode: str = "alternate"
    sum_weight: float = 1.0
    log_every: int = 10
    val_every: int = 200
    checkpoint_every: int = 50
    dtype: torch.dtype = torch.float32
    best_metric: Optional[str] = None     # e.g. "val/gap/mae": keep the best-on-validation weights
    progress: bool = True
    optimizer_per_kind: bool = False
    energy_norm: str = "deepmd"           # force-field energy/virial term: "deepmd" (MSE(E)/N) or "per_atom"
    force_huber: float = 0.0              # force term: 0 = squared error; > 0 = Huber threshold in eV/Å
    ema_decay: float = 0.0                # > 0: keep an exponential moving average of the weights (validated
                                          # beside the raw weights, exported); 0 = off
    device: str = "auto"                  # "cpu", "cuda", "cuda:1", or "auto" (CUDA when available)
    anchor: str = "none"                  # "features" or "weights": a penalty holding the backbone near its start
    anchor_weight: float = 1.0            # λ of the anchor (mftcalc.training.anchor)


class Trainer(ResumableState):
    """Runs ``settings.num_steps`` optimiser steps over ``sources``, validating on ``val_sources``.

    Args:
        model: an ``MFTModel`` (parameters with ``requires_grad=False`` stay frozen).
        sources: training sources.
        val_sources: validation sources (same kinds); metrics go to ``<out_dir>/val.csv`` and the curve PNG.
        out_dir: where ``train.csv``, ``val.csv`` and ``learning_curve.png`` go.
        state_path: the one checkpoint file of this run (written atomically; resumed from when it exists).
        on_validate: optional callback ``(step, metrics, model)`` (e.g. drift logging) whose returned dict is
            logged; ``model`` is :attr:`final_model` and ``metrics`` its ``val/...`` errors.
        best_path: where the best-on-validation model checkpoint is written (with ``settings.best_metric``, judged
            on and taken from :attr:`final_model`: the weight average when ``ema_decay > 0``).
        save_model_fn: ``(model, path) -> None`` writing a model checkpoint (used for ``best_path``).
        origin: what the run starts from (e.g. ``{"pretrained": "<content sha256>"}``), stored with the state; a
            resume from another origin is refused (its weights descend from something else).
    """

    def __init__(self, model: torch.nn.Module, sources: Sequence[Source], settings: TrainSettings,
                 out_dir: str | Path, state_path: str | Path, val_sources: Sequence[Source] = (),
                 on_validate: Optional[Callable[[int, Dict[str, float], torch.nn.Module], Dict[str, float]]] = None,
                 best_path: Optional[str | Path] = None,
                 save_model_fn: Optional[Callable[[torch.nn.Module, Path], None]] = None,
                 origin: Optional[Dict[str, str]] = None) -> None:
        if not sources:
            raise ValueError("no training sources")
        if settings.mode not in ("alternate", "sum"):
            raise ValueError(f"mode must be 'alternate' or 'sum', got {settings.mode!r}")
        if settings.mode == "sum" and not any(s.kind == "property" for s in sources):
            raise ValueError("mode 'sum' needs a property source")
        if settings.mode == "sum" and settings.optimizer_per_kind:
            raise ValueError("optimizer_per_kind needs mode 'alternate' (sum mode takes one step on both tasks)")
        self.device = resolve_device(local_device(settings.device))
        if settings.progress and rank_and_world()[0] == 0:
            print(f"training on {describe_device(self.device, settings.device)}", file=sys.stderr)
        self.model = model.to(device=self.device, dtype=settings.dtype)
        self.sources = list(sources)
        self.val_sources = list(val_sources)
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.state_path = Path(state_path)
        self.on_validate = on_validate
        self.best_path = Path(best_path) if best_path else None
        self.save_model_fn = save_model_fn
        self.origin = dict(origin or {})
        self.rank, self.world = rank_and_world()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        kinds = sorted({s.kind for s in self.sources}) if settings.optimizer_per_kind else ["all"]
        self.optimizers = {kind: torch.optim.Adam(self.params, lr=settings.lr.lr0) for kind in kinds}
        self.ema = weight_average(self.model, settings.ema_decay)      # None without ema_decay
        self.anchor = build_anchor(self.model, settings.anchor, settings.anchor_weight)   # before any resume: the
                                                                                        # start is its reference
        self.samplers = [EpochSampler(len(s.structures), s.batch_size * self.world, seed=settings.seed * 1000 + k)
                         for k, s in enumerate(self.sources)]
        self._digests: Dict[str, str] = {}             # source name -> structures_digest (computed once)
        self.step = 0
        self.best_value = math.inf
        self.best_weights: Optional[Dict[str, torch.Tensor]] = None    # a copy of what best_path holds
        self.wall = 0.0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            self._load_state()
        self.forward = wrap_data_parallel(self.model, self.device)   # after the resume: DDP broadcasts rank 0's

    # ------------------------------------------------------------------ one step
    def _batch_loss(self, source: Source, sampler: EpochSampler, lr: float) -> tuple:
        idx = sampler.next_indices()
        global_structures = [source.structures[i] for i in idx]
        local = global_structures[self.rank::self.world]
        dtype = self.settings.dtype
        if source.kind == "forcefield":
            with_stress = any(s.stress is not None for s in global_structures)
            batch = collate(local, dtype=dtype, dataset=source.dataset_index, properties=[], device=self.device)
            pred = self.forward(batch, compute_forces=True, compute_stress=with_stress, compute_properties=False)
            norm_e = float(sum(s.energy is not None for s in global_structures))
            norm_f = float(3 * sum(s.n_atoms for s in global_structures if s.forces is not None))
            norm_v = float(sum(s.stress is not None for s in global_structures))
            return forcefield_loss(pred, batch, lr, self.settings.lr.lr0, self.settings.prefactors,
                                   norm_structures=norm_e, norm_force_components=norm_f,
                                   norm_virial_structures=norm_v, energy_norm=self.settings.energy_norm,
                                   force_huber=self.settings.force_huber)
        assert source.property is not None
        batch = collate(local, dtype=dtype, properties=[source.property], device=self.device,
                        frame_params=self.model.frame_param_names)
        anchored = self.anchor is not None and self.anchor.kind == "features"
        pred = self.forward(batch, compute_forces=False, compute_stress=False, compute_properties=True,
                            features=anchored)
        norm = float(sum(source.property in s.properties for s in global_structures))
        loss, parts = property_loss(pred, batch, source.property, source.loss, norm_structures=norm,
                                    scale=source.loss_scale, reduction=source.reduction)
        if anchored:               # this rank's share: the ranks' shares sum to the global batch's penalty
            keys = [(source.name, int(i)) for i in idx[self.rank::self.world]]      # this rank's items
            sum_norm = (lambda v: all_reduce_sum(v, self.device)) if self.world > 1 else None
            penalty = self.anchor.feature_penalty(batch, pred[K.NODE_FEATURES], keys, sum_norm)
            loss = loss + penalty
            parts = {**parts, "anchor_loss": float(penalty.detach())}
        return loss, parts

    def _train_step(self) -> Dict[str, float]:
        settings = self.settings
        lr = settings.lr(self.step)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        kind = "all"
        log: Dict[str, float] = {"step": float(self.step), "lr": lr}
        if settings.mode == "alternate":
            k = choose_source([s.prob for s in self.sources], settings.seed, self.step)
            loss, parts = self._batch_loss(self.sources[k], self.samplers[k], lr)
            kind = self.sources[k].kind if "all" not in self.optimizers else "all"
            log["source"] = float(k)
            log.update({f"{self.sources[k].name}/{n}": v for n, v in parts.items()})
        else:
            kp = next(i for i, s in enumerate(self.sources) if s.kind == "property")
            ff = [i for i, s in enumerate(self.sources) if s.kind == "forcefield"]
            if ff and self.world > 1:
                # DDP reduces once per backward and forward: the property term's gradient accumulates locally
                # (no_sync) and is reduced with the force-field term's in the second, synchronised backward
                with self.forward.no_sync():
                    loss_p, parts = self._batch_loss(self.sources[kp], self.samplers[kp], lr)
                    (loss_p * self.world).backward()
                loss = loss_p.detach()
            else:
                loss, parts = self._batch_loss(self.sources[kp], self.samplers[kp], lr)
            log.update({f"{self.sources[kp].name}/{n}": v for n, v in parts.items()})
            if ff:
                kf = ff[choose_source([self.sources[i].prob for i in ff], settings.seed, self.step)]
                loss_f, parts_f = self._batch_loss(self.sources[kf], self.samplers[kf], lr)
                loss = loss + settings.sum_weight * loss_f
                log.update({f"{self.sources[kf].name}/{n}": v for n, v in parts_f.items()})
        # the local loss is this rank's share of the global-batch loss; DDP averages over ranks, hence × world
        total = loss * self.world if self.world > 1 else loss
        if self.anchor is not None and self.anchor.kind == "weights":     # the same on every rank: not × world
            penalty = self.anchor.weight_penalty(self.model)
            total = total + penalty
            log["anchor_weights"] = float(penalty.detach())
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, settings.grad_clip)
        self.optimizers[kind].step()
        if self.ema is not None:
            update_weight_average(self.ema, self.model)
        if self.world > 1:
            # the parts are this rank's shares of the global batch; log the global batch's errors
            log = all_reduce_logged_parts(log, self.device)
        log["loss"] = all_reduce_sum(float(loss.detach()), self.device)
        log["grad_norm"] = float(grad_norm)
        return log

    # ------------------------------------------------------------------ validation
    @property
    def final_model(self) -> torch.nn.Module:
        """The weights to export, score and keep: the moving average with ``ema_decay > 0``, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    def validate(self) -> Dict[str, float]:
        """``val/...`` metrics of the trained weights; with a weight average also ``ema/val/...`` of it."""
        metrics = validation_metrics(self.model, self.val_sources)
        if self.ema is not None:
            metrics.update({AVERAGE_PREFIX + k: v for k, v in validation_metrics(self.ema.module, self.val_sources).items()})
        if self.on_validate is not None:
            metrics.update(self.on_validate(self.step, final_metrics(metrics, self.ema is not None), self.final_model))
        return metrics

    # ------------------------------------------------------------------ run
    def run(self, stop_at: Optional[int] = None, time_budget_s: Optional[float] = None) -> Dict[str, float]:
        """Train until ``settings.num_steps`` (or earlier: step ``stop_at`` or after ``time_budget_s`` seconds of
        this call, checkpointing before returning); returns the last validation metrics (empty if none)."""
        settings = self.settings
        end = settings.num_steps if stop_at is None else min(stop_at, settings.num_steps)
        call_start = time.perf_counter()
        train_csv = self.out_dir / "train.csv"
        val_csv = self.out_dir / "val.csv"
        last_val: Dict[str, float] = {}
        bar = None
        if settings.progress and self.rank == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=settings.num_steps, initial=self.step, desc="train", unit="step")
        while self.step < end:
            if time_budget_s is not None and time.perf_counter() - call_start > time_budget_s:
                self.save_state()
                break
            t0 = time.perf_counter()
            log = self._train_step()
            self.step += 1
            self.wall += time.perf_counter() - t0
            log["wall_s"] = self.wall
            if self.rank == 0:
                if self.step % settings.log_every == 0 or self.step == settings.num_steps:
                    append_row(train_csv, log)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(self._running_losses(log), refresh=False)
            is_val = self.val_sources and (self.step % settings.val_every == 0 or self.step == settings.num_steps)
            if is_val and self.rank == 0:
                last_val = {"step": float(self.step), "wall_s": self.wall, **self.validate()}
                append_row(val_csv, last_val)
                self._maybe_save_best(last_val)
                plot_learning_curves(self.out_dir)
            if self.step % settings.checkpoint_every == 0 or self.step in (end, settings.num_steps):
                self.save_state()
            barrier()
        if bar is not None:
            bar.close()
        return last_val

    def _running_losses(self, log: Dict[str, float]) -> Dict[str, str]:
        """Progress-bar fields: one running mean (EMA over ~50 of its steps) of the loss per source kind, so that
        alternating property and force-field steps do not show as one jumping number; and the learning rate."""
        ema = self.__dict__.setdefault("_loss_ema", {})
        if "source" in log:
            kind = self.sources[int(log["source"])].kind
            label = "loss_prop" if kind == "property" else "loss_ff"
            ema[label] = log["loss"] if label not in ema else 0.98 * ema[label] + 0.02 * log["loss"]
        else:
            ema["loss"] = log["loss"] if "loss" not in ema else 0.98 * ema["loss"] + 0.02 * log["loss"]
        return {**{k: f"{v:.3g}" for k, v in sorted(ema.items())}, "lr": f"{log['lr']:.2g}"}

    def _maybe_save_best(self, metrics: Dict[str, float]) -> None:
        key = self.settings.best_metric
        if key is None or self.best_path is None or self.save_model_fn is None:
            return
        key = (AVERAGE_PREFIX if self.ema is not None else "") + key
        if key not in metrics:
            raise KeyError(f"best_metric {key!r} not among validation metrics {sorted(metrics)}")
        if metrics[key] < self.best_value:
            self.best_value = metrics[key]
            self.save_model_fn(self.final_model, self.best_path)
            self.best_weights = snapshot(self.final_model)
