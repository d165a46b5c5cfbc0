"""Anchors: penalties that hold a fine-tuned backbone near the pretrained one, a control beside MFT.

MFT keeps the prior by training the force-field task alongside the property. An anchor keeps it by a penalty
instead, with no force-field data, which tells apart "MFT helps because the prior is kept" from "MFT helps
because of the force-field data itself":

- ``features``: the drift of the backbone's per-atom features from the prior's on the property batches,
  ``λ · Σ‖h − h₀‖² / Σ‖h₀‖²`` over the batch's atoms (h: node features [N, n_dim] of the trained backbone, h₀:
  of a frozen copy of the backbone it started from, on the same structures). DPA-ADAPT's ``Regularizer``
  names a descriptor anchor but does not implement it (deepmd-kit pull request #5741).
- ``weights``: L2-SP (Li et al. 2018), ``λ · Σ(θ − θ₀)² / Σθ₀²`` over the backbone's trained parameters, added
  to every step's loss.

Both are relative (dimensionless): λ = 1 weighs a 100 % drift like a unit of the normalised property loss.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Hashable, Optional, Sequence

import torch
from torch import Tensor

from mftcalc import keys as K

ANCHOR_KINDS = ("none", "features", "weights")
BACKBONE_PREFIX = "backbone."
CACHE_LIMIT = 2 ** 28          # reference features kept, in numbers (1 GiB in float32)


def check_anchor(kind: str, weight: float) -> None:
    """Raise ``ValueError`` naming the fix for an unknown anchor kind or a weight that is not > 0 with one."""
    if kind not in ANCHOR_KINDS:
        raise ValueError(f"anchor must be one of {ANCHOR_KINDS} ('features': penalise the drift of backbone "
                         f"features from the prior's; 'weights': L2-SP), got {kind!r}")
    if kind != "none" and not (weight > 0 and weight < float("inf")):
        raise ValueError(f"anchor_weight must be a finite number > 0 with anchor {kind!r}, got {weight!r}")


class Anchor:
    """The penalty of one run, built from the model before it trains (the reference is a copy, never trained).

    Args:
        model: the model about to train, holding the pretrained backbone (``MFTModel``: parameters named
            ``backbone.*``, ``features=True`` in its forward giving ``node_features`` [N, n_dim]).
        kind: ``features`` or ``weights`` (see the module).
        weight: λ > 0.
    """

    def __init__(self, model: torch.nn.Module, kind: str, weight: float) -> None:
        check_anchor(kind, weight)
        if kind == "none":
            raise ValueError("Anchor needs kind 'features' or 'weights'; build none for 'none'")
        self.kind = kind
        self.weight = float(weight)
        self.reference: Optional[torch.nn.Module] = None
        self.cache_limit = CACHE_LIMIT
        self._cache: Dict[Hashable, Tensor] = {}
        self._cached = 0
        self.reference_weights: Dict[str, Tensor] = {}
        trained = {n: p for n, p in model.named_parameters() if n.startswith(BACKBONE_PREFIX) and p.requires_grad}
        if not trained:
            raise ValueError(f"anchor {kind!r} holds the backbone near its start, and no backbone parameter trains "
                             "here (a linear probe or a frozen backbone): drop the anchor")
        if kind == "features":
            self.reference = copy.deepcopy(model).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        else:
            self.reference_weights = {n: p.detach().clone() for n, p in trained.items()}
            self._norm = float(sum(float((w * w).sum()) for w in self.reference_weights.values()))
            if self._norm == 0.0:
                raise ValueError("anchor 'weights': the backbone starts at zero weights; nothing to anchor to")

    def feature_penalty(self, batch: Dict[str, Tensor], node: Tensor,
                        keys: Optional[Sequence[Hashable]] = None,
                        sum_norm: Optional[Callable[[float], float]] = None) -> Tensor:
        """λ · Σ‖h − h₀‖² / Σ‖h₀‖² of ``node`` [N, n_dim] (the trained backbone's features of ``batch``) against
        the reference's features of the same batch; a scalar tensor carrying the gradient through ``node``.

        ``keys``: one hashable per item of the batch (structure, or assembly of a group head), naming it across
        steps (the loop passes ``(source, index)``). The reference never trains, so its features of an item are
        computed once and kept (up to :attr:`cache_limit` numbers); a batch whose items are all kept needs no
        reference forward pass at all.

        ``sum_norm``: for data parallelism, sums this rank's Σ‖h₀‖² over the ranks (a float, no gradient), so the
        penalty is this rank's share λ · Σ_rank‖h − h₀‖² / Σ_global‖h₀‖² and the ranks' shares add up to the
        global batch's penalty exactly (the mean of per-rank ratios would not)."""
        ref = self.reference_features(batch, keys)
        norm = (ref * ref).sum()
        if sum_norm is not None:
            norm = torch.as_tensor(sum_norm(float(norm)), dtype=ref.dtype, device=ref.device)
        norm = norm.clamp_min(torch.finfo(ref.dtype).tiny)
        return self.weight * ((node - ref) ** 2).sum() / norm

    def reference_features(self, batch: Dict[str, Tensor], keys: Optional[Sequence[Hashable]] = None) -> Tensor:
        """The reference's node features [N, n_dim] of ``batch``, from the cache where every item is kept."""
        assert self.reference is not None
        if keys and all(k in self._cache for k in keys):
            return torch.cat([self._cache[k] for k in keys])
        with torch.no_grad():
            ref = self.reference(batch, compute_forces=False, compute_stress=False, compute_properties=False,
                                 features=True)[K.NODE_FEATURES]
        if keys is not None:
            item = batch[K.BATCH]                                  # [N] the item of each atom
            if K.GROUP_INDEX in batch:                             # assemblies: components -> their group
                item = batch[K.GROUP_INDEX][item]
            contiguous = item.numel() == 0 or bool((item[1:] >= item[:-1]).all())
            if contiguous and self._cached + ref.numel() <= self.cache_limit:
                counts = torch.bincount(item, minlength=len(keys)).tolist()
                for key, part in zip(keys, torch.split(ref, counts)):
                    if key not in self._cache:           # a copy: a view would keep the whole batch alive
                        self._cache[key] = part.clone()
                        self._cached += part.numel()
        return ref

    def weight_penalty(self, model: torch.nn.Module) -> Tensor:
        """λ · Σ(θ − θ₀)² / Σθ₀² over the backbone parameters that train; a scalar tensor."""
        params = dict(model.named_parameters())
        total = sum(((params[n] - w) ** 2).sum() for n, w in self.reference_weights.items())
        return self.weight * total / self._norm


def build_anchor(model: torch.nn.Module, kind: str, weight: float) -> Optional[Anchor]:
    """The :class:`Anchor` of ``kind`` for ``model``, or None for ``kind == 'none'``."""
    check_anchor(kind, weight)
    return None if kind == "none" else Anchor(model, kind, weight)
