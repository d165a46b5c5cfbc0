"""Loss functions: the force-field loss (energy, forces, virial with lr-tied prefactors) and property losses.

Each loss returns ``(loss, parts)`` where ``parts`` are detached per-term values for logging. Normalisation
counts may be passed in (``norm_*``) so that data-parallel ranks holding parts of one global batch sum to
exactly the single-process loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from mftcalc import keys as K
from mftcalc.training.schedule import prefactor


@dataclass(frozen=True)
class ForceFieldPrefactors:
    """Start (at lr0) and limit (as lr → 0) prefactors of the energy, force and virial terms."""

    start_e: float = 0.2
    limit_e: float = 20.0
    start_f: float = 100.0
    limit_f: float = 60.0
    start_v: float = 0.02
    limit_v: float = 1.0


def forcefield_loss(pred: Dict[str, Tensor], batch: Dict[str, Tensor], lr: float, lr0: float,
                    pref: ForceFieldPrefactors = ForceFieldPrefactors(),
                    norm_structures: Optional[float] = None, norm_force_components: Optional[float] = None,
                    norm_virial_structures: Optional[float] = None) -> Tuple[Tensor, Dict[str, float]]:
    """λ_E·MSE(E/N) + λ_F·MSE(F) + λ_V·MSE(W/N) over the labels present (``has_*`` masks).

    Energies eV, forces eV/Å, virial W = −stress·V in eV. Norms default to the local counts.
    """
    n_atoms = batch[K.N_ATOMS].to(pred[K.ENERGY].dtype)
    parts: Dict[str, float] = {}
    total = pred[K.ENERGY].new_zeros(())
    if K.ENERGY in batch:
        mask = batch[K.HAS_ENERGY]
        diff = ((pred[K.ENERGY] - batch[K.ENERGY]) / n_atoms)[mask]
        count = norm_structures if norm_structures is not None else float(mask.sum())
        if count > 0:
            mse = (diff * diff).sum() / count
            total = total + prefactor(pref.start_e, pref.limit_e, lr, lr0) * mse
            parts["rmse_e_per_atom"] = float(mse.detach()) ** 0.5
    if K.FORCES in batch and K.FORCES in pred:
        atom_mask = batch[K.HAS_FORCES][batch[K.BATCH]]
        diff = (pred[K.FORCES] - batch[K.FORCES])[atom_mask]
        count = norm_force_components if norm_force_components is not None else float(diff.numel())
        if count > 0:
            mse = (diff * diff).sum() / count
            total = total + prefactor(pref.start_f, pref.limit_f, lr, lr0) * mse
            parts["rmse_f"] = float(mse.detach()) ** 0.5
    if K.STRESS in batch and K.VIRIAL in pred:
        mask = batch[K.HAS_STRESS]
        volume = torch.abs(torch.linalg.det(batch[K.CELL]))
        label_virial = -batch[K.STRESS] * volume.view(-1, 1, 1)
        diff = ((pred[K.VIRIAL] - label_virial) / n_atoms.view(-1, 1, 1))[mask]
        count = norm_virial_structures if norm_virial_structures is not None else float(mask.sum())
        if count > 0:
            mse = (diff * diff).sum() / (9.0 * count)
            total = total + prefactor(pref.start_v, pref.limit_v, lr, lr0) * mse
            parts["rmse_v_per_atom"] = float(mse.detach()) ** 0.5
    parts["loss"] = float(total.detach())
    return total, parts


def property_loss(pred: Dict[str, Tensor], batch: Dict[str, Tensor], name: str, kind: str = "mse",
                  norm_structures: Optional[float] = None, beta: float = 1.0, scale: float = 1.0
                  ) -> Tuple[Tensor, Dict[str, float]]:
    """MSE or smooth-L1 (``kind="smooth_l1"``, threshold ``beta``) of property ``name`` over labelled structures.

    The errors enter the loss divided by ``scale`` (property units); the logged ``mae`` is in property units.
    """
    label_key = K.property_key(name)
    if label_key not in batch:
        raise KeyError(f"batch has no labels for property {name!r}; it carries "
                       f"{sorted(k[len(K.PROPERTY_PREFIX):] for k in batch if k.startswith(K.PROPERTY_PREFIX))}")
    mask = batch[K.has_property_key(name)]
    diff = (pred[name] - batch[label_key])[mask]
    scaled = diff / scale
    count = norm_structures if norm_structures is not None else float(mask.sum())
    if kind == "mse":
        loss = (scaled * scaled).sum() / max(count, 1.0)
    elif kind == "smooth_l1":
        loss = torch.nn.functional.smooth_l1_loss(scaled, torch.zeros_like(scaled), beta=beta, reduction="sum") / max(count, 1.0)
    else:
        raise ValueError(f"unknown property loss {kind!r}; use 'mse' or 'smooth_l1'")
    return loss, {"loss": float(loss.detach()), "mae": float(diff.detach().abs().mean()) if diff.numel() else 0.0}
