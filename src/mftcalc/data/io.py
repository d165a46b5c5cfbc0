"""Readers and writers: files (extxyz, ASE db, any ASE format, DeePMD npy) and pymatgen objects <-> ``list[Structure]``.

Units everywhere: positions and cells in Å, energy in eV, forces in eV/Å, stress in eV/Å^3 (ASE sign, positive =
tensile). DeePMD stores the virial instead, ``virial = -stress * volume`` (eV). Named scalar properties keep the
units of their source, recorded in ``Structure.property_units``.

Malformed input raises :class:`StructureError` (a ``ValueError``) naming the file, the frame and the fix; a missing
file raises ``FileNotFoundError``.
"""
from __future__ import annotations

import gzip
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from mftcalc.data.structure import Structure, StructureError

PathLike = Union[str, Path]
PropertySpec = Optional[Union[Mapping[str, str], Iterable[str]]]

PROPERTY_UNITS_KEY = "property_units"  # info entry (a dict name -> unit) that marks which info keys are properties
EXTXYZ_SUFFIXES = (".xyz", ".extxyz")
# DeePMD label files that are not per-frame scalar properties (skipped when looking for <property>.npy).
DEEPMD_RESERVED = frozenset({
    "coord", "box", "energy", "force", "virial", "atom_ener", "atom_pref", "fparam", "aparam", "dipole",
    "atomic_dipole", "polarizability", "atomic_polarizability", "spin", "force_mag", "hessian", "efield",
    "atom_virial", "real_atom_types", "charge", "magnetic_moment"})


# ----------------------------------------------------------------------------------------------- public API
def read_structures(path: PathLike, format: Optional[str] = None, index: Union[str, int] = ":",
                    properties: PropertySpec = None, type_map: Optional[Sequence[str]] = None) -> List[Structure]:
    """Read structures from a file or a DeePMD directory.

    Args:
        path: extxyz/xyz file (optionally ``.gz``), ASE database (``.db``), any file ``ase.io.read`` understands,
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


def write_extxyz(structures: Sequence[Structure], path: PathLike) -> None:
    """Write structures as extended XYZ (gzip-compressed when ``path`` ends with ``.gz``).

    Labels go to the ASE calculator fields (energy, forces, stress); properties go to the comment line with a
    ``property_units`` entry listing them, so :func:`read_structures` returns them as properties again.
    Per-atom columns are written with 8 decimals (ASE's format), everything on the comment line exactly.
    """
    from ase.io import write

    frames = []
    for s in structures:
        atoms = s.to_ase()
        if s.properties:
            atoms.info[PROPERTY_UNITS_KEY] = {name: s.property_units.get(name, "") for name in s.properties}
        frames.append(atoms)
    buffer = io.StringIO()
    write(buffer, frames, format="extxyz")
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as fh:
        fh.write(buffer.getvalue())


def read_deepmd(directory: PathLike, type_map: Optional[Sequence[str]] = None) -> List[Structure]:
    """Read a DeePMD npy system directory, or every system below a directory (sorted by path).

    A system holds ``type.raw`` (type index of each atom), ``type_map.raw`` (element symbol of each type; or pass
    ``type_map``), an optional ``nopbc`` file (non-periodic) and ``set.*/`` folders with ``coord.npy``
    [F, 3n] Å, ``box.npy`` [F, 9] Å (optional with ``nopbc``), and optionally ``energy.npy`` [F] eV,
    ``force.npy`` [F, 3n] eV/Å, ``virial.npy`` [F, 9] eV and ``<property>.npy`` [F] (any other per-frame
    scalar; units from an optional ``property_units.json``). ``info`` holds ``system``, ``set`` and ``frame``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory; a DeePMD system is a folder with type.raw")
    if (directory / "type.raw").is_file():
        return _read_deepmd_system(directory, directory.name, type_map)
    systems = sorted(p.parent for p in directory.rglob("type.raw"))
    if not systems:
        raise FileNotFoundError(f"{directory}: no type.raw here or in any sub-directory; "
                                "this is not a DeePMD system directory")
    structures: List[Structure] = []
    for system in systems:
        structures.extend(_read_deepmd_system(system, system.relative_to(directory).as_posix(), type_map))
    return structures


def write_deepmd(structures: Sequence[Structure], directory: PathLike, set_size: int = 5000) -> Dict[str, List[int]]:
    """Write structures as DeePMD npy systems, one sub-directory per distinct atom-type sequence.

    Structures share a system when they have the same atoms in the same order, the same periodicity and the same
    labels present. Each system gets the global ``type_map.raw`` (all elements, sorted by atomic number),
    ``type.raw``, ``nopbc`` for molecules, ``property_units.json`` when it carries properties, and
    ``set.000, set.001, ...`` of at most ``set_size`` frames with ``coord.npy`` [F, 3n], ``box.npy`` [F, 9],
    ``energy.npy`` [F], ``force.npy`` [F, 3n], ``virial.npy`` [F, 9] = -stress * volume (eV) and
    ``<property>.npy`` [F], all float64.

    Returns:
        For each system (path relative to ``directory``), the indices of its structures in ``structures``.
    """
    if not structures:
        raise ValueError("write_deepmd: no structures to write")
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory}: directory is not empty; write DeePMD systems to a new directory")
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, s in enumerate(structures):
        groups[_deepmd_group_key(s, i)].append(i)
    type_map = [chemical_symbols[z] for z in sorted({int(z) for s in structures for z in s.numbers})]
    type_index = {symbol: t for t, symbol in enumerate(type_map)}
    names: Dict[str, List[int]] = {}
    for key, members in groups.items():
        name = _unique_name(_formula(structures[members[0]].numbers), names)
        names[name] = members
        _write_deepmd_system(directory / name, [structures[i] for i in members], key, type_map, type_index, set_size)
    return names


