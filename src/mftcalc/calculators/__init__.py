"""What users touch: the ASE calculator, batched prediction and batched relaxation.

``MFTCalculator`` (ASE), ``predict`` and ``relax`` (batched; each takes a list of ``mftcalc.data.Structure``,
``ase.Atoms`` or pymatgen ``Structure``/``Molecule``) and ``RelaxResult``.
"""
from mftcalc.calculators.ase_calculator import MFTCalculator
from mftcalc.calculators.batched import RelaxResult, predict, relax

__all__ = ["MFTCalculator", "RelaxResult", "predict", "relax"]
