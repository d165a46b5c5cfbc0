"""Adding force-field datasets to a trained model: new columns of the force-field head's dataset (case) embedding.

Fine-tuning a pretrained force field on a new DFT set (MACE's ``--foundation_model`` use) keeps every old dataset
and appends the new one: the head's first layer takes ``[node features, one-hot(dataset)]``, so a new dataset is a
new input column, initialised as a copy of a named existing dataset's column (its "closest" level of theory), with
that dataset's per-element energy shift as a start (refitted by least squares on the new data by the trainer's
caller). Old datasets keep their columns and shifts exactly, so their predictions are unchanged before training.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch

from mftcalc.model.config import ModelConfig
from mftcalc.model.mft_model import MFTModel


def _first_linear_key(state: Dict[str, torch.Tensor], prefix: str) -> str:
    """State-dict key of the first ``Linear`` weight of a head's MLP (plain or ResNet-dt layers)."""
    for key in (f"{prefix}mlp.net.0.weight", f"{prefix}mlp.net.0.linear.weight"):
        if key in state:
            return key
    raise KeyError(f"no first MLP layer under {prefix!r}")


def extend_datasets(base: MFTModel, names: List[str], init_from: Optional[Dict[str, str]] = None,
                    head: str = "forcefield") -> MFTModel:
    """A copy of ``base`` whose force-field datasets are ``base``'s followed by the names in ``names`` it lacks.

    Args:
        base: a trained model with force-field head ``head`` (its property heads are not carried over).
        names: the datasets the new training uses (old names keep their index; new ones are appended in order).
        init_from: new name -> existing dataset whose embedding column and shift it starts from (default: the
            base's first dataset).
    Returns:
        The extended model (same dtype), in train mode; ``base`` is not modified.
    """
    old = list(base.config.datasets)
    new = [n for n in names if n not in old]
    init_from = dict(init_from or {})
    for name, source in init_from.items():
        if source not in old:
            raise ValueError(f"init_from: dataset {name!r} is to start from {source!r}, which the model does not "
                             f"have (it has {old})")
    if head not in base.ff_heads:
        raise ValueError(f"the model has no force-field head {head!r} (heads: {list(base.ff_heads)})")
    datasets = old + new
    heads = {k: v for k, v in base.config.heads.items() if v.kind == "forcefield"}
    ff_cfg = heads[head]
    heads[head] = dataclasses.replace(ff_cfg, n_datasets=len(datasets))
    dtype = next(base.parameters()).dtype
    model = MFTModel(ModelConfig(backbone=base.config.backbone, heads=heads, datasets=datasets)).to(dtype)
    state = {k: v for k, v in base.state_dict().items() if k.startswith(("backbone.", "ff_heads."))}
    prefix = f"ff_heads.{head}."
    weight_key = _first_linear_key(state, prefix)
    weight = state[weight_key]                                   # [H, n_dim + n_old]
    n_dim = weight.shape[1] - len(old)
    shift = state[prefix + "shift"]                              # [n_old, 119]
    columns = [weight[:, n_dim + old.index(init_from.get(n, old[0]))] for n in new]
    rows = [shift[old.index(init_from.get(n, old[0]))] for n in new]
    if new:
        state[weight_key] = torch.cat([weight, torch.stack(columns, 1)], 1)
        state[prefix + "shift"] = torch.cat([shift, torch.stack(rows, 0)], 0)
    model.load_state_dict(state)
    model.metadata = dict(getattr(base, "metadata", {}))        # type: ignore[attr-defined]
    return model
