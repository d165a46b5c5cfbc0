"""Results of the physics checks: one named, measured result per quantity, the report of a run, and the error
measures every check shares (worst absolute difference against a tolerance scaled by the reference)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import numpy as np


class ModelCheckFailed(AssertionError):
    """A model failed one or more physics checks (the message lists each with its error and tolerance)."""


@dataclass(frozen=True)
class Tolerances:
    """Tolerances of the checks, for float64 evaluation. A result passes when ``error <= atol + rtol * scale``,
    ``scale`` being the largest magnitude of the reference values of that quantity (eV, eV/Å, eV/Å³ or the head's
    unit).

    ``exact_*``: results that must agree to rounding (invariances, supercell, additivity, batch, export).
    ``fd_*``: finite differences (central, step ``fd_step`` Å for positions, ``fd_strain`` for the strain);
    the truncation error is ~step² times the third derivative, the rounding error ~1e-16·|E|/step.
    ``cutoff_energy`` (eV), ``cutoff_forces`` (eV/Å) and ``cutoff_property`` (the head's unit): the largest step
    a scan of one pair distance across a cutoff may show in the energy (beyond the trapezoid rule of its forces),
    in the forces and in each property head (beyond a linear extrapolation), at a scan spacing of
    ``cutoff_spacing`` Å.
    """

    exact_rtol: float = 1e-8
    exact_atol: float = 1e-9
    fd_rtol: float = 1e-5
    fd_atol: float = 1e-7
    fd_step: float = 1e-4
    fd_strain: float = 1e-5
    cutoff_energy: float = 1e-7
    cutoff_forces: float = 1e-6
    cutoff_property: float = 1e-7
    cutoff_spacing: float = 1e-5


@dataclass(frozen=True)
class CheckResult:
    """One measured check of one quantity on one structure.

    ``name`` = ``check/structure/quantity`` (e.g. ``rotation/crystal/stress``); ``error`` is the worst deviation
    measured, ``tolerance`` the bound it must stay under, both in ``unit``. ``status``: ``pass``, ``fail`` or
    ``skip`` (``note`` says why a check was skipped or what it compared).
    """

    check: str
    structure: str
    quantity: str
    error: float
    tolerance: float
    unit: str = ""
    status: str = "pass"
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.check}/{self.structure}/{self.quantity}"

    @property
    def passed(self) -> bool:
        return self.status != "fail"

    def line(self) -> str:
        if self.status == "skip":
            return f"skip  {self.name}: {self.note}"
        return (f"{self.status:<5} {self.name}: error {self.error:.3e} {self.unit} (tolerance {self.tolerance:.3e})"
                + (f" [{self.note}]" if self.note else ""))


def measured(check: str, structure: str, quantity: str, error: float, tolerance: float, unit: str = "",
             note: str = "") -> CheckResult:
    """A result that passes when ``error <= tolerance`` (a NaN error fails)."""
    ok = bool(np.isfinite(error)) and error <= tolerance
    return CheckResult(check, structure, quantity, float(error), float(tolerance), unit, "pass" if ok else "fail",
                       note)


def skipped(check: str, structure: str, quantity: str, reason: str) -> CheckResult:
    """A check that does not apply (no force-field head, no crystal given, ...), with the reason."""
    return CheckResult(check, structure, quantity, float("nan"), float("nan"), "", "skip", reason)


def max_deviation(value: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference of two arrays of the same shape; entries that are non-finite in both and equal
    (an untrained applicability score: NaN, an unseen element: inf) count as equal, any other non-finite entry
    makes the deviation inf."""
    a = np.asarray(value, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    same_special = (~np.isfinite(a) & ~np.isfinite(b)) & ((np.isnan(a) & np.isnan(b)) | (a == b))
    with np.errstate(invalid="ignore"):
        diff = np.where(same_special, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(diff.max())


def scale_of(reference: np.ndarray) -> float:
    """Largest finite magnitude of ``reference`` (0 when it has none)."""
    r = np.abs(np.asarray(reference, dtype=np.float64))
    r = r[np.isfinite(r)]
    return float(r.max()) if r.size else 0.0


def compare(check: str, structure: str, quantity: str, value: np.ndarray, reference: np.ndarray, rtol: float,
            atol: float, unit: str = "", note: str = "") -> CheckResult:
    """:func:`measured` of ``max_deviation(value, reference)`` against ``atol + rtol * scale_of(reference)``."""
    return measured(check, structure, quantity, max_deviation(value, reference),
                    atol + rtol * scale_of(reference), unit, note)


@dataclass
class Report:
    """All results of one :func:`~mftcalc.testing.check_model` run, in the order they were measured."""

    model: str
    results: List[CheckResult] = field(default_factory=list)

    def extend(self, results: Iterable[CheckResult]) -> None:
        self.results.extend(results)

    @property
    def passed(self) -> bool:
        """True when no result failed (skipped ones do not fail)."""
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> List[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def skips(self) -> List[CheckResult]:
        return [r for r in self.results if r.status == "skip"]

    def select(self, check: Optional[str] = None, structure: Optional[str] = None,
               quantity: Optional[str] = None) -> List[CheckResult]:
        """Results of a check (and structure, quantity); e.g. ``report.select("rotation", quantity="stress")``."""
        return [r for r in self.results if (check is None or r.check == check)
                and (structure is None or r.structure == structure) and (quantity is None or r.quantity == quantity)]

    def failed_checks(self) -> List[str]:
        """Names of the checks with at least one failed result, in order."""
        return list(dict.fromkeys(r.check for r in self.failures))

    def __str__(self) -> str:
        head = f"physics checks of {self.model}: {sum(r.status == 'pass' for r in self.results)} passed, " \
               f"{len(self.failures)} failed, {len(self.skips)} skipped"
        return "\n".join([head] + ["  " + r.line() for r in self.results])

    def raise_for_failures(self) -> "Report":
        """Raise :class:`ModelCheckFailed` listing every failed result; return the report when none failed."""
        if self.failures:
            lines = "\n".join("  " + r.line() for r in self.failures)
            raise ModelCheckFailed(f"{self.model} fails {len(self.failures)} physics check result(s) of "
                                   f"{self.failed_checks()}:\n{lines}")
        return self
