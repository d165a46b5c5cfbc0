"""Cartesian BFGS of batched relaxation (``optimizer="bfgs"`` / ``"bfgs-lindh"``, and the fallback of
``"bfgs-internal"``): ASE's ``BFGS`` object with one method replaced, the solve of its step.

ASE's BFGS takes the step |H|⁻¹ f (|H|: H with its eigenvalues made positive) from an eigenvalue decomposition of
its [3n, 3n] Hessian every step. A positive-definite H (the usual case: an α·I or Lindh start stays so under
updates with positive curvature) is its own |H|, and a Cholesky solve gives the same step at a fraction of the
cost; otherwise the eigenvalue decomposition, as in ASE. For 64 QM9 molecules ASE's step costs 2-3x the Cholesky
one (``benchmarks/relax_step_cost.py``, CPU time per step: 14 ms against 7 ms from α·I, 21 ms against 7 ms from
Lindh's Hessian; 6-8 % of a one-thread CPU model call against 3 %, and more of a faster GPU call), so
:class:`CholeskyBFGS` overrides ``prepare_step`` and keeps the rest of ASE's BFGS: its Hessian update, step cap,
bookkeeping and cell-filter handling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np
from ase.optimize import BFGS as AseBFGS


@dataclass
class BFGSParams:
    """ASE BFGS defaults: ``maxstep`` Å (largest atomic step), ``alpha`` eV/Å² (initial Hessian α·I).

    ``initial_hessian="lindh"`` starts instead from Lindh's model Hessian of each molecule plus ``lindh_shift`` · I
    (eV/Å²; the shift stiffens the rigid-body modes and the terms the model leaves out), see
    :mod:`mftcalc.geometry.lindh`: about half the steps on QM9 molecules. Molecules only (no pbc).
    """

    maxstep: float = 0.2
    alpha: float = 70.0
    initial_hessian: str = "alpha"
    lindh_shift: float = 10.0

    def __post_init__(self) -> None:
        if self.initial_hessian not in ("alpha", "lindh"):
            raise ValueError(f"unknown initial_hessian {self.initial_hessian!r}; use 'alpha' or 'lindh'")

    def hessian0(self, positions: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Initial [3m, 3m] Hessian (eV/Å²) for one structure at ``positions`` [m, 3] Å (m: the optimiser's rows,
        atoms, or atoms + 3 with a cell filter; Lindh's start is for molecules, m = atoms)."""
        if self.initial_hessian == "lindh":
            from mftcalc.geometry.lindh import lindh_hessian
            return lindh_hessian(numbers=numbers, positions=positions) + self.lindh_shift * np.eye(positions.size)
        return np.eye(positions.size) * self.alpha


def abs_newton_step(hessian: np.ndarray, forces: np.ndarray) -> np.ndarray:
    """ASE BFGS's step |H|⁻¹ f for a [d, d] Hessian (eV/Å²) and [d] forces (eV/Å): a Cholesky solve when H is
    positive definite, else through its eigenvalue decomposition with |eigenvalues|, as ASE. Returns [d] Å."""
    from scipy.linalg import LinAlgError, cho_factor, cho_solve
    try:
        return cho_solve(cho_factor(hessian, check_finite=False), forces, check_finite=False)
    except LinAlgError:
        omega, vectors = np.linalg.eigh(hessian)
        return vectors @ (forces @ vectors / np.fabs(omega))


class CholeskyBFGS(AseBFGS):
    """ASE's ``BFGS`` whose step solve is :func:`abs_newton_step` (module docstring); same steps as ASE's."""

    def prepare_step(self, pos: np.ndarray, gradient: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        pos, gradient = pos.ravel(), gradient.ravel()
        self.update(pos, -gradient, self.pos0, self.forces0)          # ASE's Hessian update (first call: H0)
        self.pos0, self.forces0 = pos, -gradient.copy()
        dpos = abs_newton_step(self.H, -gradient)
        return dpos, self.optimizable.gradient_norm(dpos)


def start_bfgs(target: Any, params: BFGSParams, numbers: np.ndarray) -> CholeskyBFGS:
    """A :class:`CholeskyBFGS` on ``target`` (an ``ase.Atoms`` or cell filter carrying the model's results), with
    ``params``' step cap and start Hessian (``numbers`` [n]: for Lindh's)."""
    opt = CholeskyBFGS(target, logfile=None, maxstep=params.maxstep, alpha=params.alpha)
    if params.initial_hessian != "alpha":
        opt.H0 = params.hessian0(np.asarray(target.get_positions()), numbers)
    return opt
