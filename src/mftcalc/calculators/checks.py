"""Geometry check shared by every path into the model (calculator, predict, relax, screen, evaluate):
overlapping atoms. The element and dataset checks live on :class:`~mftcalc.calculators.model_handle.ModelHandle`,
which combines all three in ``check_structure``."""
from __future__ import annotations

import torch

from mftcalc.data.structure import Structure
from mftcalc.kernels import neighbor_list

MIN_DISTANCE = 0.5  # Å; closer atoms are rejected as overlapping


def check_overlaps(structure: Structure, min_distance: float = MIN_DISTANCE) -> None:
    """Raise ``ValueError`` naming the first pair of atoms closer than ``min_distance`` Å (periodic images too)."""
    pos = torch.as_tensor(structure.positions)
    edge_index, _, dist = neighbor_list(pos, min_distance, None, torch.as_tensor(structure.cell).unsqueeze(0),
                                        torch.as_tensor(structure.pbc).unsqueeze(0))
    if dist.numel():
        k = int(torch.argmin(dist))
        i, j = int(edge_index[0, k]), int(edge_index[1, k])
        raise ValueError(f"overlapping atoms: atoms {i} and {j} are {float(dist[k]):.3f} Å apart "
                         f"(minimum {min_distance} Å); check the coordinates and the cell")
