"""Relax a molecule with MFTCalculator, check that it is a minimum (no imaginary frequency), and predict its gap.

Usage: python examples/molecule_vibrations.py [MODEL] (default: the shipped gap model). One model file gives the
forces (for BFGS and the Hessian) and the property; ASE's VibrationsData then gives frequencies, zero-point energy
and, through ase.thermochemistry, the harmonic free energy.
"""
import sys

import torch
from ase.build import molecule
from ase.optimize import BFGS
from ase.thermochemistry import HarmonicThermo

from mftcalc import MFTCalculator, Structure
from mftcalc.geometry.units import INVCM
from mftcalc.workflows.screening import default_model_path
from mftcalc.workflows.vibrations import normal_modes

model = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
calc = MFTCalculator(model, dtype=torch.float64)       # float64: the cleanest force differences for the Hessian

atoms = molecule("CH3CH2OH")
atoms.rattle(0.05, seed=0)                             # start away from the minimum
atoms.calc = calc
BFGS(atoms, logfile=None).run(fmax=1e-3, steps=500)
print(f"relaxed: energy {atoms.get_potential_energy():.4f} eV, fmax "
      f"{(atoms.get_forces() ** 2).sum(1).max() ** 0.5:.1e} eV/Å")

vib = calc.get_vibrations(atoms)                       # ase.vibrations.VibrationsData (all 6N displacements batched)
modes = normal_modes(Structure.from_ase(atoms), vib.get_hessian_2d())   # rigid-body modes projected out
print(f"{len(modes.frequencies)} vibrations, {modes.frequencies[0]:.1f} to {modes.frequencies[-1]:.1f} cm⁻¹; "
      f"imaginary: {modes.n_imaginary()}; zero-point energy {modes.zero_point_energy:.3f} eV")
energies = modes.frequencies[modes.frequencies > 0] * INVCM                  # cm⁻¹ -> eV
thermo = HarmonicThermo(vib_energies=energies, potentialenergy=atoms.get_potential_energy())
print(f"harmonic Helmholtz energy at 298.15 K: {thermo.get_helmholtz_energy(298.15, verbose=False):.4f} eV")

for name in calc.handle.property_names:
    print(f"{name}: {calc.get_property(name, atoms):.4f} {calc.handle.unit(name)}")
