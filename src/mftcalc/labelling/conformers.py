"""Off-equilibrium conformers of a molecule for force-field training: Cartesian rattles, model-Hessian normal-mode
distortions and short high-temperature GFN2-xTB molecular dynamics, seeded per (seed, molecule, kind).

Kinds (``info["kind"]``), each frame also carrying ``qm9_index``, ``conformer`` (0..K-1 within its molecule),
``amplitude`` (Å, 0 where unused), ``temperature`` (K, 0 where unused) and ``seed``:

* ``equilibrium``: the source geometry itself (at most one per molecule).
* ``rattle``: independent Gaussian displacements of every coordinate, standard deviation in :data:`RATTLE_SIGMAS`.
* ``normal_mode``: a Boltzmann sample of the harmonic Lindh model Hessian at a temperature in
  :data:`NORMAL_MODE_TEMPERATURES`: displacement ``sum_m c_m v_m`` over the 3n-6 internal modes with
  ``c_m ~ N(0, kT / max(k_m, MODE_STIFFNESS_FLOOR))`` (the floor bounds soft torsions and linear bends).
* ``md``: Langevin dynamics with GFN2-xTB (tblite) at a temperature in :data:`MD_TEMPERATURES`, started from the
  source geometry with Maxwell-Boltzmann velocities at twice that temperature (equipartition halves it; the
  potential energy per atom levels off within 10 steps), one snapshot every :data:`MD_INTERVAL` steps of 0.5 fs
  after :data:`MD_WARMUP_STEPS` steps (``info["md_step"]``, so the first at step 20).

Geometries with two atoms closer than :data:`MIN_DISTANCE` are redrawn (rattle, normal modes) or dropped (md);
what cannot be produced is returned as a failure record, never silently skipped.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from scipy.spatial.distance import pdist

from mftcalc.data.structure import Structure
from mftcalc.geometry.lindh import internal_modes
from mftcalc.geometry.units import FS, KB
from mftcalc.labelling.xtb import single_threaded

KINDS = ("equilibrium", "rattle", "normal_mode", "md")
RATTLE_SIGMAS = (0.02, 0.05, 0.1, 0.15)  # Å
NORMAL_MODE_TEMPERATURES = (300.0, 700.0, 1200.0, 2000.0)  # K
MD_TEMPERATURES = (1000.0, 1250.0, 1500.0)  # K
MIN_DISTANCE = 0.6  # Å
MODE_STIFFNESS_FLOOR = 2.0  # eV/Å^2
MD_TIMESTEP_FS, MD_FRICTION_PER_FS, MD_WARMUP_STEPS, MD_INTERVAL = 0.5, 0.01, 10, 10
MAX_TRIES = 20

Failure = Dict[str, object]


def allocate(n_conformers: int) -> Dict[str, int]:
    """Conformers per kind for ``n_conformers`` per molecule: round-robin over rattle, normal_mode, md,
    equilibrium, the latter at most once (e.g. 7 -> rattle 2, normal_mode 2, md 2, equilibrium 1)."""
    if n_conformers < 1:
        raise ValueError(f"conformers per molecule must be >= 1, got {n_conformers}")
    counts = dict.fromkeys(KINDS, 0)
    order = ("rattle", "normal_mode", "md", "equilibrium")
    step = 0
    while sum(counts.values()) < n_conformers:
        kind = order[step % len(order)]
        if kind != "equilibrium" or counts[kind] == 0:
            counts[kind] += 1
        step += 1
    return counts


def kind_rng(seed: int, qm9_index: int, kind: str) -> np.random.Generator:
    """Random generator of one (seed, molecule, kind): independent of every other molecule and kind."""
    return np.random.default_rng([int(seed), int(qm9_index), KINDS.index(kind)])


def min_distance(positions: np.ndarray) -> float:
    """Smallest interatomic distance, Å (inf for one atom)."""
    return float(pdist(positions).min()) if len(positions) > 1 else float("inf")


def _levels(levels: Sequence[float], n: int, rng: np.random.Generator) -> List[float]:
    """``n`` levels cycling through ``levels`` from a random start, so every level is used equally often."""
    start = int(rng.integers(len(levels)))
    return [float(levels[(start + i) % len(levels)]) for i in range(n)]


def _draw(positions: np.ndarray, displace, rng: np.random.Generator) -> np.ndarray:
    """``positions + displace(rng)``, redrawn until no two atoms are closer than MIN_DISTANCE."""
    for _ in range(MAX_TRIES):
        candidate = positions + displace(rng)
        if min_distance(candidate) >= MIN_DISTANCE:
            return candidate
    raise RuntimeError(f"no geometry without atoms closer than {MIN_DISTANCE} Å in {MAX_TRIES} draws")


def rattle(positions: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-displaced copy of ``positions`` ([n, 3] Å), standard deviation ``sigma`` (Å) per coordinate."""
    return _draw(positions, lambda r: r.normal(scale=sigma, size=positions.shape), rng)


