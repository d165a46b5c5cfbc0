"""FIRE on the model's device (``optimizer="fire-torch"``): ASE's ``FIRE`` rule stepping every structure in flight
in one set of batched tensor operations over :class:`mftcalc.relaxation.device_flight.DeviceBatch`.

Per structure, as ``ase.optimize.FIRE`` (default options, no downhill check) on its coordinates x [R, 3] (Å;
atoms, or atoms and cell rows with a cell filter) and forces f [R, 3]: the first step starts from v = 0; later,
when v·f > 0, v ← (1 - a) v + a f / |f| · |v| and, after more than ``nmin`` such steps in a row, dt ← min(dt ·
finc, dtmax), a ← a · fa; otherwise v ← 0, a ← astart, dt ← dt · fdec. Then v ← v + dt f, and x moves by dt v,
scaled to norm ``maxstep`` (Å, over the whole structure) when longer. State: v [B, R, 3] (``rows``), dt, a, the
count of steps with v·f > 0 and whether a structure has stepped (``slot``).
"""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch

from mftcalc.relaxation.device_flight import DeviceBatch
from mftcalc.relaxation.flight import InFlight


class TorchFire:
    """The batched FIRE rule with ``params`` (a :class:`mftcalc.relaxation.optimizers.FireParams`: dt, maxstep,
    dtmax, nmin, finc, fdec, astart, fa)."""

    layouts = {"fire_v": "rows", "fire_dt": "slot", "fire_a": "slot", "fire_up": "slot", "fire_started": "slot"}

    def __init__(self, params: Any) -> None:
        self.params = params

    def fresh(self, batch: DeviceBatch, flights: Sequence[InFlight]) -> Dict[str, torch.Tensor]:
        """The state of structures joining ``batch`` (not yet stepped)."""
        k, dev, p = len(flights), batch.device, self.params
        return {"fire_v": torch.zeros(k, batch.rows, 3, dtype=torch.float64, device=dev),
                "fire_dt": torch.full((k,), float(p.dt), dtype=torch.float64, device=dev),
                "fire_a": torch.full((k,), float(p.astart), dtype=torch.float64, device=dev),
                "fire_up": torch.zeros(k, dtype=torch.int64, device=dev),
                "fire_started": torch.zeros(k, dtype=torch.bool, device=dev)}

    def step(self, batch: DeviceBatch) -> None:
        """One FIRE step of every structure in ``batch`` from its forces ``f`` (module docstring)."""
        t, p = batch.t, self.params
        f, v, dt, a, up_count = t["f"], t["fire_v"], t["fire_dt"], t["fire_a"], t["fire_up"]
        started = t["fire_started"]
        vf = (f * v).sum((1, 2))
        f2 = (f * f).sum((1, 2))
        v2 = (v * v).sum((1, 2))
        up = started & (vf > 0.0)
        down = started & ~up
        mixed = (1.0 - a)[:, None, None] * v + a[:, None, None] * f / torch.sqrt(f2)[:, None, None] \
            * torch.sqrt(v2)[:, None, None]
        v = torch.where(up[:, None, None], mixed, torch.where(down[:, None, None], torch.zeros_like(v), v))
        grow = up & (up_count > p.nmin)
        dt = torch.where(grow, torch.clamp(dt * p.finc, max=p.dtmax), torch.where(down, dt * p.fdec, dt))
        a = torch.where(grow, a * p.fa, torch.where(down, torch.full_like(a, p.astart), a))
        up_count = torch.where(up, up_count + 1, torch.where(down, torch.zeros_like(up_count), up_count))
        v = v + dt[:, None, None] * f
        dr = dt[:, None, None] * v
        norm = torch.sqrt((dr * dr).sum((1, 2)))[:, None, None]
        dr = torch.where(norm > p.maxstep, p.maxstep * dr / norm, dr)
        t.update(fire_v=v, fire_dt=dt, fire_a=a, fire_up=up_count, fire_started=torch.ones_like(started))
        batch.move(t["x"] + dr)
