"""Quasi-Newton relaxation of one molecule in redundant internal coordinates (the ``"bfgs-internal"`` optimiser
of :func:`mftcalc.relaxation.api.relax`).

Each step: the Wilson B-matrix at the current geometry gives the internal gradient g_q = (Bᵀ)⁺ g_x (a Cholesky
factor of BᵀB + R, [3n, 3n], with R the projector on rigid motions, which are B's null space); the model Hessian
H_q (Lindh's force constants on the coordinates of :mod:`mftcalc.geometry.internal_coords`, diagonal at the
start) is updated by BFGS from the last step's changes of q and g_q and, seen in Cartesians as Bᵀ H_q B, gives a
Newton step inside a trust radius on |Δq|; the step is taken back to Cartesians by the usual iteration
x ← x + B⁺ (Δq − (q(x) − q₀)). The trust radius follows the ratio of the actual to the predicted energy change
(Fletcher); a step that raised the energy is rejected and retried, shorter, from the previous point. This is the
scheme of Peng, Ayala, Schlegel & Frisch (J. Comput. Chem. 17, 49 (1996)) without line search or GDIIS.

Molecules whose coordinate set misses a degree of freedom fall back to Cartesian BFGS from Lindh's Hessian
(:class:`mftcalc.relaxation.bfgs.CholeskyBFGS`, ASE's BFGS); so do molecules whose torsions become
(nearly) singular on the way (an outer bend turning linear).

Units: positions Å, forces eV/Å, energies eV; internal coordinates Å and radians, H_q eV/Å² · eV/rad².
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from ase import Atoms
from scipy.linalg.lapack import dpotrf, dpotrs

from mftcalc.geometry.internal_coords import (CoordinateBatch, InternalCoordinates, build_internal_coordinates,
                                                 internal_rank_deficit, rigid_bases)
from mftcalc.geometry.lindh import lindh_force_constants, lindh_rho
from mftcalc.relaxation.bfgs import BFGSParams, start_bfgs
from mftcalc.relaxation.flight import ModelResults


@dataclass
class InternalBFGSParams:
    """Trust radius (norm of the internal step, Å/rad mixed as in Berny): ``trust0`` at the start, kept within
    [``trust_min``, ``trust_max``]; ``maxstep`` Å caps the largest atomic displacement of a step; the torsion
    force constants are at least ``k_torsion_min`` eV/rad². The trust radius is left alone after steps predicted to
    lower the energy by less than ``energy_noise`` eV (float32 model energies of a few hundred eV are not resolved
    better than ~1e-4 eV). The step is taken back to Cartesians in at most ``back_iterations`` rounds, until the
    correction is below ``back_tolerance`` Å. A B-matrix entry above ``max_b`` (1/Å: a torsion over a bend
    within ~3° of linear, whose B-row grows as 1/sin θ) sends the molecule to Cartesian BFGS for the rest of its relaxation; molecules on Cartesian BFGS start
    from Lindh's Hessian + ``lindh_shift`` · I."""

    trust0: float = 0.3
    trust_min: float = 0.01
    trust_max: float = 1.0
    maxstep: float = 0.3
    k_torsion_min: float = 0.05
    rho_max: float = 1.0          # optimiser safeguard, not a Lindh term: compressed bonds get no stiffer than at r_ref
    lindh_shift: float = 10.0
    energy_noise: float = 5e-4
    back_iterations: int = 6
    max_b: float = 20.0
    back_tolerance: float = 1e-5


def _internal_hessian(coords: InternalCoordinates, positions: np.ndarray, numbers: np.ndarray,
                      params: InternalBFGSParams) -> np.ndarray:
    """Diagonal [n_coords, n_coords] model Hessian: Lindh's force constants
    (:func:`mftcalc.geometry.lindh.lindh_force_constants`) on each bond (eV/Å²), bend and torsion (eV/rad², torsions
    at least ``params.k_torsion_min``; ρ capped at ``params.rho_max`` so that a compressed bond of a distorted start
    does not get a force constant above its equilibrium one); a linear bend, a displacement u of its apex, as its bend through
    dθ/du = 1/r_aj + 1/r_jc (eV/Å²)."""
    x = np.asarray(positions, dtype=np.float64)
    rho = np.minimum(lindh_rho(numbers, x), params.rho_max)
    k = [lindh_force_constants(rho, coords.bonds), lindh_force_constants(rho, coords.bends),
         np.maximum(lindh_force_constants(rho, coords.torsions), params.k_torsion_min)]
    if len(coords.linear):
        a, j, c = coords.linear.T
        arm = 1.0 / np.linalg.norm(x[a] - x[j], axis=1) + 1.0 / np.linalg.norm(x[j] - x[c], axis=1)   # 1/Å
        k.append(np.repeat(lindh_force_constants(rho, coords.linear) * arm ** 2, 2))
    return np.diag(np.concatenate(k))


