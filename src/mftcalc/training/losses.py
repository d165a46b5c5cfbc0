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
from mftcalc.schema import option
from mftcalc.training.schedule import prefactor


@dataclass(frozen=True)
class ForceFieldPrefactors:
    """Start (at lr0) and limit (as lr → 0) prefactors of the energy, force and virial terms."""

    start_e: float = option(0.2, "energy prefactor at lr0")
    limit_e: float = option(20.0, "energy prefactor as lr → 0")
    start_f: float = option(100.0, "force prefactor at lr0")
    limit_f: float = option(60.0, "force prefactor as lr → 0")
    start_v: float = option(0.02, "virial prefactor at lr0")
    limit_v: float = option(1.0, "virial prefactor as lr → 0")


def check_force_huber(delta: float) -> None:
    if not delta >= 0:
        raise ValueError(f"force_huber must be >= 0 eV/Å (0 = squared error), got {delta!r}")


def forcefield_loss(pred: Dict[str, Tensor], batch: Dict[str, Tensor], lr: float, lr0: float,
                    pref: ForceFieldPrefactors = ForceFieldPrefactors(),
                    norm_structures: Optional[float] = None, norm_force_components: Optional[float] = None,
                    norm_virial_structures: Optional[float] = None, energy_norm: str = "deepmd",
                    force_huber: float = 0.0) -> Tuple[Tensor, Dict[str, float]]:
    """Energy, force and virial terms over the labels present (``has_*`` masks).

    ``energy_norm="deepmd"`` (default, deepmd-kit's ``EnergyStdLoss``): λ_E·⟨(E−Ê)²/N⟩ + λ_F·MSE(F) +
    λ_V·⟨|W−Ŵ|²/(9N)⟩, the mean over structures of the squared total-energy (virial) error divided by the atom
    count N. ``energy_norm="per_atom"`` (mftcalc before 2026-12): λ_E·MSE(E/N) + λ_V·MSE(W/N), N× weaker.
    ``force_huber`` δ > 0 (eV/Å) replaces each force component's squared error x² by the Huber form scaled to
    match it below δ: x² for |x| ≤ δ, 2δ|x| − δ² above, so large errors (rattled conformers) pull linearly
    and the fit leans towards the mean absolute error. The logged ``rmse_f`` stays the plain RMSE; ``mae_f`` is
    the force MAE (eV/Å).
    Energies eV, forces eV/Å, virial W = −stress·V in eV. Norms default to the local counts. The logged
    ``rmse_e_per_atom``/``rmse_v_per_atom`` are per-atom errors in both modes.
    """
    if energy_norm not in ("deepmd", "per_atom"):
        raise ValueError(f"energy_norm must be 'deepmd' or 'per_atom', got {energy_norm!r}")
    check_force_huber(force_huber)
    n_atoms = batch[K.N_ATOMS].to(pred[K.ENERGY].dtype)
    parts: Dict[str, float] = {}
    total = pred[K.ENERGY].new_zeros(())
    if K.ENERGY in batch:
        mask = batch[K.HAS_ENERGY]
        diff = ((pred[K.ENERGY] - batch[K.ENERGY]) / n_atoms)[mask]
        count = norm_structures if norm_structures is not None else float(mask.sum())
        if count > 0:
            mse = (diff * diff).sum() / count
            term = ((diff * diff) * n_atoms[mask]).sum() / count if energy_norm == "deepmd" else mse
            total = total + prefactor(pref.start_e, pref.limit_e, lr, lr0) * term
            parts["rmse_e_per_atom"] = float(mse.detach()) ** 0.5
    if K.FORCES in batch and K.FORCES in pred:
        atom_mask = batch[K.HAS_FORCES][batch[K.BATCH]]
        diff = (pred[K.FORCES] - batch[K.FORCES])[atom_mask]
        count = norm_force_components if norm_force_components is not None else float(diff.numel())
        if count > 0:
            mse = (diff * diff).sum() / count
            if force_huber > 0:
                term = 2.0 * torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="sum",
                                                            delta=force_huber) / count
            else:
                term = mse
            total = total + prefactor(pref.start_f, pref.limit_f, lr, lr0) * term
            parts["rmse_f"] = float(mse.detach()) ** 0.5
            parts["mae_f"] = float(diff.detach().abs().sum()) / count
    if K.STRESS in batch and K.VIRIAL in pred:
        mask = batch[K.HAS_STRESS]
        volume = torch.abs(torch.linalg.det(batch[K.CELL]))
        label_virial = -batch[K.STRESS] * volume.view(-1, 1, 1)
        diff = ((pred[K.VIRIAL] - label_virial) / n_atoms.view(-1, 1, 1))[mask]
        count = norm_virial_structures if norm_virial_structures is not None else float(mask.sum())
        if count > 0:
            mse = (diff * diff).sum() / (9.0 * count)
            term = ((diff * diff) * n_atoms[mask].view(-1, 1, 1)).sum() / (9.0 * count) \
                if energy_norm == "deepmd" else mse
            total = total + prefactor(pref.start_v, pref.limit_v, lr, lr0) * term
            parts["rmse_v_per_atom"] = float(mse.detach()) ** 0.5
    parts["loss"] = float(total.detach())
    return total, parts


def property_loss(pred: Dict[str, Tensor], batch: Dict[str, Tensor], name: str, kind: str = "mse",
                  norm_structures: Optional[float] = None, beta: float = 1.0, scale: float = 1.0,
                  reduction: str = "mean") -> Tuple[Tensor, Dict[str, float]]:
    """Squared (``kind="mse"``) or smooth-L1 (``kind="smooth_l1"``, threshold ``beta``) errors of property
    ``name`` over the labelled structures of the batch.

    The errors enter the loss divided by ``scale`` (property units). ``reduction="sum"``: summed over the
    structures, as deepmd-kit's ``PropertyLoss`` (``F.mse_loss(..., reduction="sum")``, the authors' recipe);
    ``"mean"``: divided by ``norm_structures`` (default the local count). The logged ``mae`` is in property units,
    the absolute errors summed and divided by ``norm_structures`` (default the local count).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"property loss reduction must be 'sum' or 'mean', got {reduction!r}")
    label_key = K.property_key(name)
    if label_key not in batch:
        raise KeyError(f"batch has no labels for property {name!r}; it carries "
                       f"{sorted(k[len(K.PROPERTY_PREFIX):] for k in batch if k.startswith(K.PROPERTY_PREFIX))}")
    mask = batch[K.has_property_key(name)]
    diff = (pred[name] - batch[label_key])[mask]
    scaled = diff / scale
    count = norm_structures if norm_structures is not None else float(mask.sum())
    if reduction == "sum":
        count = 1.0
    if kind == "mse":
        loss = (scaled * scaled).sum() / max(count, 1.0)
    elif kind == "smooth_l1":
        loss = torch.nn.functional.smooth_l1_loss(scaled, torch.zeros_like(scaled), beta=beta, reduction="sum") / max(count, 1.0)
    else:
        raise ValueError(f"unknown property loss {kind!r}; use 'mse' or 'smooth_l1'")
    # the mae is divided by norm_structures (not the local count) so that under DDP the ranks' shares sum to the
    # global batch's mae; on one process both counts are the batch's labelled structures
    mae_count = norm_structures if norm_structures is not None else float(mask.sum())
    return loss, {"loss": float(loss.detach()), "mae": float(diff.detach().abs().sum()) / max(mae_count, 1.0)}
