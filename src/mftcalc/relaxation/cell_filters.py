"""The cell filters of batched relaxation (``cell_filter=``): ASE's ``UnitCellFilter`` and ``FrechetCellFilter``
around each structure's atoms, fed the batched model's forces and stress.

Both are ASE's classes (generalised coordinates: positions [n, 3] Å stacked on cell_factor × the deformation
gradient F [3, 3], or exp_cell_factor × log(cell_factor · F); cell_factor = exp_cell_factor = number of atoms;
default options), with three changes, measured in ``benchmarks/relax_step_cost.py`` (CPU time per FIRE step of 8 Si cells of 16
atoms, whose model call takes ~35 ms: ``FrechetCellFilter`` as is 32 ms, changed 4.5 ms; ``UnitCellFilter`` 2.3
ms as is, 2.0 ms changed, 1.1 ms for the numpy filter it replaces):

- their generalised forces are computed once per model evaluation (:class:`mftcalc.relaxation.flight.ModelResults`
  caches them): the engine reads them for fmax and ASE's optimiser reads them again in its step;
- ``FrechetCellFilter``'s cell forces, ⟨L(log F, E_μν), σ⟩ for the 9 unit directions E_μν with L the Fréchet
  derivative of the matrix exponential and σ = virial·F⁻ᵀ, take one Fréchet derivative instead of nine: since
  ⟨L(X, E), G⟩ = ⟨E, L(Xᵀ, G)⟩, the 3×3 matrix of them is L((log F)ᵀ, σ) (9 × 0.2 ms -> 0.2 ms);
- its matrix logarithms (of F in the forces, of n·F in the coordinates) come from the eigendecomposition of the
  3×3 matrix (:func:`_logm`, ~0.2 ms) instead of ``scipy.linalg.logm`` (~3 ms each, three per step in ASE).

An external hydrostatic pressure p (eV/Å³, ASE's ``scalar_pressure``; ``relax(pressure=...)``) enters as ASE's
filters take it: the virial becomes −V (σ + p I), so a relaxed cell has σ = −p I (ASE sign), and the filter's
energy is the enthalpy E + pV.

Forces eV/Å; generalised cell forces eV (virial / cell factor).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, Optional

import numpy as np
from ase.filters import FrechetCellFilter, UnitCellFilter


def _logm(matrix: np.ndarray) -> np.ndarray:
    """Principal logarithm of a real 3×3 matrix: V diag(log λ) V⁻¹ from its eigendecomposition when that is well
    conditioned and no eigenvalue lies on the closed negative real axis (a deformation gradient, possibly with a
    rotation); otherwise (near-defective, e.g. a pure simple shear) ``scipy.linalg.logm``."""
    w, v = np.linalg.eig(matrix)
    if np.all((w.real > 0) | (np.abs(w.imag) > 1e-12)) and np.linalg.cond(v) < 1e4:
        return np.real((v * np.log(w.astype(complex))) @ np.linalg.inv(v))
    from scipy.linalg import logm
    return np.real(logm(matrix))


class _ForcesOncePerResult:
    """Mixin: the filter's generalised forces [n + 3, 3] computed once per set of model results."""

    def _filter_forces(self) -> np.ndarray:
        raise NotImplementedError

    def get_forces(self, **kwargs: Any) -> np.ndarray:
        results = self.atoms.calc
        if results.filtered is None:
            results.filtered = self._filter_forces()
        return results.filtered


class UnitCell(_ForcesOncePerResult, UnitCellFilter):
    """ASE's ``UnitCellFilter`` (default options) with its forces computed once per model evaluation."""

    def _filter_forces(self) -> np.ndarray:
        return UnitCellFilter.get_forces(self)


class Frechet(_ForcesOncePerResult, FrechetCellFilter):
    """ASE's ``FrechetCellFilter`` (default options) with its cell forces from one Fréchet derivative, its matrix
    logarithms by :func:`_logm` (module docstring) and its forces computed once per model evaluation."""

    def get_positions(self) -> np.ndarray:
        """[n + 3, 3]: positions in the undeformed cell (Å), then exp_cell_factor · log(cell_factor · F)."""
        general = UnitCellFilter.get_positions(self)
        general[len(self.atoms):] = _logm(general[len(self.atoms):]) * self.exp_cell_factor
        return general

    def _filter_forces(self) -> np.ndarray:
        from scipy.linalg import expm_frechet
        atoms = self.atoms
        grad = self.deform_grad()                                       # F [3, 3]
        stress = atoms.get_stress(voigt=False) + self.scalar_pressure * np.eye(3)    # eV/Å³, as ASE's filters
        virial = -atoms.cell.volume * stress                            # eV
        cell_grad = virial @ np.linalg.inv(grad.T)                      # σ = virial · F⁻ᵀ
        log_force = expm_frechet(_logm(grad).T, cell_grad, compute_expm=False)
        return np.concatenate([atoms.get_forces() @ grad, log_force / self.exp_cell_factor])


#: ``cell_filter=`` name -> filter class (constructed around an ``ase.Atoms`` carrying ``ModelResults``)
CELL_FILTERS: Dict[str, type] = {"unitcell": UnitCell, "frechet": Frechet}


def filter_factory(name: Optional[str], pressure: float = 0.0) -> Optional[Callable[[Any], Any]]:
    """``atoms -> filter`` for ``cell_filter=`` name (None: fixed cell, no factory) under hydrostatic ``pressure``
    (eV/Å³, ASE's ``scalar_pressure``)."""
    if name is None:
        return None
    return partial(CELL_FILTERS[name], scalar_pressure=float(pressure))
