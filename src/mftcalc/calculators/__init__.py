"""What users touch: the ASE calculator, batched prediction and batched relaxation."""
from mftcalc.calculators.ase_calculator import MFTCalculator

__all__ = ["MFTCalculator"]
