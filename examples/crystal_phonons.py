"""Relax a crystal with MFTCalculator, compute its phonons with phonopy, and predict its properties.

Usage: python examples/crystal_phonons.py [MODEL] (default: the shipped model). Writes si_phonons.png (bands along
ASE's standard path of the fcc lattice, so seekpath is not needed, and the DOS on a Γ-centred q-mesh).
"""
import sys

from ase.build import bulk
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from mftcalc.calculators import MFTCalculator
from mftcalc.data import Structure
from mftcalc.data.io import from_pymatgen, to_pymatgen
from mftcalc.analysis.plots import plot_phonons
from mftcalc.workflows.phonons import phonons, zero_point_energy
from mftcalc.workflows.screening import default_model_path

model = sys.argv[1] if len(sys.argv) > 1 else default_model_path()
calc = MFTCalculator(model)      # force-field dataset: inferred per structure (bulk Si -> mlearn_si), not guessed

atoms = bulk("Si", "diamond", a=5.55)                  # start from a strained cell
atoms.calc = calc
BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.01, steps=200)
print(f"relaxed lattice constant: {atoms.cell.cellpar()[0] * 2 ** 0.5:.3f} Å, "
      f"energy {atoms.get_potential_energy() / len(atoms):.3f} eV/atom")

pmg = to_pymatgen(Structure.from_ase(atoms))           # pymatgen out ...
print(f"pymatgen: {pmg.composition.reduced_formula}, space group {pmg.get_space_group_info()[0]}")
atoms = from_pymatgen(pmg).to_ase()                     # ... and back in
atoms.calc = calc
ph = phonons(atoms, calc, supercell=(3, 3, 3), mesh=(12, 12, 12))   # Γ-centred q-mesh: DOS and zero-point energy
print(f"zero-point energy: {zero_point_energy(ph) * 1000:.1f} meV per cell")
plot_phonons(ph, "si_phonons.png")                     # band path: ASE's Cell.bandpath (GXWKGLUWLK,UX)
print("wrote si_phonons.png")

for name in calc.handle.property_names:
    print(f"{name}: {atoms.calc.get_property(name, atoms):.4f} {calc.handle.unit(name)}")
