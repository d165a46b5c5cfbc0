"""mftcalc: one DPA3-style model that is both a machine-learned force field and a property predictor.

Multi-task fine-tuning (MFT) keeps the pretrained force-field head while learning a property, so one ASE
calculator relaxes a structure and predicts its property.

The public API (everything else is reached through its room, e.g. ``mftcalc.relaxation`` or ``mftcalc.training``):

- ``MFTCalculator``: the ASE calculator (energy eV, forces eV/Å, stress eV/Å³, and the model's properties).
- ``Structure``: the package's structure record; ``read_structures``: any supported file to a list of them.
- ``load_model``: a checkpoint or TorchScript file to a model.
- ``predict`` / ``relax``: batched prediction and batched relaxation over many structures.
- ``Assembly``: a group of component structures with one label (a mixture, a polymer's units); ``predict`` of a
  list of them gives one row per group from the model's group heads.

Names are imported on first use, so ``import mftcalc`` stays light (no torch import).
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "MFTCalculator": "mftcalc.calculators.ase_calculator",
    "Structure": "mftcalc.data.structure",
    "read_structures": "mftcalc.data.io",
    "load_model": "mftcalc.model.checkpoint",
    "predict": "mftcalc.calculators.predict",
    "relax": "mftcalc.relaxation.api",
    "RelaxResult": "mftcalc.relaxation.engine",
    "Assembly": "mftcalc.data.assembly",
}

__all__ = ["MFTCalculator", "Structure", "read_structures", "load_model", "predict", "relax", "RelaxResult",
           "Assembly", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mftcalc' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
