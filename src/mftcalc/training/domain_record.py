"""What a fine-tuned model records about where it is meant to be used: the domains of its force-field datasets,
its property head's training domain, and the default dataset for structures of the task's kind (read by the
calculator's dataset rule and domain warnings, :mod:`mftcalc.calculators.domains`)."""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from mftcalc.data.frame_params import frame_ranges
from mftcalc.training.forcefield_data import task_domain


def record_domains(metadata: Dict[str, Any], pretrained: Optional[Any], task, ff: Optional[Dict],
                   cutoff: Optional[float] = None) -> None:
    """Write into the fine-tuned model's metadata where it is meant to be used: the pretrained datasets' domains,
    the property head's domain (the task's elements, periodicity and frame-parameter ranges) and, for MFT, the
    dataset holding most (over half) of its auxiliary structures as the model's default for structures of the
    task's kind (the force field it kept). ``cutoff`` (Å, the model's): molecules in periodic boxes wider than it
    count as molecules (:func:`mftcalc.calculators.domains.periodicity`)."""
    from types import SimpleNamespace
    from mftcalc.training.pretrain import source_domains
    base = getattr(pretrained, "metadata", {}) if pretrained is not None else {}
    domains = dict(base.get("dataset_domains") or {})
    for name, structures in (ff or {}).items():           # auxiliary datasets, new ones included
        domains.setdefault(name, source_domains([SimpleNamespace(name=name, structures=structures)],
                                                   cutoff).get(name))
    domains = {k: v for k, v in domains.items() if v is not None}
    if domains:
        metadata["dataset_domains"] = domains
    periodic = task_domain(task.train, cutoff) == "materials"
    elements = sorted({int(z) for s in task.train for z in np.unique(s.numbers)})
    domain: Dict[str, Any] = {"elements": elements, "periodic": periodic}
    if task.frame_params:
        domain["frame_params"] = frame_ranges(task.train, list(task.frame_params))
    if getattr(task, "group_key", ""):                    # a group head: warn when given one of its components
        domain["group_key"] = task.group_key
        domain["weight_key"] = task.weight_key
    metadata["heads"][task.property]["domain"] = domain
    if ff:
        sizes = {name: len(structures) for name, structures in ff.items()}
        main = max(sizes, key=sizes.get)
        if sizes[main] > 0.5 * sum(sizes.values()):
            metadata["default_datasets"] = {"crystal" if periodic else "molecule": main}
