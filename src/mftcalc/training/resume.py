"""The training loop's state: what a checkpoint holds, how a run resumes from it exactly, and how a resume under
changed settings, data or origin is stated or refused (:class:`ResumableState`, a base of
:class:`mftcalc.training.loop.Trainer`)."""
from __future__ import annotations

import sys
import time
from dataclasses import MISSING
from typing import Dict, List, Optional

import torch

from mftcalc.data.frame_params import frame_params_digest
from mftcalc.data.structure import structures_digest
from mftcalc.model.checkpoint import atomic_save
from mftcalc.training.best_checkpoint import restore_best
from mftcalc.training.weight_average import resume_weight_average

STATE_FORMAT = "mftcalc-train-state"


class ResumableState:
    """Checkpoint writing and exact resume of a :class:`~mftcalc.training.loop.Trainer`.

    Reads the trainer's ``model``, ``ema``, ``optimizers``, ``samplers``, ``sources``, ``settings``, ``step``,
    ``best_value``, ``best_weights``, ``best_path``, ``save_model_fn``, ``final_model``, ``wall``, ``origin``,
    ``rank``, ``world``, ``state_path``, ``out_dir`` and ``_digests``; :meth:`_load_state` sets them from the file.
    """

    def state_dict(self) -> Dict:
        return {"format": STATE_FORMAT, "step": self.step, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self._optimizer_state(), "samplers": [s.state_dict() for s in self.samplers],
                "best_value": self.best_value, "best_model": self.best_weights, "wall": self.wall,
                "torch_rng": torch.get_rng_state(), "sources": [s.name for s in self.sources],
                "settings": self.settings_record(), "origin": self.origin}

    def settings_record(self) -> Dict[str, str]:
        """The run's settings and source mixture as strings, stored with the state so that a resume under
        changed settings is stated (printed and appended to ``<out_dir>/resume.log``)."""
        record = {name: str(getattr(self.settings, name)) for name in self.settings.__dataclass_fields__
                  if name not in ("progress", "log_every", "device")}      # a resume may move to another device
        record["world_size"] = str(self.world)                                 # per-rank batch x world = global
        frame_names = list(getattr(self.model, "frame_param_names", []))
        if frame_names:                                    # read from info, which structures_digest leaves out
            record["frame_params"] = ", ".join(frame_names)
        for s in self.sources:
            record[f"source/{s.name}"] = f"kind={s.kind} prob={s.prob} batch_size={s.batch_size} n={len(s.structures)}"
            record[f"data/{s.name}"] = self._digests.setdefault(s.name, structures_digest(s.structures))
            if frame_names and s.kind == "property":
                record[f"frame_data/{s.name}"] = self._digests.setdefault(
                    f"frame:{s.name}", frame_params_digest(s.structures, frame_names))
        return record

    def _state_changes(self, old: Optional[Dict[str, str]]) -> List[str]:
        if old is None:
            return ["the state predates settings records: its settings cannot be compared"]
        new = self.settings_record()
        defaults = {name: str(f.default) for name, f in type(self.settings).__dataclass_fields__.items()
                    if f.default is not MISSING}
        # a setting added after the state was written, at its default, is no change
        return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}"
                for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                and not (k not in old and new.get(k) == defaults.get(k))]

    def _load_state(self) -> None:
        from mftcalc.model.checkpoint import load_training_state   # errors name the file and how to restart
        state = load_training_state(self.state_path)
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"{self.state_path} is not an mftcalc training state; delete it or pick another path")
        if state["sources"] != [s.name for s in self.sources]:
            raise ValueError(f"{self.state_path} was written for sources {state['sources']}, "
                             f"this run has {[s.name for s in self.sources]}")
        old_origin = state.get("origin")
        if old_origin is not None and old_origin != self.origin:
            differ = ", ".join(f"{k}: {old_origin.get(k, '(none)')} -> {self.origin.get(k, '(none)')}"
                               for k in sorted(set(old_origin) | set(self.origin))
                               if old_origin.get(k) != self.origin.get(k))
            raise ValueError(f"{self.state_path} continues a run that started from another model ({differ}); "
                             f"its weights descend from that one. Delete {self.state_path.parent} to train from "
                             "the new model, or restore the old one to resume")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:                        # missing keys, size mismatches: another architecture
            first = str(exc).strip().splitlines()[-1].strip()
            raise ValueError(f"{self.state_path} holds the weights of a model shaped unlike this run's ({first}): "
                             "the heads, frame parameters or backbone changed. Delete "
                             f"{self.state_path.parent} to start over, or restore the old settings to resume") from None
        self.ema, ema_note = resume_weight_average(self.ema, self.model, state.get("ema"))
        self._load_optimizer_state(state["optimizer"])
        for sampler, st in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(st)
        self.step = int(state["step"])
        self.best_weights = state.get("best_model")
        best_note, self.best_value = restore_best(self.best_path if self.rank == 0 else None, self.best_weights,
                                                  self.final_model, self.save_model_fn, float(state["best_value"]))
        self.wall = float(state["wall"])
        torch.set_rng_state(state["torch_rng"])
        changes = self._state_changes(state.get("settings")) + [n for n in (ema_note, best_note) if n]
        if changes and self.rank == 0:
            message = (f"resuming {self.state_path} at step {self.step} with changed settings:\n  "
                       + "\n  ".join(changes))
            print(message, file=sys.stderr)
            with open(self.out_dir / "resume.log", "a") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def _optimizer_state(self) -> Dict:
        if list(self.optimizers) == ["all"]:
            return self.optimizers["all"].state_dict()
        return {"per_kind": {k: o.state_dict() for k, o in self.optimizers.items()}}

    def _load_optimizer_state(self, state: Dict) -> None:
        per_kind = "per_kind" in state
        if per_kind != (list(self.optimizers) != ["all"]) or (per_kind and set(state["per_kind"]) != set(
                self.optimizers)):
            raise ValueError(f"{self.state_path} was written with optimizer_per_kind={per_kind}; this run has "
                             f"optimizer_per_kind={self.settings.optimizer_per_kind}")
        for kind, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["per_kind"][kind] if per_kind else state)

    def save_state(self) -> None:
        if self.rank == 0:
            atomic_save(self.state_dict(), self.state_path)
