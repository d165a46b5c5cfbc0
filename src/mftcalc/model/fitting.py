"""Least-squares statistics of heads from training data: per-element biases/shifts and output scales."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from mftcalc.data.frame_params import constant_params, frame_param_matrix, frame_stats
from mftcalc.data.structure import Structure
from mftcalc.geometry.units import BOHR
from mftcalc.model.heads import N_TYPES


def element_counts(structures: Sequence[Structure]) -> np.ndarray:
    """[B, 119] count of each atomic number in each structure."""
    counts = np.zeros((len(structures), N_TYPES))
    for row, s in enumerate(structures):
        np.add.at(counts[row], s.numbers, 1.0)
    return counts


def lstsq_element_bias(counts: np.ndarray, targets: np.ndarray, rcond: float = 1e-8) -> np.ndarray:
    """Per-element values b [119] minimising ||counts · b − targets||² (elements absent from the data get 0).

    Args:
        counts: [B, 119] element counts. targets: [B] extensive targets (e.g. energy in eV, or intensive × N).
    """
    present = counts.sum(0) > 0
    bias = np.zeros(N_TYPES)
    if present.any():
        sol, *_ = np.linalg.lstsq(counts[:, present], targets, rcond=rcond)
        bias[present] = sol
    return bias


@torch.no_grad()
def fit_forcefield_shift(head: torch.nn.Module, structures: Sequence[Structure], dataset: Sequence[int]) -> None:
    """Set ``head.shift[d]`` per dataset d by least squares of total energies on element counts."""
    ds = np.asarray(dataset)
    for d in np.unique(ds):
        sel = [s for s, k in zip(structures, ds) if k == d and s.energy is not None]
        if not sel:
            continue
        bias = lstsq_element_bias(element_counts(sel), np.array([s.energy for s in sel]))
        head.shift[int(d)] = torch.as_tensor(bias, dtype=head.shift.dtype)


def lad_element_bias(counts: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-element values b [119] minimising the per-atom absolute error ``Σ_i |(targets_i − counts_i · b) / N_i|``
    (least absolute deviations: scikit-learn's median ``QuantileRegressor``; elements absent from the data get 0).

    Args:
        counts: [B, 119] element counts. targets: [B] extensive targets (eV).
    """
    from sklearn.linear_model import QuantileRegressor
    present = counts.sum(0) > 0
    bias = np.zeros(N_TYPES)
    if present.any():
        n_atoms = counts.sum(1, keepdims=True)
        fit = QuantileRegressor(quantile=0.5, alpha=0.0, fit_intercept=False, solver="highs")
        fit.fit(counts[:, present] / n_atoms, targets / n_atoms[:, 0])
        bias[present] = fit.coef_
    return bias


@torch.no_grad()
def refit_forcefield_shift(model: torch.nn.Module, structures: Sequence[Structure], dataset: int,
                           head: str = "forcefield", max_structures: int = 5000, seed: int = 0) -> dict:
    """Correct dataset ``dataset``'s per-element energy shift of a trained force-field head to the model's energy
    residuals (as deepmd-kit's ``change-bias``): ``shift[dataset] += b`` with ``b`` minimising the per-atom
    absolute residual ``|E_ref − E_model − counts · b| / N`` (:func:`lad_element_bias`), fitted on at most
    ``max_structures`` of ``structures`` (seeded draw). Forces and stress are unchanged; a constant energy offset
    per element goes. Least absolute deviations rather than deepmd-kit's least squares: pretraining sets have
    heavy-tailed residuals (FitSNAP W–Be: least squares raised its per-atom MAE from 131 to 398 meV/atom), and
    the per-atom MAE cannot rise on the fitted structures (``b = 0`` is a candidate).

    Returns ``n`` (structures fitted) and the mean and MAE of the per-atom residual before and after, in eV/atom.
    """
    from mftcalc.model.inference import predict_structures
    labelled = [s for s in structures if s.energy is not None]
    if not labelled:
        raise ValueError(f"dataset {dataset}: no structure with an energy to refit the shift on")
    if len(labelled) > max_structures:
        keep = np.sort(np.random.default_rng(seed).choice(len(labelled), max_structures, replace=False))
        labelled = [labelled[i] for i in keep]
    predicted = np.array([float(p["energy"]) for p in predict_structures(
        model, labelled, dataset, compute_forces=False, compute_stress=False)])
    residual = np.array([s.energy for s in labelled]) - predicted              # [B] eV
    counts = element_counts(labelled)                                          # [B, 119]
    correction = lad_element_bias(counts, residual)                            # [119] eV per atom of element Z
    shift = model.ff_heads[head].shift
    shift[dataset] += torch.as_tensor(correction, dtype=shift.dtype, device=shift.device)
    n_atoms = counts.sum(1)
    after = (residual - counts @ correction) / n_atoms
    return {"n": len(labelled), "mean_before": float(np.mean(residual / n_atoms)),
            "mae_before": float(np.mean(np.abs(residual / n_atoms))), "mae_after": float(np.mean(np.abs(after)))}


