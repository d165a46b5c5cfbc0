"""Readers and writers: files (extxyz, ASE db, any ASE format, DeePMD npy) and pymatgen objects <-> ``list[Structure]``.

:func:`read_structures` reads any of them; the DeePMD npy format lives in :mod:`mftcalc.data.deepmd`
(``read_deepmd``/``write_deepmd``, importable from here too).

Units everywhere: positions and cells in Å, energy in eV, forces in eV/Å, stress in eV/Å^3 (ASE sign, positive =
tensile). DeePMD stores the virial instead, ``virial = -stress * volume`` (eV). Named scalar properties keep the
units of their source, recorded in ``Structure.property_units``.

Malformed input raises :class:`StructureError` (a ``ValueError``) naming the file, the frame and the fix; a missing
file raises ``FileNotFoundError``.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from mftcalc.data.deepmd import read_deepmd, write_deepmd
from mftcalc.data.structure import Structure, StructureError
from mftcalc.files import atomic_write

__all__ = ["read_structures", "write_extxyz", "read_deepmd", "write_deepmd", "from_pymatgen", "to_pymatgen",
           "read_pymatgen_json"]

PathLike = Union[str, Path]
PropertySpec = Optional[Union[Mapping[str, str], Iterable[str]]]

PROPERTY_UNITS_KEY = "property_units"  # info entry (a dict name -> unit) that marks which info keys are properties
EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
#: text compression chosen by the file's last suffix (what ``ase.io`` itself understands).
COMPRESSED_OPENERS = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}


# ----------------------------------------------------------------------------------------------- public API
def read_structures(path: PathLike, format: Optional[str] = None, index: Union[str, int] = ":",
                    properties: PropertySpec = None, type_map: Optional[Sequence[str]] = None) -> List[Structure]:
    """Read structures from a file or a DeePMD directory.

    Args:
        path: extxyz/xyz file (optionally ``.gz``, ``.xz`` or ``.bz2``), ASE database (``.db``), any file ``ase.io.read`` understands,
            or a DeePMD npy system directory (``type.raw``, ``set.*/coord.npy``, ...) or a directory of such systems.
        format: ASE format name to force (``"extxyz"``, ``"db"``, ``"deepmd"``, ``"cif"``, ...); default from
            the path.
        index: which frames, ASE style (``":"``, ``"-1"``, ``"10:20"``, an int).
        properties: ``info`` keys (ASE formats) to take as named scalar properties, as names or a mapping
            name -> unit. Keys declared in a frame's ``property_units`` info entry (as written by
            :func:`write_extxyz`) are taken automatically.
        type_map: element symbols of the DeePMD types, for systems without ``type_map.raw``.

    Returns:
        The structures, in file order (DeePMD: systems in sorted directory order, then sets, then frames).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory; check the path")
    fmt = _guess_format(path, format)
    if fmt == "deepmd":
        structures = _select(read_deepmd(path, type_map=type_map), index)
    elif fmt == "db":
        structures = _read_db(path, index, properties)
    elif fmt == "pymatgen-json":
        structures = _select(read_pymatgen_json(path, properties), index)
    else:
        structures = _read_ase(path, fmt, index, properties)
    if not structures:
        raise StructureError(f"{path}: no structures found (empty file or empty index {index!r})")
    return structures


def write_extxyz(structures: Sequence[Structure], path: PathLike, decimals: Optional[int] = None) -> None:
    """Write structures as extended XYZ, compressed by the path's suffix (``.gz``, ``.xz`` or ``.bz2``).

    Labels go to the ASE calculator fields (energy, forces, stress); properties go to the comment line with a
    ``property_units`` entry listing them, so :func:`read_structures` returns them as properties again.
    Per-atom columns are written with 8 decimals (ASE's format), everything on the comment line exactly.
    ``decimals`` rounds positions (Å) and forces (eV/Å) first: 6 (1e-6, below float32 resolution at 5 Å) makes an
    xz-compressed file about 40 % smaller; energies, cells, stresses and info stay exact. The file is written
    atomically (:func:`mftcalc.files.atomic_write`): an interrupted write leaves the earlier file, or none.
    """
    from ase.io import write

    frames = []
    for s in structures:
        if decimals is not None:
            s = s.with_labels(positions=np.round(s.positions, decimals),
                              forces=None if s.forces is None else np.round(s.forces, decimals))
        atoms = s.to_ase()
        if s.properties:
            atoms.info[PROPERTY_UNITS_KEY] = {name: s.property_units.get(name, "") for name in s.properties}
        frames.append(atoms)
    buffer = io.StringIO()
    write(buffer, frames, format="extxyz")
    path = Path(path)
    opener = COMPRESSED_OPENERS.get(path.suffix, open)      # by the target's suffix: the temporary file has none

    def fill(tmp: str) -> None:
        with opener(tmp, "wt") as fh:
            fh.write(buffer.getvalue())

    atomic_write(path, fill)        # a killed run leaves the old file or none, never a truncated one


