"""A loaded model plus what callers need to address it: head, dataset index, properties, elements, dtype."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc.model.checkpoint import load_any


@dataclass
class ModelHandle:
    """Model (eager ``MFTModel`` or TorchScript) with metadata-derived lookups.

    Attributes:
        module: the model, eval mode, on ``device`` in ``dtype``.
        metadata: the checkpoint metadata (heads, datasets, elements, units).
        dataset: index of the force-field dataset used for energies.
        source: the file the model was loaded from (None for a model object); worker processes reload it.
    """

    module: torch.nn.Module
    metadata: Dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    dataset: int = 0
    allow_untrained_elements: bool = False
    source: Optional[str] = None
    _checked: set = field(default_factory=set, repr=False)

    @classmethod
    def load(cls, model: Any, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
             head: Optional[str] = None, dataset: Optional[str] = None,
             allow_untrained_elements: bool = False) -> "ModelHandle":
        """From a path (checkpoint or TorchScript export) or a model object (``metadata`` attribute optional)."""
        if isinstance(model, (str, Path)):
            module, metadata = load_any(model, dtype)
        else:
            module = model
            metadata = getattr(model, "metadata", None)
            if metadata is None:
                from mftcalc.model.checkpoint import model_metadata
                metadata = model_metadata(model)
        module = module.to(device=device, dtype=dtype).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        handle = cls(module, metadata, torch.device(device), dtype, allow_untrained_elements=allow_untrained_elements,
                     source=str(model) if isinstance(model, (str, Path)) else None)
        if head is not None:
            ff = handle.forcefield_heads
            if head not in ff:
                raise KeyError(f"model has no force-field head {head!r}; force-field heads: {ff}, "
                               f"property heads: {handle.property_names}")
            module.active_ff_head = head
        if dataset is not None:
            names = handle.dataset_names
            if dataset not in names:
                raise KeyError(f"model has no dataset {dataset!r}; datasets: {names}")
            handle.dataset = names.index(dataset)
        return handle

    def load_kwargs(self) -> Dict[str, Any]:
        """Arguments of :meth:`load` that rebuild this handle from its model file (head, dataset, dtype, ...)."""
        return {"device": str(self.device), "dtype": self.dtype, "head": getattr(self.module, "active_ff_head", None) or None,
                "dataset": self.dataset_names[self.dataset] if self.forcefield_heads else None,
                "allow_untrained_elements": self.allow_untrained_elements}

    @property
    def heads(self) -> Dict[str, Dict[str, Any]]:
        return dict(self.metadata.get("heads", {}))

    @property
    def forcefield_heads(self) -> List[str]:
        return [k for k, v in self.heads.items() if v.get("kind") == "forcefield"]

    @property
    def property_names(self) -> List[str]:
        return [k for k, v in self.heads.items() if v.get("kind") != "forcefield"]

    @property
    def dataset_names(self) -> List[str]:
        return list(self.metadata.get("datasets", ["default"]))

    @property
    def elements(self) -> List[int]:
        return list(self.metadata.get("elements", []))

    def unit(self, name: str) -> str:
        return str(self.heads.get(name, {}).get("unit", ""))

    def check_elements(self, numbers: Sequence[int]) -> None:
        """Raise (or warn, if allowed) for atomic numbers outside the elements the model was trained on."""
        known = self.elements
        if not known:
            return
        unseen = sorted(set(int(z) for z in np.unique(numbers)) - set(known) - self._checked)
        if not unseen:
            return
        from ase.data import chemical_symbols
        names = ", ".join(chemical_symbols[z] for z in unseen)
        trained = ", ".join(chemical_symbols[z] for z in known)
        msg = (f"element(s) {names} were never seen in training (the model was trained on {trained}); their "
               "type embedding exists but is untrained, so predictions for them are not meaningful")
        if not self.allow_untrained_elements:
            raise ValueError(msg + "; pass allow_untrained_elements=True to predict anyway")
        warnings.warn(msg, stacklevel=3)
        self._checked.update(unseen)