def normal_mode_sample(positions: np.ndarray, stiffness: np.ndarray, modes: np.ndarray, temperature: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Boltzmann sample at ``temperature`` (K) of the harmonic potential with internal modes ``modes`` ([3n, m])
    and stiffnesses ``stiffness`` ([m] eV/Å^2, floored at MODE_STIFFNESS_FLOOR); returns [n, 3] Å."""
    scale = np.sqrt(KB * temperature / np.maximum(stiffness, MODE_STIFFNESS_FLOOR))
    return _draw(positions, lambda r: (modes @ (scale * r.standard_normal(scale.size))).reshape(-1, 3), rng)


def md_snapshots(numbers: np.ndarray, positions: np.ndarray, n: int, temperature: float,
                 rng: np.random.Generator) -> List[Union[Tuple[int, np.ndarray], str]]:
    """Single-threaded Langevin GFN2-xTB dynamics at ``temperature`` (K); returns ``n`` entries, each
    ``(step, positions [n, 3] Å)`` or an error message for a lost snapshot (too-close atoms drop one snapshot, an
    SCF failure ends the run)."""
    from ase import Atoms
    from ase.constraints import FixCom
    from ase.md import velocitydistribution as vd
    from ase.md.langevin import Langevin
    from tblite.ase import TBLite

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution  # ASE >= 3.29 / older
    thermalize(atoms, temperature_K=2.0 * temperature, rng=rng)
    vd.Stationary(atoms)
    with np.errstate(invalid="ignore", divide="ignore"):  # a linear molecule has a zero moment of inertia
        vd.ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, MD_TIMESTEP_FS * FS, temperature_K=temperature,
                   friction=MD_FRICTION_PER_FS / FS, fixcm=False, rng=rng)
    out: List[Union[Tuple[int, np.ndarray], str]] = []
    step = 0
    with single_threaded():  # reproducible trajectories
        for i in range(n):
            steps = MD_WARMUP_STEPS + MD_INTERVAL if i == 0 else MD_INTERVAL
            try:
                dyn.run(steps)
            except Exception as exc:  # an SCF failure inside the ASE calculator ends the trajectory
                out += [f"md from step {step}: {type(exc).__name__}: {exc}"] * (n - i)
                break
            step += steps
            snapshot = atoms.get_positions()
            too_close = min_distance(snapshot) < MIN_DISTANCE
            out.append(f"md step {step}: atoms closer than {MIN_DISTANCE} Å" if too_close else (step, snapshot))
    return out


def _draw_levels(kind: str, n: int, rng: np.random.Generator) -> List[Dict[str, float]]:
    """The ``n`` slot parameters of one kind: ``{}``, ``{"amplitude": Å}`` or ``{"temperature": K}`` (md: one
    temperature for the whole trajectory)."""
    if kind == "equilibrium":
        return [{}] * n
    if kind == "rattle":
        return [{"amplitude": s} for s in _levels(RATTLE_SIGMAS, n, rng)]
    if kind == "normal_mode":
        return [{"temperature": t} for t in _levels(NORMAL_MODE_TEMPERATURES, n, rng)]
    return [{"temperature": _levels(MD_TEMPERATURES, 1, rng)[0]}] * n


def generate_conformers(molecule: Structure, n_conformers: int, seed: int) -> Tuple[List[Structure], List[Failure]]:
    """Unlabelled conformers of one molecule (``info["qm9_index"]`` required), ``n_conformers`` slots split over
    the kinds by :func:`allocate`, each kind drawn from its own :func:`kind_rng`.

    Returns:
        ``(conformers, failures)``: the conformers in slot order, and one record ``{qm9_index, kind, conformer,
        stage: "generate", error}`` per slot that could not be produced.
    """
    if "qm9_index" not in molecule.info:
        raise ValueError("generate_conformers needs info['qm9_index'] on each molecule (it seeds the generator)")
    index = int(molecule.info["qm9_index"])
    x0, numbers = molecule.positions, molecule.numbers
    slots: List[Tuple[str, Dict[str, float]]] = []
    results: list = []
    for kind, n in allocate(n_conformers).items():
        if n:
            rng = kind_rng(seed, index, kind)
            levels = _draw_levels(kind, n, rng)
            slots += [(kind, level) for level in levels]
            results += _sample_kind(kind, numbers, x0, levels, rng)
    conformers, failures = [], []
    for i, ((kind, level), result) in enumerate(zip(slots, results)):
        if isinstance(result, str):
            failures.append({"qm9_index": index, "kind": kind, "conformer": i, "stage": "generate", "error": result})
            continue
        extra: Dict[str, object] = {}
        if kind == "md":
            extra["md_step"], result = result
        info = {"qm9_index": index, "kind": kind, "conformer": i, "amplitude": 0.0, "temperature": 0.0,
                "seed": int(seed), **level, **extra}
        conformers.append(Structure(positions=result, numbers=numbers, info=info))
    return conformers, failures


def _sample_kind(kind: str, numbers: np.ndarray, x0: np.ndarray, levels: List[Dict[str, float]],
                 rng: np.random.Generator) -> list:
    """Geometries (or error messages) for the slots of one kind."""
    def guarded(make):
        try:
            return make()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    if kind == "equilibrium":
        ok = min_distance(x0) >= MIN_DISTANCE
        return [x0.copy() if ok else f"source geometry has atoms closer than {MIN_DISTANCE} Å"]
    if kind == "rattle":
        return [guarded(lambda s=level["amplitude"]: rattle(x0, s, rng)) for level in levels]
    if kind == "normal_mode":
        modes = guarded(lambda: internal_modes(numbers, x0))
        if isinstance(modes, str):
            return [modes] * len(levels)
        return [guarded(lambda t=level["temperature"]: normal_mode_sample(x0, *modes, t, rng)) for level in levels]
    result = guarded(lambda: md_snapshots(numbers, x0, len(levels), levels[0]["temperature"], rng))
    return [result] * len(levels) if isinstance(result, str) else result
