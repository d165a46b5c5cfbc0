"""Derivative checks: forces = −dE/dx and stress = (1/V) dE/dε by central finite differences, the acoustic sum
rule (Σ F = 0, and Σ r × F = 0 for molecules), and smoothness of energy and forces where a neighbour crosses a
cutoff."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from mftcalc import keys as K
from mftcalc.data.structure import Structure
from mftcalc.testing.results import CheckResult, Tolerances, measured, scale_of, skipped
from mftcalc.testing.structures import is_molecule, pair_scan
from mftcalc.testing.subject import Subject

NO_FORCEFIELD = "the model has no force-field head (no energy, forces or stress)"


def check_forces_fd(subject: Subject, structures: Sequence[Structure], names: Sequence[str], tol: Tolerances,
                    n_coordinates: int = 12, seed: int = 0) -> List[CheckResult]:
    """Forces against −(E(x + h) − E(x − h)) / 2h (h = ``tol.fd_step`` Å) for up to ``n_coordinates`` seeded
    coordinates of each structure (all of them when it has fewer), each displaced structure evaluated alone.
    Tolerance: ``fd_atol + fd_rtol · max|F|`` of the structure (eV/Å)."""
    if not subject.has_forcefield:
        return [skipped("forces_fd", "*", K.FORCES, NO_FORCEFIELD)]
    out = []
    h = tol.fd_step
    rng = np.random.default_rng(seed)
    for s, name in zip(structures, names):
        forces = subject.one(s)[K.FORCES]
        coords = [(a, x) for a in range(s.n_atoms) for x in range(3)]
        if len(coords) > n_coordinates:
            coords = [coords[i] for i in sorted(rng.choice(len(coords), n_coordinates, replace=False))]
        fd, analytic = [], []
        for atom, axis in coords:
            energies = []
            for sign in (1.0, -1.0):
                positions = s.positions.copy()
                positions[atom, axis] += sign * h
                energies.append(subject.energy(s.with_labels(positions=positions)))
            fd.append(-(energies[0] - energies[1]) / (2 * h))
            analytic.append(forces[atom, axis])
        error = float(np.max(np.abs(np.array(fd) - np.array(analytic))))
        out.append(measured("forces_fd", name, K.FORCES, error, tol.fd_atol + tol.fd_rtol * scale_of(forces),
                            "eV/Å", f"{len(coords)} coordinates, h = {h:g} Å"))
    return out


def check_stress_fd(subject: Subject, structures: Sequence[Structure], names: Sequence[str],
                    tol: Tolerances) -> List[CheckResult]:
    """Stress of each structure that has one (crystals, slabs) against (1/V) (E(ε) − E(−ε)) / 2ε for the six components of a symmetric strain
    (positions and cell multiplied by 1 + ε, ε = ``tol.fd_strain``). Tolerance: ``fd_atol + fd_rtol · max|σ|``."""
    if not subject.has_forcefield:
        return [skipped("stress_fd", "*", K.STRESS, NO_FORCEFIELD)]
    crystals = [(s, n) for s, n in zip(structures, names) if s.stress_defined]      # crystals, slabs, wires
    if not crystals:
        return [skipped("stress_fd", "*", K.STRESS, "no structure with a stress (periodic in a direction, a cell "
                        "with a volume) was given")]
    out = []
    e = tol.fd_strain
    for s, name in crystals:
        stress = subject.one(s)[K.STRESS]
        volume = abs(np.linalg.det(s.cell))
        errors = []
        for a, b in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
            energies = []
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[a, b] += sign * e / 2
                strain[b, a] += sign * e / 2
                energies.append(subject.energy(s.with_labels(positions=s.positions @ strain, cell=s.cell @ strain)))
            errors.append(abs((energies[0] - energies[1]) / (2 * e) / volume - stress[a, b]))
        out.append(measured("stress_fd", name, K.STRESS, max(errors), tol.fd_atol + tol.fd_rtol * scale_of(stress),
                            "eV/Å³", f"6 strain components, ε = {e:g}"))
    return out


def check_acoustic_sum(subject: Subject, structures: Sequence[Structure], names: Sequence[str],
                       tol: Tolerances) -> List[CheckResult]:
    """Σ_i F_i = 0 for every structure (translation invariance), and Σ_i (r_i − r̄) × F_i = 0 for molecules
    (rotation invariance). Tolerance: ``exact_atol + exact_rtol · Σ_i |F_i|`` (torque: Σ_i |r_i − r̄| |F_i|)."""
    if not subject.has_forcefield:
        return [skipped("acoustic_sum", "*", K.FORCES, NO_FORCEFIELD)]
    out = []
    for s, name, row in zip(structures, names, subject.evaluate(structures)):
        forces = row[K.FORCES]
        size = np.linalg.norm(forces, axis=1)
        out.append(measured("acoustic_sum", name, "net force", float(np.abs(forces.sum(0)).max()),
                            tol.exact_atol + tol.exact_rtol * float(size.sum()), "eV/Å"))
        if is_molecule(s):
            arm = s.positions - s.positions.mean(0)
            torque = np.cross(arm, forces).sum(0)
            out.append(measured("acoustic_sum", name, "net torque", float(np.abs(torque).max()),
                                tol.exact_atol + tol.exact_rtol * float((np.linalg.norm(arm, axis=1) * size).sum()),
                                "eV"))
    return out


def check_cutoff_smoothness(subject: Subject, probe: Structure, tol: Tolerances,
                            points: int = 10) -> List[CheckResult]:
    """Energy, forces and every property head continuous where a neighbour crosses each cutoff (``e_rcut``,
    ``a_rcut``).

    The last atom of :func:`~mftcalc.testing.structures.pair_scan` (the elements of the first three atoms of
    ``probe``, repeated if it has fewer, and its ``info["dataset"]``) moves from
    ``r_cut − points·δ`` to ``r_cut + points·δ`` (δ = ``tol.cutoff_spacing`` Å), each geometry evaluated alone.
    Energy: the largest step beyond the trapezoid rule of its own forces, |E_{k+1} − E_k − ½ (g_k + g_{k+1}) δ|
    with g = dE/dd = −F_mover · u (a jump of the energy shows in full, a smooth energy gives ~E'''δ³). Forces and
    property heads: the largest deviation from a linear extrapolation, |F_{k+1} − 2 F_k + F_{k−1}| (a jump shows in
    full, a smooth curve gives ~F''δ²)."""
    numbers = [int(probe.numbers[k % probe.n_atoms]) for k in range(3)]
    out = []
    for which in ("e_rcut", "a_rcut"):
        r_cut = subject.cutoff(which)
        if r_cut is None:
            out.append(skipped("cutoff", which, K.ENERGY, f"the module exposes no {which}"))
            continue
        delta = tol.cutoff_spacing
        distances = r_cut + delta * np.arange(-points, points + 1)
        scan, u = pair_scan(numbers, distances, probe.info.get("dataset"))
        rows = [subject.one(s) for s in scan]
        note = f"{len(scan)} distances {delta:g} Å apart across {which} = {r_cut:g} Å"
        if subject.has_forcefield:
            energy = np.array([r[K.ENERGY] for r in rows])
            forces = np.stack([r[K.FORCES] for r in rows])
            slope = -forces[:, -1] @ u
            step = np.abs(np.diff(energy) - 0.5 * (slope[1:] + slope[:-1]) * delta)
            out.append(measured("cutoff", which, K.ENERGY, float(step.max()), tol.cutoff_energy, "eV", note))
            out.append(measured("cutoff", which, K.FORCES, float(_kink(forces)), tol.cutoff_forces, "eV/Å", note))
        for name in subject.properties:
            values = np.array([r[name] for r in rows])
            out.append(measured("cutoff", which, name, float(_kink(values)), tol.cutoff_property,
                                subject.handle.unit(name), note))
    return out


def _kink(values: np.ndarray) -> float:
    """Largest |v_{k+1} − 2 v_k + v_{k−1}| along the first axis; three equal non-finite values (an untrained
    applicability score: NaN, an unseen element: inf) count 0, any other non-finite value inf."""
    a, b, c = values[2:], values[1:-1], values[:-2]
    if a.size == 0:
        return 0.0
    finite = np.isfinite(a) & np.isfinite(b) & np.isfinite(c)
    equal = (np.isnan(a) & np.isnan(b) & np.isnan(c)) | ((a == b) & (b == c))
    with np.errstate(invalid="ignore"):
        second = np.where(finite, np.abs(a - 2 * b + c), np.where(equal, 0.0, np.inf))
    return float(second.max())