def from_pymatgen(obj: Any, property_units: Optional[Mapping[str, str]] = None) -> Structure:
    """Structure from a pymatgen ``Structure`` (periodic) or ``Molecule``; its numeric ``properties`` become
    named properties (units from ``property_units``). Disordered sites are rejected."""
    if not obj.is_ordered:
        raise StructureError(f"pymatgen {type(obj).__name__} {obj.formula} has partially occupied sites; order it "
                             "first (e.g. pymatgen OrderDisorderedStructureTransformation)")
    numbers = [site.specie.Z for site in obj]
    props = {k: v for k, v in (getattr(obj, "properties", None) or {}).items()
             if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
    units = {k: u for k, u in (property_units or {}).items() if k in props}
    if hasattr(obj, "lattice"):
        return Structure(positions=obj.cart_coords, numbers=numbers, cell=np.array(obj.lattice.matrix),
                         pbc=np.array(obj.lattice.pbc), properties=props, property_units=units)
    return Structure(positions=obj.cart_coords, numbers=numbers, properties=props, property_units=units)


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
    import json
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
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    if suffixes and suffixes[0] in EXTXYZ_SUFFIXES:
        return "extxyz"
    if path.suffix == ".db":
        return "db"
    if suffixes and suffixes[0] == ".json":
        return "pymatgen-json"
    return ""  # let ASE decide


def _read_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as fh:
            return fh.read()
    return path.read_text()


def _read_ase(path: Path, fmt: str, index: Union[str, int], properties: PropertySpec) -> List[Structure]:
    import ase.io

    try:
        if fmt in ("extxyz", "xyz"):
            # ase.io.read on a gzip file is quadratic in the frame count: parse the text in memory instead.
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


# ----------------------------------------------------------------------------------------------- DeePMD
def _load_npy(path: Path, n_frames: Optional[int], columns: Optional[int], system: str) -> np.ndarray:
    """Load ``path`` as float64 [F, columns] (or [F] when columns is None), checking its shape."""
    arr = np.load(path).astype(np.float64)
    frames = arr.shape[0] if arr.ndim else 0
    expected = (frames if n_frames is None else n_frames,) + (() if columns is None else (columns,))
    if columns is None and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif columns is not None and arr.ndim >= 2:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.shape != expected:
        what = "frames" if columns is None else f"frames, {columns} values per frame"
        raise StructureError(f"{system}: {path.name} has shape {arr.shape}, expected {expected} ({what}); "
                             f"fix or regenerate {path}")
    return arr


def _read_deepmd_system(system: Path, name: str, type_map: Optional[Sequence[str]]) -> List[Structure]:
    try:
        types = np.array((system / "type.raw").read_text().split(), dtype=np.int64)
    except ValueError:
        raise StructureError(f"{system}: type.raw must hold one integer type index per atom") from None
    if types.size == 0:
        raise StructureError(f"{system}: type.raw is empty (a structure needs at least one atom)")
    if (system / "type_map.raw").is_file():
        type_map = (system / "type_map.raw").read_text().split()
    elif type_map is None:
        raise FileNotFoundError(f"{system}: no type_map.raw; add one (element symbols, one per line) "
                                "or pass type_map=[...]")
    unknown = [t for t in type_map if t not in atomic_numbers or t == "X"]
    if unknown:
        raise StructureError(f"{system}: unknown element symbol(s) {unknown} in type map; use chemical symbols")
    if types.min() < 0 or types.max() >= len(type_map):
        raise StructureError(f"{system}: type.raw holds types up to {types.max()} but the type map has only "
                             f"{len(type_map)} elements {list(type_map)}")
    numbers = np.array([atomic_numbers[type_map[t]] for t in types], dtype=np.int64)
    n = numbers.size
    periodic = not (system / "nopbc").exists()
    pbc = np.full(3, periodic)
    units = {}
    if (system / "property_units.json").is_file():
        units = json.loads((system / "property_units.json").read_text())
    sets = sorted(p for p in system.glob("set.*") if p.is_dir())
    if not sets:
        raise FileNotFoundError(f"{system}: no set.* directories with coord.npy")
    structures = []
    for set_dir in sets:
        where = f"{system}/{set_dir.name}"
        if not (set_dir / "coord.npy").is_file():
            raise FileNotFoundError(f"{where}: coord.npy is missing")
        coord = _load_npy(set_dir / "coord.npy", None, 3 * n, where)
        nf = coord.shape[0]
        labels = {key: _load_npy(set_dir / f"{key}.npy", nf, cols, where)
                  for key, cols in (("box", 9), ("energy", None), ("force", 3 * n), ("virial", 9))
                  if (set_dir / f"{key}.npy").is_file()}
        if periodic and "box" not in labels:
            raise FileNotFoundError(f"{where}: box.npy is missing; add it or mark the system non-periodic "
                                    "with an empty 'nopbc' file")
        props = {}
        for f in sorted(set_dir.glob("*.npy")):
            if f.stem not in DEEPMD_RESERVED and np.load(f, mmap_mode="r").size == nf:
                props[f.stem] = _load_npy(f, nf, None, where)
        for k in range(nf):
            cell = labels["box"][k].reshape(3, 3) if "box" in labels else np.zeros((3, 3))
            stress = None
            if "virial" in labels:
                if not periodic:
                    raise StructureError(f"{where}: virial.npy in a non-periodic (nopbc) system; stress needs "
                                         "a cell volume — remove virial.npy or the nopbc file")
                stress = -labels["virial"][k].reshape(3, 3) / abs(np.linalg.det(cell))
            try:
                structures.append(Structure(
                    positions=coord[k].reshape(n, 3), numbers=numbers, cell=cell, pbc=pbc,
                    energy=labels["energy"][k] if "energy" in labels else None,
                    forces=labels["force"][k].reshape(n, 3) if "force" in labels else None, stress=stress,
                    properties={p: v[k] for p, v in props.items()},
                    property_units={p: units[p] for p in props if p in units},
                    info={"system": name, "set": set_dir.name, "frame": k}))
            except StructureError as exc:
                raise StructureError(f"{where}, frame {k}: {exc}") from None
    return structures


def _deepmd_group_key(s: Structure, i: int) -> tuple:
    if s.pbc.any() and not s.pbc.all():
        raise StructureError(f"structure {i}: pbc {s.pbc.tolist()} is partly periodic; DeePMD npy stores only "
                             "fully periodic or non-periodic (nopbc) systems")
    if s.stress is not None and not s.is_periodic:
        raise StructureError(f"structure {i}: non-periodic structure with stress; DeePMD stores the virial "
                             "(-stress * volume), which needs a periodic cell — drop the stress")
    return (tuple(s.numbers.tolist()), s.is_periodic, s.energy is not None, s.forces is not None,
            s.stress is not None, tuple(sorted(s.properties)))


def _write_deepmd_system(system: Path, structures: List[Structure], key: tuple, type_map: List[str],
                         type_index: Dict[str, int], set_size: int) -> None:
    _, periodic, has_energy, has_forces, has_stress, prop_names = key
    reserved = DEEPMD_RESERVED.intersection(prop_names)
    if reserved:
        raise StructureError(f"property name(s) {sorted(reserved)} clash with DeePMD label files; rename them")
    system.mkdir(parents=True)
    (system / "type_map.raw").write_text("\n".join(type_map) + "\n")
    types = [type_index[chemical_symbols[z]] for z in structures[0].numbers]
    (system / "type.raw").write_text("\n".join(map(str, types)) + "\n")
    if not periodic:
        (system / "nopbc").touch()
    units = {p: structures[0].property_units[p] for p in prop_names if p in structures[0].property_units}
    if units:
        (system / "property_units.json").write_text(json.dumps(units, indent=1))
    for n_set, start in enumerate(range(0, len(structures), set_size)):
        chunk = structures[start:start + set_size]
        set_dir = system / f"set.{n_set:03d}"
        set_dir.mkdir()
        arrays = {"coord": np.stack([s.positions.reshape(-1) for s in chunk]),
                  "box": np.stack([s.cell.reshape(-1) for s in chunk])}
        if has_energy:
            arrays["energy"] = np.array([s.energy for s in chunk])
        if has_forces:
            arrays["force"] = np.stack([s.forces.reshape(-1) for s in chunk])
        if has_stress:
            arrays["virial"] = np.stack([-s.stress.reshape(-1) * abs(np.linalg.det(s.cell)) for s in chunk])
        for p in prop_names:
            arrays[p] = np.array([s.properties[p] for s in chunk])
        for name, arr in arrays.items():
            np.save(set_dir / f"{name}.npy", arr)


def _formula(numbers: np.ndarray) -> str:
    from ase.formula import Formula

    return Formula.from_list([chemical_symbols[z] for z in numbers]).format("hill")


def _unique_name(base: str, taken: Mapping[str, Any]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name