class InternalBFGSState:
    """Optimiser state of one molecule. :meth:`step` maps (positions, forces, energy) to the next positions;
    :meth:`step_many` steps many molecules together (their coordinates evaluated in one pass)."""

    def __init__(self, params: InternalBFGSParams, numbers: np.ndarray) -> None:
        self.params = params
        self.numbers = np.asarray(numbers)
        self.coords: Optional[InternalCoordinates] = None
        self.use_cartesian = False               # internals incomplete or singular: Cartesian BFGS from here on
        self.fallback = None                     # that Cartesian BFGS (an ASE optimiser on its own Atoms)
        self.hessian: Optional[np.ndarray] = None
        self.trust = params.trust0
        self.prev: Optional[tuple] = None            # the point the last step started from (see _plan)
        self.max_dx = params.maxstep                  # Å, largest atomic displacement of the next step
        self.last_dx = 0.0                            # Å, largest atomic displacement of the last step
        self.predicted: float = 0.0
        self.last_norm: float = 0.0

    def _use_cartesian(self, positions: np.ndarray, forces: np.ndarray, energy: float) -> np.ndarray:
        self.use_cartesian = True
        if self.fallback is None:
            atoms = Atoms(numbers=self.numbers, positions=positions)
            atoms.calc = ModelResults()
            self.fallback = start_bfgs(atoms, BFGSParams(initial_hessian="lindh", lindh_shift=self.params.lindh_shift),
                                       self.numbers)
        atoms = self.fallback.atoms
        atoms.positions = positions
        atoms.calc.set(energy, np.asarray(forces, dtype=np.float64))
        self.fallback.step()
        return atoms.positions.copy()

    def _start(self, x: np.ndarray) -> None:
        """Build the coordinate set and the model Hessian at the first geometry (or choose the fallback)."""
        if len(x) < 3:
            self.use_cartesian = True
            return
        self.coords = build_internal_coordinates(x, self.numbers)
        if internal_rank_deficit(self.coords, x) > 0:
            self.use_cartesian = True
            return
        self.hessian = _internal_hessian(self.coords, x, self.numbers, self.params)

    def step(self, positions: np.ndarray, forces: np.ndarray, energy: float) -> np.ndarray:
        """New [n, 3] positions (Å) from the current ones, their forces (eV/Å) and energy (eV)."""
        return self.step_many([self], [positions], [forces], [energy])[0]

    @staticmethod
    def step_many(states: Sequence["InternalBFGSState"], positions: Sequence[np.ndarray],
                  forces: Sequence[np.ndarray], energies: Sequence[float]) -> List[np.ndarray]:
        """One step of each molecule: ``positions`` / ``forces`` [n_k, 3], ``energies`` eV; new positions [n_k, 3]."""
        out: List[Optional[np.ndarray]] = [None] * len(states)
        inside: List[int] = []
        for k, st in enumerate(states):
            x = np.asarray(positions[k], dtype=np.float64)
            if st.coords is None and not st.use_cartesian:
                st._start(x)
            if st.use_cartesian:
                out[k] = st._use_cartesian(x, forces[k], float(energies[k]))
            else:
                inside.append(k)
        if not inside:
            return out
        batch = CoordinateBatch([states[k].coords for k in inside])
        xs = [np.asarray(positions[k], dtype=np.float64) for k in inside]
        evaluated = batch.evaluate(xs)
        rigids = rigid_bases(xs)
        plans = []                 # (slot, k, start positions, q0, dq, first-order positions, B, metric factor)
        for slot, k in enumerate(inside):
            plan = states[k]._plan(xs[slot], forces[k], float(energies[k]), *evaluated[slot], rigids[slot])
            if plan is None:
                out[k] = states[k]._use_cartesian(xs[slot], forces[k], float(energies[k]))
            else:
                plans.append((slot, k) + plan)
        # back-transformation: all molecules iterate together, their coordinates evaluated in one pass per round
        current = [p[5] for p in plans]
        best = list(current)
        best_err = [np.inf] * len(plans)
        active = list(range(len(plans)))
        for _ in range(states[0].params.back_iterations if states else 0):
            if not active:
                break
            trial = [xs[slot] for slot in range(len(inside))]
            for a in range(len(plans)):
                trial[plans[a][0]] = plans[a][2]                  # start points (a rejected step restarts)
            for a in active:
                trial[plans[a][0]] = current[a]
            values = batch.evaluate(trial, with_b=False)
            still = []
            for a in active:
                slot, k, _, q0, dq, _, b, metric = plans[a]
                coords = states[k].coords
                resid = dq - coords.difference(values[slot][0], q0)
                correction = dpotrs(metric, b.T @ resid)[0]
                err = float(np.abs(correction).max())
                if err >= best_err[a]:
                    continue
                best[a], best_err[a] = current[a], err
                if err < states[k].params.back_tolerance:
                    continue
                current[a] = current[a] + correction.reshape(-1, 3)
                still.append(a)
            active = still
        for a, (slot, k, x, _, _, first, *_rest) in enumerate(plans):
            dx = best[a] - x
            # the iteration can land on a far solution (a bend through 180°, a torsion by 2π): keep the
            # first-order step when the curvilinear one moves any atom much more than it does
            linear = np.sqrt(((first - x) ** 2).sum(1)).max()
            if np.sqrt((dx * dx).sum(1)).max() > 2.0 * linear + 0.01:
                dx = first - x
                best[a] = first
            longest = float(np.sqrt((dx * dx).sum(1)).max())
            cap = states[k].max_dx
            out[k] = x + dx * (cap / longest) if longest > cap else best[a]
            states[k].last_dx = min(longest, cap)
        return out

    def _plan(self, x: np.ndarray, forces: np.ndarray, energy: float, q: np.ndarray, b: np.ndarray,
              rigid: np.ndarray) -> Optional[tuple]:
        """Hessian and trust updates, then the internal step of this molecule: (start positions, q, Δq,
        first-order positions, B, Cholesky factor of BᵀB + rigid) for the back-transformation, or ``None`` when B
        has become singular. A step that raised the energy is rejected: its gradient still updates the Hessian,
        and the next step starts again from the previous point, inside a smaller trust radius."""
        coords = self.coords
        if len(coords.linear):
            b = b - (b @ rigid) @ rigid.T             # linear bends are not rotation invariant: keep rigid motions out
        g_x = -np.asarray(forces, dtype=np.float64).ravel()
        g_x = g_x - rigid @ (rigid.T @ g_x)
        rr = rigid @ rigid.T
        metric, info = dpotrf(b.T @ b + rr)            # positive definite iff B spans all internal motions
        if info != 0 or np.abs(b).max() > self.params.max_b:
            return None                                   # singular, or a torsion's outer bend turned linear
        g_q = b @ dpotrs(metric, g_x)[0]              # (Bᵀ)⁺ g_x
        here = (x, q, b, rr, g_x, g_q, metric, energy)
        base = here
        prev = self.prev
        if prev is not None:
            dq = coords.difference(q, prev[1])
            dg = g_q - prev[5]
            a = float(dq @ dg)
            if a > 1e-12:
                hdq = self.hessian @ dq
                bb = float(dq @ hdq)
                if bb > 1e-12:
                    self.hessian += np.outer(dg, dg) / a - np.outer(hdq, hdq) / bb
            rise = energy - prev[7]
            if self.predicted < -self.params.energy_noise:   # float32 energies: smaller changes are noise
                ratio = rise / self.predicted
                if ratio < 0.25:
                    self.trust = max(min(self.trust, self.last_norm) * 0.25, self.params.trust_min)
                elif ratio > 0.75 and self.last_norm > 0.9 * self.trust:
                    self.trust = min(self.trust * 2.0, self.params.trust_max)
            elif rise <= self.params.energy_noise and self.last_norm > 0.9 * self.trust:
                self.trust = min(self.trust * 2.0, self.params.trust_max)   # too small a step to judge: grow
            if rise > self.params.energy_noise:
                base = prev                               # uphill: step again from the previous point,
                self.trust = max(min(self.trust, 0.25 * self.last_norm), self.params.trust_min)   # shorter
                self.max_dx = 0.25 * self.last_dx        # (and shorter in Cartesians too)
            else:
                self.max_dx = min(2.0 * self.max_dx, self.params.maxstep)
        x, q, b, rr, g_x, g_q, metric, energy = base
        self.prev = base
        h_x = b.T @ self.hessian @ b                                  # the internal Hessian seen in Cartesians
        n_rigid = int(round(float(np.trace(rr))))
        scale = float(np.trace(h_x)) / max(h_x.shape[0] - n_rigid, 1)
        factor, info = dpotrf(h_x + scale * rr)
        if info == 0:
            step = -dpotrs(factor, g_x)[0]
        else:
            w, vec = np.linalg.eigh(h_x + scale * rr)
            step = -vec @ ((vec.T @ g_x) / np.maximum(np.abs(w), 1e-3 * scale))
        dq = b @ step
        norm = float(np.sqrt(dq @ dq))
        if norm > self.trust:
            step *= self.trust / norm
            dq *= self.trust / norm
            norm = self.trust
        self.predicted = float(g_x @ step + 0.5 * step @ h_x @ step)
        self.last_norm = norm
        return x, q, dq, x + step.reshape(-1, 3), b, metric
