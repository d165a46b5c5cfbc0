"""The fine-tuning strategies as small registered objects over the shared loop: ``scratch``, ``ft``, ``lp``,
``mft`` and ``frozen-sklearn``.

A strategy says only what differs between them (docs/design.md): what it starts from (:meth:`Strategy.initialise`:
random weights, or the pretrained backbone and force-field head), which parameters train
(:meth:`Strategy.trainable`, applied by :meth:`Strategy.freeze` through ``requires_grad``), and which sources the
loop draws from (:meth:`Strategy.sources`: the property alone, or with force-field data). Everything else (the
loop, losses, validation, checkpoints) is shared. Look a strategy up by name with :func:`get_strategy`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

if TYPE_CHECKING:                  # the registry stays importable without torch (the CLI lists its names)
    import torch

    from mftcalc.data.structure import Structure
    from mftcalc.training.sampler import Source

#: which parameters a strategy trains (by parameter-name prefix): every one; all but the force-field heads; only
#: the new property head
TRAINS = ("all", "all_but_forcefield", "property_head")


@dataclass(frozen=True)
class Strategy:
    """One fine-tuning strategy.

    ``from_pretrained``: starts from the pretrained backbone and force-field head (False: a random backbone of the
    pretrained size, no force-field head). ``trains``: one of :data:`TRAINS`. ``forcefield_data``: the loop also
    draws force-field batches (MFT's auxiliary task; alternating with the property or summed, ``mode``).
    ``optimiser``: trained by the loop (False: the linear property head is fitted in closed form, no step taken).
    ``linear_head``: the property head is one ``Linear`` on pooled features (scalar and group properties).
    """

    name: str
    summary: str
    from_pretrained: bool = True
    trains: str = "all_but_forcefield"
    forcefield_data: bool = False
    optimiser: bool = True
    linear_head: bool = False

    def __post_init__(self) -> None:
        if self.trains not in TRAINS:
            raise ValueError(f"strategy {self.name!r}: trains must be one of {TRAINS}, got {self.trains!r}")

    def initialise(self, model: torch.nn.Module, pretrained: Optional[torch.nn.Module],
                   reinit_ff_head: bool = False) -> None:
        """Copy the pretrained backbone and force-field head into ``model`` (an ``MFTModel`` whose other heads keep
        their fresh weights) and its metadata; ``reinit_ff_head`` (ablation) keeps only the force-field head's
        energy shifts. A strategy that starts from random weights leaves ``model`` as it is."""
        if not self.from_pretrained:
            return
        if pretrained is None:
            raise ValueError(f"strategy {self.name!r} needs a pretrained model")
        state = {k: v for k, v in pretrained.state_dict().items() if k.startswith(("backbone.", "ff_heads."))}
        if reinit_ff_head:
            state = {k: v for k, v in state.items() if not k.startswith("ff_heads.") or k.endswith("shift")}
        model.load_state_dict(state, strict=False)
        model.metadata = dict(getattr(pretrained, "metadata", {}))  # type: ignore[attr-defined]

    def trainable(self, parameter: str, prop: str) -> bool:
        """Whether parameter ``parameter`` (a ``named_parameters`` name) trains when fine-tuning on ``prop``."""
        if self.trains == "property_head":
            return parameter.startswith((f"property_heads.{prop}.", f"group_heads.{prop}."))
        if self.trains == "all_but_forcefield":
            return not parameter.startswith("ff_heads.")
        return True

    def freeze(self, model: torch.nn.Module, prop: str) -> None:
        """Set ``requires_grad`` of every parameter of ``model`` by :meth:`trainable` (the loop trains those)."""
        for name, p in model.named_parameters():
            p.requires_grad_(self.trainable(name, prop))

    def sources(self, prop: Source, ff: Optional[Dict[str, List[Structure]]], datasets: Sequence[str],
                model_prob: float, ff_batch: Any) -> List[Source]:
        """The loop's training sources: the property source ``prop`` alone, or (``forcefield_data``) the property
        source drawn with probability ``model_prob`` and one source per force-field dataset of ``ff`` (embedding
        index = its position in ``datasets``), sharing ``1 - model_prob`` in proportion to their sizes."""
        from mftcalc.training.sampler import Source, resolve_batch_size
        if not self.forcefield_data:
            return [prop]
        if not ff:
            raise ValueError(f"strategy {self.name!r} trains on force-field data, and none was given")
        out = [replace(prop, prob=model_prob)]
        n_ff = sum(len(v) for v in ff.values())
        for name, structures in ff.items():
            if name not in datasets:
                raise KeyError(f"force-field data {name!r} is not a dataset of the pretrained model "
                               f"({list(datasets)})")
            prob = (1.0 - model_prob) * len(structures) / n_ff
            out.append(Source(f"ff:{name}", structures, "forcefield", list(datasets).index(name),
                              resolve_batch_size(ff_batch, structures), prob))
        return out


STRATEGIES: Dict[str, Strategy] = {s.name: s for s in (
    Strategy("scratch", "a random backbone of the pretrained size, trained with the property head",
             from_pretrained=False),
    Strategy("ft", "the pretrained backbone fine-tuned with the new property head (force-field head kept frozen)"),
    Strategy("lp", "linear probing: only the new property head trains on the frozen pretrained backbone",
             trains="property_head"),
    Strategy("mft", "multi-task fine-tuning: backbone, property head and force-field head train on the property "
                    "and on force-field data", trains="all", forcefield_data=True),
    Strategy("frozen-sklearn", "ridge regression (scikit-learn) on pooled frozen pretrained features, written into "
                               "a linear property head; no training steps",
             trains="property_head", optimiser=False, linear_head=True),
)}


def strategy_names() -> List[str]:
    """The registered strategy names, in registry order."""
    return list(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; an unknown name is refused with the closest one and the list."""
    if name not in STRATEGIES:
        from mftcalc.schema import suggest
        raise ValueError(f"unknown strategy {name!r}{suggest(str(name), list(STRATEGIES))} (choose one of "
                         f"{', '.join(STRATEGIES)})")
    return STRATEGIES[name]
