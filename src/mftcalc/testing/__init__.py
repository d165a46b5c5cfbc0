"""Reusable physics checks of a model (eager ``MFTModel``, checkpoint or TorchScript export): finite-difference
forces and stress, rotation, translation and permutation (molecules and periodic cells), supercells, additivity
of far-apart molecules, the acoustic sum rule, smoothness at the cutoffs, batch = single and export = eager.

    from mftcalc.testing import check_model
    report = check_model("models/mft_gap.pt")
    print(report)                   # one line per result: check/structure/quantity, error, tolerance
    report.raise_for_failures()     # ModelCheckFailed (an AssertionError) listing every failed result
"""
from mftcalc.testing.results import CheckResult, ModelCheckFailed, Report, Tolerances
from mftcalc.testing.runner import CHECKS, check_model
from mftcalc.testing.structures import probe_structures

__all__ = ["CHECKS", "CheckResult", "ModelCheckFailed", "Report", "Tolerances", "check_model", "probe_structures"]
