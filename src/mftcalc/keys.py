"""Names, shapes, units and scopes of every field of a batch (the one dict that flows data -> model -> calculator).

A batch is a plain ``Dict[str, Tensor]`` (TorchScript friendly). Each field has exactly one scope:

* ``atom``   — leading dimension N (total number of atoms in the batch)
* ``system`` — leading dimension B (number of structures)
* ``edge``   — leading dimension E (number of directed pairs)

The scope of a field is declared here, never guessed from its shape.
"""
from __future__ import annotations

from typing import Dict

# --- inputs -----------------------------------------------------------------
POSITIONS = "positions"          # [N, 3] float, Å (Cartesian, not necessarily wrapped)
NUMBERS = "numbers"              # [N] int64, atomic numbers Z (1..118)
BATCH = "batch"                  # [N] int64, structure index of each atom, sorted ascending
CELL = "cell"                    # [B, 3, 3] float, Å, rows are lattice vectors (zeros if non-periodic)
PBC = "pbc"                      # [B, 3] bool
N_ATOMS = "n_atoms"              # [B] int64, atoms per structure
DATASET = "dataset"              # [B] int64, dataset (case) index for the force-field head
FRAME_PARAMS = "frame_params"    # [B, F] float, the model's frame parameters (mftcalc.data.frame_params), their units
GROUP_INDEX = "group_index"      # [B] int64, the assembly (group, 0..G-1) each structure is a component of
GROUP_WEIGHT = "group_weight"    # [B] float, the component's weight in its group (> 0, no unit)
POOL_MASK = "pool_mask"          # [N] float 1/0, the atoms a group head pools (absent: all)

# --- labels (training targets) ------------------------------------------------
ENERGY = "energy"                # [B] float, eV (total energy)
FORCES = "forces"                # [N, 3] float, eV/Å
STRESS = "stress"                # [B, 3, 3] float, eV/Å^3, ASE sign (positive = tensile, = -virial/volume)
HAS_ENERGY = "has_energy"        # [B] bool, label present
HAS_FORCES = "has_forces"        # [B] bool (per structure; all atoms of a structure share it)
HAS_STRESS = "has_stress"        # [B] bool

# --- model outputs beyond the labels ------------------------------------------
ENERGIES = "energies"            # [N] float, eV, per-atom energies
VIRIAL = "virial"                # [B, 3, 3] float, eV
NODE_FEATURES = "node_features"  # [N, n_dim] backbone features (analysis)

# --- graph (built by the model from the inputs) ---------------------------------
EDGE_INDEX = "edge_index"        # [2, E] int64, (centre i, neighbour j)
EDGE_SHIFTS = "edge_shifts"      # [E, 3] float, integer cell shifts S: r_ij = x_j - x_i + S @ cell

PROPERTY_PREFIX = "property:"    # property labels live under "property:<name>" [B] (+ "has_property:<name>" [B] bool);
                                 # in a batch of assemblies (group_index present) they are [G], one per group
HAS_PROPERTY_PREFIX = "has_property:"

SCOPES: Dict[str, str] = {
    POSITIONS: "atom", NUMBERS: "atom", BATCH: "atom", POOL_MASK: "atom", FORCES: "atom", ENERGIES: "atom", NODE_FEATURES: "atom",
    CELL: "system", PBC: "system", N_ATOMS: "system", DATASET: "system", FRAME_PARAMS: "system",
    GROUP_INDEX: "system", GROUP_WEIGHT: "system",
    ENERGY: "system", STRESS: "system",
    HAS_ENERGY: "system", HAS_FORCES: "system", HAS_STRESS: "system", VIRIAL: "system",
    EDGE_INDEX: "edge", EDGE_SHIFTS: "edge",
}


def property_key(name: str) -> str:
    """Batch key holding the label of property ``name`` ([B] float, unit of the source data)."""
    return PROPERTY_PREFIX + name


def has_property_key(name: str) -> str:
    """Batch key of the mask telling which structures carry a label for property ``name`` ([B] bool)."""
    return HAS_PROPERTY_PREFIX + name


def scope_of(key: str) -> str:
    """Scope ("atom", "system" or "edge") of a batch field; property labels and masks are per system."""
    if key.startswith(PROPERTY_PREFIX) or key.startswith(HAS_PROPERTY_PREFIX):
        return "system"
    try:
        return SCOPES[key]
    except KeyError as exc:
        raise KeyError(f"batch field {key!r} has no declared scope; declare it in mftcalc.keys.SCOPES") from exc