def from_pymatgen(obj: Any, property_units: Optional[Mapping[str, str]] = None) -> Structure:
    """Structure from a pymatgen ``Structure`` (periodic) or ``Molecule``; its numeric ``properties`` become
    named properties (units from ``property_units``). Disordered sites are rejected. Selective dynamics
    (``site_properties["selective_dynamics"]``, as a POSCAR holds it) become ASE constraints (``FixAtoms``,
    ``FixCartesian``, as pymatgen's ``AseAtomsAdaptor`` makes them), which ``relax`` applies."""
    if not obj.is_ordered:
        raise StructureError(f"pymatgen {type(obj).__name__} {obj.formula} has partially occupied sites; order it "
                             "first (e.g. pymatgen OrderDisorderedStructureTransformation)")
    numbers = [site.specie.Z for site in obj]
    props = {k: v for k, v in (getattr(obj, "properties", None) or {}).items()
             if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
    units = {k: u for k, u in (property_units or {}).items() if k in props}
    constraints: tuple = ()
    if "selective_dynamics" in (getattr(obj, "site_properties", None) or {}):
        from pymatgen.io.ase import AseAtomsAdaptor
        constraints = tuple(AseAtomsAdaptor.get_atoms(obj).constraints)
    if hasattr(obj, "lattice"):
        return Structure(positions=obj.cart_coords, numbers=numbers, cell=np.array(obj.lattice.matrix),
                         pbc=np.array(obj.lattice.pbc), properties=props, property_units=units,
                         constraints=constraints)
    return Structure(positions=obj.cart_coords, numbers=numbers, properties=props, property_units=units,
                     constraints=constraints)


def to_pymatgen(structure: Structure) -> Any:
    """A pymatgen ``Structure`` (any periodic direction) or ``Molecule`` with the named properties in ``properties``.
    Labels (energy, forces, stress) are not carried."""
    from pymatgen.core import Lattice, Molecule
    from pymatgen.core import Structure as PmgStructure

    species = [chemical_symbols[z] for z in structure.numbers]
    if structure.is_periodic:
        lattice = Lattice(structure.cell, pbc=tuple(bool(p) for p in structure.pbc))
        return PmgStructure(lattice, species, structure.positions, coords_are_cartesian=True,
                            properties=dict(structure.properties))
    return Molecule(species, structure.positions, properties=dict(structure.properties))


# ----------------------------------------------------------------------------------------------- ASE formats
def read_pymatgen_json(path: Path, properties: PropertySpec = None) -> List[Structure]:
    """A JSON list of pymatgen ``Structure``/``Molecule`` dicts (``[s.as_dict() for s in structures]``, e.g. from
    ``monty.serialization.dumpfn``), one object also accepted; their numeric ``properties`` become named
    properties (units from ``properties`` when a mapping)."""
    from pymatgen.core import Molecule
    from pymatgen.core import Structure as PmgStructure

    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise StructureError(f"{path}: not valid JSON ({exc}); write it with [s.as_dict() for s in structures]") \
            from None
    items = data if isinstance(data, list) else [data]
    units = dict(properties) if isinstance(properties, Mapping) else {}
    out = []
    for k, item in enumerate(items):
        kind = item.get("@class") if isinstance(item, dict) else None
        if kind not in ("Structure", "Molecule"):
            raise StructureError(f"{path}, item {k}: not a pymatgen Structure or Molecule dict (@class {kind!r})")
        obj = (PmgStructure if kind == "Structure" else Molecule).from_dict(item)
        try:
            structure = from_pymatgen(obj, units)
        except (TypeError, ValueError) as exc:
            raise StructureError(f"{path}, item {k}: {exc}") from None
        wanted = list(properties) if properties is not None else []
        missing = [name for name in wanted if name not in structure.properties]
        if missing:
            raise StructureError(f"{path}, item {k}: property {missing[0]!r} is missing from its properties; "
                                 f"available keys: {sorted(structure.properties)}")
        out.append(structure)
    return out


def _guess_format(path: Path, format: Optional[str]) -> str:
    if format is not None:
        return format
    if path.is_dir():
        return "deepmd"
    suffixes = path.suffixes[-2:] if path.suffix in COMPRESSED_OPENERS else path.suffixes[-1:]
    if suffixes and suffixes[0] in EXTXYZ_SUFFIXES:
        return "extxyz"
    if path.suffix == ".db":
        return "db"
    if suffixes and suffixes[0] == ".json":
        return "pymatgen-json"
    return ""  # let ASE decide


def _read_text(path: Path) -> str:
    if path.suffix in COMPRESSED_OPENERS:
        with COMPRESSED_OPENERS[path.suffix](path, "rt") as fh:
            return fh.read()
    return path.read_text()


def _read_ase(path: Path, fmt: str, index: Union[str, int], properties: PropertySpec) -> List[Structure]:
    import ase.io

    try:
        if fmt in ("extxyz", "xyz"):
            # ase.io.read on a compressed file is quadratic in the frame count: parse the text in memory instead.
            frames = ase.io.read(io.StringIO(_read_text(path)), format="extxyz", index=index)
        else:
            frames = ase.io.read(path, format=fmt or None, index=index)
    except KeyError as exc:
        symbol = exc.args[0] if exc.args else ""
        if isinstance(symbol, str) and symbol not in atomic_numbers:
            raise StructureError(f"{path}: unknown element symbol {symbol!r}; use chemical symbols "
                                 "(H, He, ..., Og)") from None
        raise
    if not isinstance(frames, list):
        frames = [frames]
    return [_from_atoms(atoms, properties, f"{path}, frame {i}") for i, atoms in enumerate(frames)]


def _read_db(path: Path, index: Union[str, int], properties: PropertySpec) -> List[Structure]:
    import ase.db

    rows = _select(list(ase.db.connect(path).select()), index)
    structures = []
    for row in rows:
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs, db_id=row.id)
        structures.append(_from_atoms(atoms, properties, f"{path}, row id {row.id}"))
    return structures


