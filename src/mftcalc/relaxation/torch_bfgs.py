"""BFGS on the model's device (``optimizer="bfgs-torch"`` / ``"bfgs-lindh-torch"``): ASE's ``BFGS`` rule stepping
every structure in flight with batched tensor operations over :class:`mftcalc.relaxation.device_flight.DeviceBatch`
(Hessians as one padded [B, 3R, 3R] batch, identity on the padding).

Per structure, as ``ase.optimize.BFGS`` on its coordinates x (Å; atoms, or atoms and cell rows with a cell filter)
and forces f (eV/Å), flattened to 3R: the first step keeps the start Hessian H₀ (α·I, or Lindh's model Hessian +
shift·I for molecules: :class:`mftcalc.relaxation.bfgs.BFGSParams`); later ones update H with Δx = x - x₀,
Δg = f₀ - f: H ← H + Δg Δgᵀ / (Δx·Δg) - (H Δx)(H Δx)ᵀ / (Δx·H Δx), unless max |Δx| < 1e-7 Å (the same geometry
again). The step is |H|⁻¹ f (|H|: H with its eigenvalues made positive), by a batched Cholesky solve for the
structures whose H is positive definite (then |H| = H) and by the eigenvalue decomposition, as ASE, for the others
(:func:`mftcalc.relaxation.bfgs.abs_newton_step` is the host version); it is scaled so that the longest row
(atom or cell row) moves ``maxstep`` Å when longer. State: H (``dofs``), x₀ and f₀ (``rows``), whether a
structure has stepped (``slot``).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from mftcalc.relaxation.bfgs import BFGSParams
from mftcalc.relaxation.device_flight import DeviceBatch
from mftcalc.relaxation.flight import InFlight


def abs_newton_steps(hessian: torch.Tensor, forces: torch.Tensor) -> torch.Tensor:
    """|H|⁻¹ f [B, d] for Hessians [B, d, d] (eV/Å²) and forces [B, d] (eV/Å): Cholesky where H is positive
    definite, the eigenvalue decomposition with |eigenvalues| (ASE's step) for the rest."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    step = torch.cholesky_solve(forces.unsqueeze(-1), factor).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        index = bad.nonzero().squeeze(1)
        omega, vectors = torch.linalg.eigh(hessian.index_select(0, index))
        g = forces.index_select(0, index)
        coeff = (g.unsqueeze(1) @ vectors).squeeze(1) / omega.abs()
        step = step.index_copy(0, index, (vectors @ coeff.unsqueeze(-1)).squeeze(-1))
    return step


class TorchBFGS:
    """The batched BFGS rule with ``params`` (:class:`mftcalc.relaxation.bfgs.BFGSParams`)."""

    layouts = {"bfgs_h": "dofs", "bfgs_x0": "rows", "bfgs_f0": "rows", "bfgs_started": "slot"}

    def __init__(self, params: BFGSParams) -> None:
        self.params = params

    def fresh(self, batch: DeviceBatch, flights: Sequence[InFlight]) -> Dict[str, torch.Tensor]:
        """The state of structures joining ``batch``: start Hessians [k, 3R, 3R], no previous step."""
        k, dev, p, d = len(flights), batch.device, self.params, 3 * batch.rows
        hessian = torch.eye(d, dtype=torch.float64, device=dev).repeat(k, 1, 1)
        if p.initial_hessian == "alpha":
            hessian *= p.alpha
        else:
            if batch.kind is not None:
                raise ValueError("the Lindh start Hessian is for molecules (fixed cell)")
            for j, f in enumerate(flights):                  # admission: one model Hessian per joining molecule
                m = 3 * f.structure.n_atoms
                h0 = p.hessian0(f.structure.positions, f.structure.numbers)
                hessian[j, :m, :m] = torch.from_numpy(h0).to(dev)
        zeros = torch.zeros(k, batch.rows, 3, dtype=torch.float64, device=dev)
        return {"bfgs_h": hessian, "bfgs_x0": zeros, "bfgs_f0": zeros.clone(),
                "bfgs_started": torch.zeros(k, dtype=torch.bool, device=dev)}

    def step(self, batch: DeviceBatch) -> None:
        """One BFGS step of every structure in ``batch`` from its forces ``f`` (module docstring)."""
        t, p = batch.t, self.params
        b = len(batch.flights)
        x, f = t["x"].reshape(b, -1), t["f"].reshape(b, -1)
        hessian = t["bfgs_h"]
        dx = x - t["bfgs_x0"].reshape(b, -1)
        dg = t["bfgs_f0"].reshape(b, -1) - f
        update = t["bfgs_started"] & (dx.abs().amax(1) >= 1e-7)
        on = update.to(torch.float64)[:, None]
        dx, dg = dx * on, dg * on                            # no update: an exact zero correction
        one = torch.ones_like(on[:, 0])
        hdx = (hessian @ dx.unsqueeze(-1)).squeeze(-1)
        a = torch.where(update, (dx * dg).sum(1), one)
        curvature = torch.where(update, (dx * hdx).sum(1), one)
        left = torch.stack([dg, hdx], dim=2)                  # H += Δg Δgᵀ / a - (H Δx)(H Δx)ᵀ / curvature
        right = torch.stack([dg / a[:, None], -hdx / curvature[:, None]], dim=1)
        hessian = hessian.baddbmm_(left, right)               # (in place: the state's own tensor)
        dr = abs_newton_steps(hessian, f).view(b, -1, 3)
        longest = torch.sqrt((dr * dr).sum(-1)).amax(1)
        scale = torch.where(longest >= p.maxstep, p.maxstep / longest, torch.ones_like(longest))
        dr = dr * scale[:, None, None]
        t.update(bfgs_h=hessian, bfgs_x0=t["x"], bfgs_f0=t["f"], bfgs_started=torch.ones_like(update))
        batch.move(t["x"] + dr)
