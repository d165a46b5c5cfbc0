"""ASE's cell filters on batched tensors: the generalised cell coordinates, the deformation gradient they stand
for, and the generalised forces of ``UnitCellFilter`` and ``FrechetCellFilter`` (default options) for B
structures at once, on any device (the on-device optimisers, :mod:`mftcalc.relaxation.device_flight`).

Per structure, with F [3, 3] the deformation gradient from the start cell C₀ (cell = C₀ Fᵀ, positions = s Fᵀ for
the atom rows s of the generalised coordinates, Å) and n = cell_factor = exp_cell_factor = the number of atoms
(ASE's defaults):

- ``unitcell``: cell rows X = n F; cell forces W F⁻ᵀ / n (eV), W = -V σ the virial, σ the stress (eV/Å³, ASE
  sign, symmetrised as ASE's Voigt form does), V = |det cell| (Å³);
- ``frechet``: cell rows X = n log(n F), so log F = X / n - log(n) I and F = exp(X / n) / n; cell forces
  L((log F)ᵀ, W F⁻ᵀ) / n, L the Fréchet derivative of the matrix exponential (ASE sums ⟨L(log F, E_μν), W F⁻ᵀ⟩
  over the nine unit directions E_μν; since ⟨L(X, E), G⟩ = ⟨E, L(Xᵀ, G)⟩ the 3×3 matrix of them is one
  derivative, as in :mod:`mftcalc.relaxation.cell_filters`). L(A, E) is the upper right block of
  exp([[A, E], [0, A]]) (one batched 6×6 ``torch.linalg.matrix_exp``), so no matrix logarithm is needed: the
  coordinates carry log F.

Atom forces become f F (eV/Å) in both. All tensors float64.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

#: the cell filters implemented here (``cell_filter=`` names)
KINDS = ("unitcell", "frechet")


def _check(kind: Optional[str]) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown cell filter {kind!r} for the on-device optimisers; use one of {KINDS}")
    return kind


def start_rows(kind: str, n: torch.Tensor) -> torch.Tensor:
    """Cell rows [B, 3, 3] of the generalised coordinates at the start cell (F = I), ``n`` [B] atoms (float64)."""
    eye = torch.eye(3, dtype=n.dtype, device=n.device)
    scale = n if _check(kind) == "unitcell" else n * torch.log(n)
    return scale[:, None, None] * eye


def deformation(kind: str, rows: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The deformation gradient F [B, 3, 3] of cell rows [B, 3, 3] (``n`` [B] atoms)."""
    if _check(kind) == "unitcell":
        return rows / n[:, None, None]
    return torch.linalg.matrix_exp(rows / n[:, None, None]) / n[:, None, None]


def expm_frechet(a: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """The Fréchet derivative L(A, E) [B, 3, 3] of the matrix exponential at A [B, 3, 3] in direction E [B, 3, 3]:
    the upper right block of exp([[A, E], [0, A]])."""
    block = torch.zeros(a.shape[0], 6, 6, dtype=a.dtype, device=a.device)
    block[:, :3, :3] = a
    block[:, 3:, 3:] = a
    block[:, :3, 3:] = e
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


def generalised_forces(kind: str, forces: torch.Tensor, stress: torch.Tensor, cell: torch.Tensor,
                       grad: torch.Tensor, rows: torch.Tensor, n: torch.Tensor,
                       pressure: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The filter's forces: atom rows f F [B, m, 3] (eV/Å) from ``forces`` [B, m, 3] eV/Å, and cell rows [B, 3, 3]
    (eV) from ``stress`` [B, 3, 3] eV/Å³ (ASE sign) at ``cell`` [B, 3, 3] Å with deformation gradient ``grad``
    [B, 3, 3], cell coordinates ``rows`` [B, 3, 3] and ``n`` [B] atoms (module docstring); ``pressure`` [B]
    eV/Å³: the hydrostatic pressure of each structure (ASE's ``scalar_pressure``: σ + p I in the virial)."""
    sym = 0.5 * (stress + stress.transpose(1, 2))
    if pressure is not None:
        sym = sym + pressure[:, None, None] * torch.eye(3, dtype=sym.dtype, device=sym.device)
    virial = -torch.abs(torch.linalg.det(cell))[:, None, None] * sym
    cell_grad = virial @ torch.linalg.inv(grad.transpose(1, 2))                       # W F⁻ᵀ
    if _check(kind) == "frechet":
        eye = torch.eye(3, dtype=rows.dtype, device=rows.device)
        log_grad = rows / n[:, None, None] - torch.log(n)[:, None, None] * eye         # log F
        cell_grad = expm_frechet(log_grad.transpose(1, 2), cell_grad)
    return forces @ grad, cell_grad / n[:, None, None]