def _from_atoms(atoms: Any, properties: PropertySpec, where: str) -> Structure:
    """Structure from ASE Atoms, moving declared/requested ``info`` keys into properties."""
    units: Dict[str, str] = dict(atoms.info.pop(PROPERTY_UNITS_KEY, None) or {})
    if properties is not None:
        requested = properties if isinstance(properties, Mapping) else {name: "" for name in properties}
        clash = next((k for k, v in requested.items() if v and units.get(k) and units[k] != v), None)
        if clash is not None:     # the labels are in the declared unit: renaming it would be silently wrong
            raise StructureError(f"{where}: the file declares {clash!r} in {units[clash]!r} (property_units), and "
                                 f"{requested[clash]!r} was asked for; nothing converts the labels: ask for "
                                 f"{units[clash]!r} (or no unit: the file's is used), or convert the labels")
        units.update({k: v for k, v in requested.items() if v or k not in units})
    missing = [name for name in units if name not in atoms.info]
    if missing:
        raise StructureError(f"{where}: property {missing[0]!r} is missing from the comment line / key-value pairs; "
                             f"available keys: {sorted(atoms.info)}")
    props = {name: atoms.info.pop(name) for name in units}
    try:
        return Structure.from_ase(atoms, properties=props, property_units={k: u for k, u in units.items() if u})
    except (TypeError, ValueError) as exc:  # StructureError is a ValueError
        raise StructureError(f"{where}: {exc}") from None


def _select(items: list, index: Union[str, int]) -> list:
    from ase.io.formats import string2index

    selection = string2index(index) if isinstance(index, str) else index
    return items[selection] if isinstance(selection, slice) else [items[selection]]
