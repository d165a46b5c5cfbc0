"""Unit constants: one definition (mftcalc.geometry.units, CODATA 2018); no other module of the package writes one
of them, a reciprocal or a common product of them, as a number literal."""
from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

import mftcalc
from mftcalc.geometry import units

PACKAGE = Path(mftcalc.__file__).parent
HOME = PACKAGE / "geometry" / "units.py"

# values (and the ways code writes them) that must come from units.py: x, 1/x and a few products
_HARTREE_KCAL_MOL = units.HARTREE / (4.184 * units.KJ_PER_MOL)
_BASE = {"bohr": units.BOHR, "hartree": units.HARTREE, "k_B": units.KB, "debye (e·Å)": units.DEBYE,
         "debye per e·bohr": units.E_BOHR_TO_DEBYE, "kJ/mol": units.KJ_PER_MOL,
         "kcal/mol": 4.184 * units.KJ_PER_MOL, "hartree in kcal/mol": _HARTREE_KCAL_MOL,
         "hartree/bohr": units.HARTREE / units.BOHR, "hartree/bohr²": units.HARTREE / units.BOHR ** 2,
         "faraday (C/mol)": 1000.0 / units.KJ_PER_MOL}
CONSTANTS = {**_BASE, **{f"1/({name})": 1.0 / value for name, value in _BASE.items()}}


def constant_literals(source: str) -> list:
    """(line, literal, constant name) for every number literal within 0.1 % of a constant's value, written with at
    least three significant digits (so 27.21, 0.529 and 96485.33212 count; 0.5 and 100 do not)."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.NUMBER:
            continue
        text = token.string.lower().replace("_", "")
        if text.endswith("j") or text[:2] in ("0x", "0o", "0b"):
            continue
        mantissa = text.split("e")[0].replace(".", "").lstrip("0")
        if len(mantissa.rstrip("0")) < 3:
            continue
        value = float(text)
        for name, constant in CONSTANTS.items():
            if abs(value - constant) <= 1e-3 * constant:
                found.append((token.start[0], token.string, name))
    return found


def test_the_scan_finds_constants_written_in_place():
    """The scan must catch the forms the old modules used (otherwise the package test below cannot fail)."""
    old = ("HARTREE_EV = 27.211386245988\nBOHR_ANG = 0.529177210903\nEBOHR_DEBYE = 2.541746473\n"
           "KB_EV = 8.617333262e-5\nx = y * 1000.0 / 96485.33212\nTO_DEBYE = 4.80320471\nk = 627.5\n")
    assert [name for _, _, name in constant_literals(old)] == [
        "hartree", "bohr", "debye per e·bohr", "k_B", "faraday (C/mol)", "1/(debye (e·Å))", "hartree in kcal/mol"]
    assert constant_literals("a = 0.5\nb = 100\nc = 1e-3\nd = 0.45, 0.15, 0.005\ne = 2.87\n") == []


def ase_units_imports(source: str) -> list:
    """Lines importing ASE's default units (CODATA 2014): a second source of the same constants."""
    return [i for i, line in enumerate(source.splitlines(), 1)
            if re.match(r"\s*(from\s+ase\.units\s+import|import\s+ase\.units|from\s+ase\s+import\s.*\bunits\b)",
                        line)]


def test_the_scan_finds_imports_of_ase_units():
    source = ("from ase.units import Bohr, Hartree\nimport ase.units\n    from ase import Atoms, units\n"
              "from ase import Atoms\n")
    assert ase_units_imports(source) == [1, 2, 3]


def test_no_module_but_units_defines_a_constant():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == HOME:
            continue
        source = path.read_text()
        for line, literal, name in constant_literals(source):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {literal} ({name})")
        offenders += [f"{path.relative_to(PACKAGE)}:{line}: imports ase.units" for line in ase_units_imports(source)]
    assert not offenders, ("unit constants written in place; import them from mftcalc.geometry.units:\n"
                           + "\n".join(offenders))


def test_units_are_codata_2018():
    assert units.CODATA_VERSION == "2018"
    assert units.BOHR == pytest.approx(0.529177210903, rel=1e-9)           # CODATA 2018 a0, Å
    assert units.HARTREE == pytest.approx(27.211386245988, rel=1e-9)       # CODATA 2018 E_h, eV
    assert units.KB == pytest.approx(8.617333262e-5, rel=1e-9)             # exact since 2019, eV/K
    assert units.E_ANGSTROM_TO_DEBYE == pytest.approx(4.80320471, rel=1e-8)
    assert units.E_BOHR_TO_DEBYE == pytest.approx(2.541746473, rel=1e-8)
    assert units.KJ_PER_MOL == pytest.approx(1.0 / 96.48533212, rel=1e-9)
