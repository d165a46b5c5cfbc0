"""Batched inference: run a model over many structures in atom-count-sized chunks, results per structure."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc import keys as K
from mftcalc.data.batch import collate, split_sizes_by_atoms
from mftcalc.data.structure import Structure
from mftcalc.model.graph import angle_counts

ModelFn = Callable[..., Dict[str, torch.Tensor]]

#: default angle budget of one forward call (energy + forces), measured with ``benchmarks/chunking.py``: above
#: it the angle block's working set leaves the cache and throughput drops
DEFAULT_MAX_ANGLES = 100_000


def angle_costs(model: torch.nn.Module, structures: Sequence[Structure],
                max_angles: Optional[int]) -> Optional[np.ndarray]:
    """Angle count [B] of each structure at the model's ``a_rcut`` (eager or scripted model), or ``None`` when no
    angle budget is asked for or the model does not expose ``a_rcut``."""
    a_rcut = getattr(model, "a_rcut", None)
    if max_angles is None or a_rcut is None:
        return None
    return angle_counts(structures, float(a_rcut))


def chunk_groups(model: torch.nn.Module, structures: Sequence[Structure], max_atoms: int,
                 max_angles: Optional[int]) -> List[List[int]]:
    """Structure indices grouped in order into forward calls of ≤ ``max_atoms`` atoms and ≤ ``max_angles`` angles
    (angles counted at the model's ``a_rcut``; ``max_angles=None`` groups by atoms only)."""
    costs = angle_costs(model, structures, max_angles)
    return split_sizes_by_atoms([s.n_atoms for s in structures], max_atoms, costs,
                                max_angles if costs is not None else None)


def predict_structures(model: torch.nn.Module, structures: Sequence[Structure], dataset: int | Sequence[int] = 0,
                       compute_forces: bool = True, compute_stress: bool = True, max_atoms: int = 4096,
                       max_angles: Optional[int] = DEFAULT_MAX_ANGLES, dtype: Optional[torch.dtype] = None,
                       device: Optional[str | torch.device] = None, features: bool = False,
                       progress: bool = False, properties: bool = True) -> List[Dict[str, np.ndarray]]:
    """Predictions for each structure (model in eval mode): ``energy`` (eV), ``forces`` [n,3], ``stress`` [3,3] and
    each property by name. ``dtype``/``device`` default to those of the model's parameters.

    Structures are grouped in order into chunks of at most ``max_atoms`` atoms and ``max_angles`` angles (one
    forward each; see :func:`chunk_groups`).
    ``features=True`` adds ``node_features`` [n, n_dim]. Works with an eager ``MFTModel`` or a scripted one.
    ``properties=False`` skips the property heads (features or forces only). With them, a model with frame
    parameters reads those from each structure's ``info`` (:mod:`mftcalc.data.frame_params`).
    """
    first = next(iter(model.parameters()), None)
    if dtype is None:
        dtype = first.dtype if first is not None else torch.float32
    if device is None:
        device = first.device if first is not None else "cpu"
    datasets = [dataset] * len(structures) if isinstance(dataset, (int, np.integer)) else list(dataset)
    groups = chunk_groups(model, structures, max_atoms, max_angles)
    frame_names = list(getattr(model, "frame_param_names", [])) if properties else []
    results: List[Dict[str, np.ndarray]] = []
    iterator = groups
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(groups, desc="predict", unit="batch")
    was_training = model.training
    model.eval()
    grad_context = nullcontext if (compute_forces or compute_stress) else torch.no_grad
    for group in iterator:
        chunk = [structures[i] for i in group]
        batch = collate(chunk, dtype=dtype, dataset=[datasets[i] for i in group], properties=[], device=device,
                        frame_params=frame_names)
        with grad_context():
            out = model(batch, compute_forces=compute_forces, compute_stress=compute_stress,
                        compute_properties=properties, features=features)
        out = {k: v.detach().cpu().numpy() for k, v in out.items()}
        offsets = np.concatenate([[0], np.cumsum([s.n_atoms for s in chunk])])
        for k in range(len(chunk)):
            a, b = offsets[k], offsets[k + 1]
            row: Dict[str, np.ndarray] = {}
            for key, value in out.items():
                scope = K.SCOPES.get(key, "system")
                if key in (K.EDGE_INDEX, "edge_features", "edge_vectors"):
                    continue
                row[key] = value[a:b] if scope == "atom" else value[k]
            results.append(row)
    model.train(was_training)
    return results


def predict_assemblies(model: torch.nn.Module, assemblies: Sequence, max_atoms: int = 4096,
                       dtype: Optional[torch.dtype] = None, device: Optional[str | torch.device] = None,
                       progress: bool = False, names: Optional[Sequence[str]] = None) -> List[Dict[str, float]]:
    """One row per assembly (:mod:`mftcalc.data.assembly`): the value of every group head, in its unit, and, when
    the model has the applicability head, ``ood_score``: the largest of the components' scores (the least
    familiar component decides). Whole assemblies are chunked by their components' atoms (one forward each).
    ``names``: the group heads (default: the eager model's ``group_heads``; pass them for a TorchScript export)."""
    first = next(iter(model.parameters()), None)
    dtype = dtype or (first.dtype if first is not None else torch.float32)
    device = device or (first.device if first is not None else "cpu")
    group_names = list(names) if names is not None else list(getattr(model, "group_heads", {}).keys())
    if not group_names:
        raise ValueError("the model has no group head: it predicts properties of single structures; predict the "
                         "components one by one, or fine-tune on groups (mftcalc finetune --group-key KEY)")
    from mftcalc.data.assembly import check_signed_weights
    for name in group_names:
        head = getattr(getattr(model, "group_heads", None), name, None)
        check_signed_weights(assemblies, bool(getattr(head, "reduce_mean", False)), f"group head {name!r}")
    chunks = split_sizes_by_atoms([a.n_atoms for a in assemblies], max_atoms)
    frame_names = list(getattr(model, "frame_param_names", []))
    if progress:
        from tqdm.auto import tqdm
        chunks = tqdm(chunks, desc="predict", unit="batch")
    was_training = model.training
    model.eval()
    rows: List[Dict[str, float]] = []
    for chunk in chunks:
        items = [assemblies[i] for i in chunk]
        batch = collate(items, dtype=dtype, properties=[], device=device, frame_params=frame_names)
        with torch.no_grad():
            out = model(batch, compute_forces=False, compute_stress=False, compute_properties=True)
        group = batch[K.GROUP_INDEX].cpu().numpy()
        score = out["ood_score"].cpu().numpy() if "ood_score" in out else None
        for g in range(len(items)):
            row = {name: float(out[name][g]) for name in group_names}
            if score is not None:
                row["ood_score"] = float(score[group == g].max())
            rows.append(row)
    model.train(was_training)
    return rows
