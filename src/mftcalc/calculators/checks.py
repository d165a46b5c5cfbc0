"""Checks shared by every path into the model (calculator, predict, relax, screen, evaluate): overlapping atoms
(an error) and a stated charge or spin the model does not read (a warning). The element and dataset checks live
on :class:`~mftcalc.calculators.model_handle.ModelHandle`, which combines them in ``check_structure``."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from mftcalc.data.structure import Structure
from mftcalc.kernels import neighbor_list

MIN_DISTANCE = 0.5  # Å; closer atoms are rejected as overlapping
#: ``info`` keys that state a structure's total charge (e), as DFT, xTB and extxyz files write them
CHARGE_KEYS = ("charge", "total_charge")
#: ``info`` keys that state its spin, with the value of a closed shell
SPIN_KEYS = {"multiplicity": 1.0, "spin_multiplicity": 1.0, "spin": 0.0, "uhf": 0.0}


def unread_charge_or_spin(structure: Structure, read: Sequence[str] = ()) -> Optional[str]:
    """``info[key] = value`` of the first non-zero total charge or open-shell spin that ``structure`` states and
    the model does not read (``read``: its frame parameters, :mod:`mftcalc.data.frame_params`), or None. The
    shipped models were trained on neutral, closed-shell molecules and on crystals, and take neither."""
    for key, closed in [*((k, 0.0) for k in CHARGE_KEYS), *SPIN_KEYS.items()]:
        value = structure.info.get(key)
        if key in read or isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            continue
        if np.isfinite(value) and float(value) != closed:
            return f"info[{key!r}] = {value:g}"
    return None


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
