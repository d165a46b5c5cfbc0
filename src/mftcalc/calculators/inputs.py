"""Inputs of the batched API: a list of mftcalc ``Structure``, ``ase.Atoms`` or pymatgen ``Structure``/``Molecule``.

:func:`as_structures` turns such a list into ``list[Structure]`` with the project's converters
(:meth:`Structure.from_ase`, :func:`mftcalc.data.io.from_pymatgen`); anything else is refused with its index, its
type and what to pass instead. pymatgen is imported only when a pymatgen object is passed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, List

import numpy as np

from mftcalc.data.structure import Structure

ACCEPTED = "mftcalc.data.Structure, ase.Atoms or pymatgen Structure/Molecule objects"


def _type_name(obj: Any) -> str:
    cls = type(obj)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _is_pymatgen(obj: Any) -> bool:
    """True for a pymatgen ``Structure``/``IStructure``/``Molecule``/``IMolecule`` (no pymatgen import otherwise)."""
    if not type(obj).__module__.startswith("pymatgen."):
        return False
    from pymatgen.core.structure import IMolecule, IStructure
    return isinstance(obj, (IStructure, IMolecule))


def _is_single(obj: Any) -> bool:
    from ase import Atoms
    return isinstance(obj, (Structure, Atoms)) or _is_pymatgen(obj)


def as_structures(items: Iterable[Any], caller: str = "predict") -> List[Structure]:
    """``items`` as ``list[Structure]``; each one a ``Structure`` (kept as is), an ``ase.Atoms`` (positions, cell,
    pbc and ``info``, e.g. ``info["dataset"]``; an attached calculator and its results are not read) or a pymatgen
    ``Structure``/``Molecule`` (:func:`mftcalc.data.io.from_pymatgen`: ordered sites only).

    Args:
        items: a list (or other iterable) of structures. caller: the function named in error messages.
        An ``ase.Atoms``' constraints (``FixAtoms``, ...) travel on the structure (``Structure.constraints``):
        :func:`mftcalc.relaxation.api.relax` applies them or refuses them by name; prediction ignores them.
    Raises:
        TypeError: a path, a single structure instead of a list, or an item of another type (its index and type).
        ValueError: an item that cannot be converted (its index and the reason).
    """
    from ase import Atoms

    if isinstance(items, (str, Path)):
        raise TypeError(f"{caller} takes a list of structures, not the path {str(items)!r}: read the file first, "
                        f"{caller}(mftcalc.data.read_structures(path), model), or run `mftcalc {caller}` on it")
    if _is_single(items):
        raise TypeError(f"{caller} takes a list of structures, got a single {_type_name(items)}: pass [structure]")
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"{caller} takes a list of {ACCEPTED}, got a {_type_name(items)}") from None
    out: List[Structure] = []
    for i, obj in enumerate(items):
        if isinstance(obj, Structure):
            out.append(obj)
            continue
        if isinstance(obj, Atoms):
            try:
                out.append(Structure.from_ase(obj.copy()))        # the copy has no calculator: no stale labels
            except ValueError as exc:
                raise ValueError(f"structures[{i}] (ase.Atoms {obj.get_chemical_formula()}): {exc}") from None
            continue
        if _is_pymatgen(obj):
            from mftcalc.data.io import from_pymatgen
            try:
                structure = from_pymatgen(obj)
            except ValueError as exc:
                raise ValueError(f"structures[{i}] ({_type_name(obj)}): {exc}") from None
            structure.cell = np.array(structure.cell)      # not a view of pymatgen's read-only lattice matrix
            out.append(structure)
            continue
        raise TypeError(f"structures[{i}] is a {_type_name(obj)}; {caller} takes a list of {ACCEPTED} (read files "
                        "with mftcalc.data.read_structures)")
    return out
