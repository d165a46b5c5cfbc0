"""Backbone features of structures with their chemical labels (atoms: element + covalent neighbour count;
edges: element pair + distance stratum), the input of the representation-collapse analysis."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
import torch
from ase.data import chemical_symbols, covalent_radii

from mftcalc.data.structure import Structure
from mftcalc.model.inference import predict_structures

# distance strata of edge features (Å): bonded, middle, far
STRATA = {"near": (0.0, None), "middle": (3.0, 4.0), "far": (5.0, 6.0)}


@dataclass
class AtomFeatures:
    """Per-atom features [n, n_dim] and labels (``"C4"`` = carbon with 4 covalent neighbours)."""

    features: np.ndarray
    labels: np.ndarray


@dataclass
class EdgeFeatures:
    """Per-edge features [m, e_dim] with the pair (``"C-H"``) and distance stratum of each edge."""

    features: np.ndarray
    pairs: np.ndarray
    strata: np.ndarray


def covalent_neighbour_counts(structure: Structure, factor: float = 1.15) -> np.ndarray:
    """[n] number of atoms closer than ``factor`` × (sum of covalent radii) (molecules, no periodicity)."""
    pos = structure.positions
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    r = covalent_radii[structure.numbers]
    bonded = d < factor * (r[:, None] + r[None])
    np.fill_diagonal(bonded, False)
    return bonded.sum(1)


def per_atom_features(model: torch.nn.Module, structures: Sequence[Structure], max_atoms: int = 4096) -> np.ndarray:
    """The backbone's node features of every atom of ``structures``, in order: [N_atoms, n_dim] float64."""
    rows = predict_structures(model, structures, compute_forces=False, compute_stress=False, features=True,
                              properties=False, max_atoms=max_atoms)
    return np.concatenate([r["node_features"] for r in rows]).astype(np.float64)


def atom_features(model: torch.nn.Module, structures: Sequence[Structure], max_atoms: int = 4096) -> AtomFeatures:
    """Node features of every atom and its (element, covalent neighbours) label."""
    feats = per_atom_features(model, structures, max_atoms)
    labels: List[str] = []
    for s in structures:
        counts = covalent_neighbour_counts(s)
        labels.extend(f"{chemical_symbols[z]}{c}" for z, c in zip(s.numbers, counts))
    return AtomFeatures(feats, np.array(labels))


def edge_features(model: torch.nn.Module, structures: Sequence[Structure], pairs=("C-H", "C-O")) -> EdgeFeatures:
    """Edge features of the given element pairs, stratified by distance (near = covalently bonded)."""
    from mftcalc.data.batch import collate
    out_f, out_p, out_s = [], [], []
    dtype = next(model.parameters()).dtype
    for s in structures:
        batch = collate([s], dtype=dtype, properties=[])
        with torch.no_grad():
            res = model(batch, compute_forces=False, compute_stress=False, compute_properties=False, features=True)
        ei = res["edge_index"].numpy()
        dist = res["edge_vectors"].norm(dim=1).numpy()
        feats = res["edge_features"].double().numpy()
        zi, zj = s.numbers[ei[0]], s.numbers[ei[1]]
        bond = covalent_radii[zi] + covalent_radii[zj]
        for pair in pairs:
            a, b = (chemical_symbols.index(x) for x in pair.split("-"))
            sel_pair = (zi == a) & (zj == b)
            for name, (lo, hi) in STRATA.items():
                sel = sel_pair & ((dist < 1.15 * bond) if hi is None else ((dist >= lo) & (dist < hi)))
                out_f.append(feats[sel])
                out_p.extend([pair] * int(sel.sum()))
                out_s.extend([name] * int(sel.sum()))
    return EdgeFeatures(np.concatenate(out_f) if out_f else np.zeros((0, 0)), np.array(out_p), np.array(out_s))
