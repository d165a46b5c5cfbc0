"""Physical constants and unit conversions: the one place in mftcalc that defines them.

All come from one CODATA version, 2018, as ASE derives it (``ase.units.create_units("2018")``), in ASE's unit system
(eV, Å, e, amu). Every other module imports them from here; ``tests/unit/geometry/test_units.py`` fails when a module
writes one of them as a float literal. ASE itself (its default ``ase.units``, used inside its molecular dynamics and
tblite's ASE calculator) is on CODATA 2014; the two differ by less than 1e-8 relative for every constant here except
k_B (3e-7).
"""
from __future__ import annotations

from ase.units import create_units

CODATA_VERSION = "2018"
_ASE = create_units(CODATA_VERSION)

#: Å per bohr (Bohr radius)
BOHR: float = _ASE["Bohr"]
#: eV per hartree
HARTREE: float = _ASE["Hartree"]
#: Boltzmann constant, eV/K
KB: float = _ASE["kB"]
#: e·Å per debye
DEBYE: float = _ASE["Debye"]
#: debye per e·Å (dipole moments from charges in e and positions in Å)
E_ANGSTROM_TO_DEBYE: float = 1.0 / DEBYE
#: debye per e·bohr (dipole moments in atomic units)
E_BOHR_TO_DEBYE: float = BOHR / DEBYE
#: eV per kJ/mol (per particle)
KJ_PER_MOL: float = _ASE["kJ"] / _ASE["mol"]
#: one femtosecond in ASE's time unit (Å √(amu/eV)), for ASE's molecular dynamics
FS: float = _ASE["fs"]
#: eV per cm⁻¹ (a wavenumber's photon energy)
INVCM: float = _ASE["invcm"]
#: eV per (eV/(Å²·amu))^½: ħω of a mass-weighted Hessian eigenvalue ω² given in eV/(Å²·amu), as ASE's VibrationsData
HBAR_OMEGA: float = _ASE["_hbar"] * 1e10 / (_ASE["_e"] * _ASE["_amu"]) ** 0.5
#: eV/Å³ per GPa (pressure and stress)
GPA: float = _ASE["GPa"]