@torch.no_grad()
def fit_frame_standardisation(head: torch.nn.Module, structures: Sequence[Structure], name: str) -> None:
    """Set a scalar head's ``frame_mean``/``frame_std`` [F] from the frame parameters of its training structures;
    warn, naming them, about parameters that do not vary there (the head cannot learn their effect)."""
    matrix = frame_param_matrix(structures, head.frame_names)
    mean, std = frame_stats(matrix)
    head.frame_mean.copy_(torch.as_tensor(mean, dtype=head.frame_mean.dtype))
    head.frame_std.copy_(torch.as_tensor(std, dtype=head.frame_std.dtype))
    constant = constant_params(matrix, head.frame_names)
    if constant:
        import warnings
        warnings.warn(f"frame parameter(s) {', '.join(constant)} of property {name!r} take one value in all "
                      f"{len(structures)} training structures: the head cannot learn how {name!r} depends on "
                      "them; give training data that varies them", stacklevel=3)


def fit_property_head(head: torch.nn.Module, structures: Sequence[Structure], name: str, kind: str,
                      extensive: bool, element_bias: bool, min_scale: float = 1e-6) -> None:
    """Set a property head's per-element ``bias`` and output ``scale`` from labelled structures.

    Scalar heads: intensive targets are fitted as ``label × N_atoms`` (the head averages), extensive as is; the
    scale is the standard deviation of the per-atom residual. Dipole heads: only the scale (charges start small).
    ⟨R²⟩ heads: the scale maps Σ|r − c|²/a0² to the labels in the mean; no bias unless asked. Group heads
    (``structures`` are assemblies, :mod:`mftcalc.data.assembly`): shift and scale the labels' mean and spread.
    """
    labelled = [s for s in structures if name in s.properties]
    if not labelled:
        raise ValueError(f"no structure carries a label for property {name!r}")
    y = np.array([s.properties[name] for s in labelled])
    if kind == "group":                  # assemblies: the MLP starts near the labels' mean and spread
        if getattr(head, "n_frame", 0):
            fit_frame_standardisation(head, labelled, name)
        head.shift.fill_(float(y.mean()))
        head.scale.fill_(max(float(y.std()), min_scale))
        return
    n = np.array([s.n_atoms for s in labelled], dtype=float)
    counts = element_counts(labelled)
    if getattr(head, "n_frame", 0):
        fit_frame_standardisation(head, labelled, name)
    if kind == "scalar":
        target = y if extensive else y * n
        bias = lstsq_element_bias(counts, target) if element_bias else np.zeros(N_TYPES)
        if not element_bias:                                 # one global per-atom offset, same for every element
            bias[:] = target.sum() / n.sum()
        resid = (target - counts @ bias) / n                 # per-atom residual
        scale = max(float(np.std(resid)), min_scale)
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        head.scale.fill_(scale)
    elif kind == "dipole":
        head.scale.fill_(0.1)
    elif kind == "r2":
        spread = np.array([((s.positions - s.positions.mean(0)) ** 2).sum() / BOHR ** 2 for s in labelled])
        bias = np.zeros(N_TYPES)
        if element_bias:
            present = counts.sum(0) > 0
            design = np.concatenate([counts[:, present], spread[:, None]], 1)
            sol, *_ = np.linalg.lstsq(design, y, rcond=1e-8)
            bias[present] = sol[:-1]
            ratio = float(sol[-1])
        else:
            ratio = float(np.sum(spread * y) / max(np.sum(spread * spread), 1e-12))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
        head.scale.fill_(max(ratio, min_scale))
    else:
        raise ValueError(f"unknown property head kind {kind!r}")


def fit_heads(model: torch.nn.Module, structures: Sequence[Structure], dataset: Optional[Sequence[int]] = None) -> None:
    """Fit every head of an ``MFTModel`` whose labels occur in ``structures``."""
    cfg = model.config
    for name, head_cfg in cfg.heads.items():
        if head_cfg.kind == "forcefield":
            if any(s.energy is not None for s in structures):
                fit_forcefield_shift(model.ff_heads[name], structures,
                                     dataset if dataset is not None else [0] * len(structures))
        elif any(name in s.properties for s in structures):
            fit_property_head(model.head_module(name), structures, name, head_cfg.kind, head_cfg.extensive,
                              head_cfg.element_bias)
