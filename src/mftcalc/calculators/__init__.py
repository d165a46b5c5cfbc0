"""The ASE calculators (one model; a committee with its deviation) and what every model caller shares: the
loaded-model handle, the dataset rule, the structure checks, input conversion, batched prediction and thread
defaults.

Batched relaxation lives in ``mftcalc.relaxation``; the curated public names are in ``mftcalc``.
"""
from mftcalc.calculators.ase_calculator import MFTCalculator
from mftcalc.calculators.committee import CommitteeCalculator

__all__ = ["CommitteeCalculator", "MFTCalculator"]
