"""GFN2-xTB single points through the tblite Python API, in the package's units (eV, eV/Å, Debye, e).

A failed or non-finite calculation raises :class:`XTBError` (never a silent NaN label). Run batches inside
:func:`single_threaded`: parallelism comes from processes, and threaded tblite is slower on a busy machine and not
bitwise reproducible (MD trajectories then diverge between runs).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator

import numpy as np

from mftcalc.data.structure import Structure
from mftcalc.geometry.units import BOHR, E_BOHR_TO_DEBYE, HARTREE

METHOD = "GFN2-xTB"
DIPOLE_PROPERTY = "xtb_dipole"
CHARGES_INFO = "xtb_charges"


class XTBError(RuntimeError):
    """An xTB single point failed (SCF not converged, library error or non-finite result)."""


@dataclass(frozen=True)
class XTBResult:
    """Labels of one single point.

    Attributes:
        energy: total energy, eV.
        forces: [n, 3] eV/Å (minus the gradient).
        dipole: [3] dipole vector, Debye.
        charges: [n] Mulliken partial charges, e.
    """

    energy: float
    forces: np.ndarray
    dipole: np.ndarray
    charges: np.ndarray


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Limit OpenMP (tblite) and BLAS to one thread inside the block; the previous limits are restored after."""
    import tblite.interface  # noqa: F401  (loads the OpenMP runtime, so the limit reaches it)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _run_tblite(numbers: np.ndarray, positions_bohr: np.ndarray, method: str) -> Dict[str, np.ndarray]:
    """Raw tblite results in atomic units: energy (Hartree), gradient [n, 3] (Hartree/bohr), dipole [3] (e*bohr),
    charges [n] (e)."""
    from tblite.interface import Calculator

    calc = Calculator(method, numbers, positions_bohr)
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    return {key: np.asarray(res.get(key), dtype=np.float64) for key in ("energy", "gradient", "dipole", "charges")}


def singlepoint(numbers: np.ndarray, positions: np.ndarray, method: str = METHOD) -> XTBResult:
    """One neutral closed-shell xTB single point.

    Args:
        numbers: [n] atomic numbers.
        positions: [n, 3] Å.
        method: tblite method name.

    Raises:
        XTBError: when tblite raises or returns a non-finite value.
    """
    numbers = np.asarray(numbers, dtype=np.int32)
    positions = np.asarray(positions, dtype=np.float64)
    try:
        raw = _run_tblite(numbers, positions / BOHR, method)
    except Exception as exc:  # tblite raises its own error types (TBLiteRuntimeError, TBLiteValueError)
        raise XTBError(f"{method} single point failed: {type(exc).__name__}: {exc}") from exc
    bad = [key for key, value in raw.items() if not np.all(np.isfinite(value))]
    if bad:
        raise XTBError(f"{method} single point returned non-finite {', '.join(bad)}")
    return XTBResult(energy=float(raw["energy"]) * HARTREE, forces=-raw["gradient"] * (HARTREE / BOHR),
                     dipole=raw["dipole"] * E_BOHR_TO_DEBYE, charges=raw["charges"].copy())


def label(structure: Structure, method: str = METHOD) -> Structure:
    """Copy of a molecule with xTB energy (eV), forces (eV/Å), property ``xtb_dipole`` (|dipole|, Debye) and
    ``info["xtb_charges"]`` ([n] Mulliken charges, e); other properties are dropped (they belong to the source
    geometry). Raises :class:`XTBError` on failure."""
    if structure.is_periodic:
        raise ValueError("xtb.label handles molecules only; got a periodic structure")
    result = singlepoint(structure.numbers, structure.positions, method)
    info = dict(structure.info)
    info[CHARGES_INFO] = result.charges
    return structure.with_labels(energy=result.energy, forces=result.forces,
                                 properties={DIPOLE_PROPERTY: float(np.linalg.norm(result.dipole))},
                                 property_units={DIPOLE_PROPERTY: "Debye"}, info=info)
