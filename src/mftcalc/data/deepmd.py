"""DeePMD npy systems <-> ``list[Structure]``: ``type.raw``, ``type_map.raw``, ``nopbc`` and ``set.*/`` folders of
per-frame arrays, as deepmd-kit reads and writes them.

Units: positions and cells in Å, energy in eV, forces in eV/Å; DeePMD stores the virial, ``virial = -stress *
volume`` (eV), where a :class:`Structure` holds the stress (eV/Å³, ASE sign). Malformed systems raise
:class:`StructureError` naming the system, the set and the fix.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from mftcalc.data.structure import Structure, StructureError

PathLike = Union[str, Path]

# DeePMD label files that are not per-frame scalar properties (skipped when looking for <property>.npy).
DEEPMD_RESERVED = frozenset({
    "coord", "box", "energy", "force", "virial", "atom_ener", "atom_pref", "fparam", "aparam", "dipole",
    "atomic_dipole", "polarizability", "atomic_polarizability", "spin", "force_mag", "hessian", "efield",
    "atom_virial", "real_atom_types", "charge", "magnetic_moment", "group_id", "weight", "pool_mask"})


def read_deepmd(directory: PathLike, type_map: Optional[Sequence[str]] = None) -> List[Structure]:
    """Read a DeePMD npy system directory, or every system below a directory (sorted by path).

    A system holds ``type.raw`` (type index of each atom), ``type_map.raw`` (element symbol of each type; or pass
    ``type_map``), an optional ``nopbc`` file (non-periodic) and ``set.*/`` folders with ``coord.npy``
    [F, 3n] Å, ``box.npy`` [F, 9] Å (optional with ``nopbc``), and optionally ``energy.npy`` [F] eV,
    ``force.npy`` [F, 3n] eV/Å, ``virial.npy`` [F, 9] eV and ``<property>.npy`` [F] (any other per-frame
    scalar; units from an optional ``property_units.json``). ``info`` holds ``system``, ``set`` and ``frame``.

    Mixed-type systems (``set.*/real_atom_types.npy`` [F, n], each frame's own types; ``-1`` marks padding atoms,
    which are dropped) and DPA-ADAPT's grouped systems (``group_id.npy`` [F]: frames of one group; ``weight.npy``
    [F]; ``pool_mask.npy`` [F, n], zero only on padding) are read too: a frame's group goes to
    ``info["group"]`` as ``<system>:<group_id>``, its weight to ``info["weight"]`` and its pool mask (over the
    real atoms) to ``pool_mask`` (:mod:`mftcalc.data.assembly`).
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
    z_of_type = np.array([atomic_numbers[t] for t in type_map], dtype=np.int64)
    n = types.size
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
        fparam = None                           # [nf] or [nf, F]: info "fparam" or "fparam_0".. (frame parameters)
        if (set_dir / "fparam.npy").is_file():
            width = max(1, np.load(set_dir / "fparam.npy", mmap_mode="r").size // max(nf, 1))
            fparam = _load_npy(set_dir / "fparam.npy", nf, width if width > 1 else None, where).reshape(nf, -1)
        frame_types = _frame_types(set_dir, types, nf, len(type_map), where)
        group_info = _group_info(set_dir, name, nf, where)
        masks = _pool_masks(set_dir, nf, frame_types, where)
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
            real = frame_types[k] >= 0                       # all atoms, unless padding (-1) is marked
            frame_numbers = z_of_type[frame_types[k][real]]
            try:
                structures.append(Structure(
                    positions=coord[k].reshape(n, 3)[real], numbers=frame_numbers, cell=cell, pbc=pbc,
                    energy=labels["energy"][k] if "energy" in labels else None,
                    forces=labels["force"][k].reshape(n, 3)[real] if "force" in labels else None, stress=stress,
                    properties={p: v[k] for p, v in props.items()},
                    property_units={p: units[p] for p in props if p in units},
                    info={"system": name, "set": set_dir.name, "frame": k, **_fparam_info(fparam, k),
                          **group_info[k]}, pool_mask=None if masks is None else masks[k][real]))
            except StructureError as exc:
                raise StructureError(f"{where}, frame {k}: {exc}") from None
    return structures


def _frame_types(set_dir: Path, types: np.ndarray, nf: int, n_types: int, where: str) -> np.ndarray:
    """Each frame's atom types [nf, n]: ``real_atom_types.npy`` (mixed-type systems; -1 = a padding atom) or
    ``type.raw``'s for every frame."""
    path = set_dir / "real_atom_types.npy"
    if not path.is_file():
        return np.broadcast_to(types, (nf, types.size))
    frame_types = _load_npy(path, nf, types.size, where).astype(np.int64)
    if frame_types.max() >= n_types or frame_types.min() < -1:
        raise StructureError(f"{where}: real_atom_types.npy holds types {frame_types.min()}..{frame_types.max()}; "
                             f"the type map has {n_types} elements (and -1 marks a padding atom)")
    empty = np.flatnonzero((frame_types < 0).all(1))
    if empty.size:
        raise StructureError(f"{where}: frame {empty[0]} of real_atom_types.npy is all padding (-1): no atoms")
    return frame_types


def _group_info(set_dir: Path, system: str, nf: int, where: str) -> List[Dict]:
    """Per frame, ``{"group": "<system>:<id>", "weight": w}`` from DPA-ADAPT's ``group_id.npy``/``weight.npy``
    (empty dicts without them)."""
    if not (set_dir / "group_id.npy").is_file():
        if (set_dir / "weight.npy").is_file() or (set_dir / "pool_mask.npy").is_file():
            raise StructureError(f"{where}: weight.npy or pool_mask.npy without group_id.npy; DPA-ADAPT's grouped "
                                 "data needs all three (dpa-adapt data mark-groups writes them)")
        return [{} for _ in range(nf)]
    ids = _load_npy(set_dir / "group_id.npy", nf, None, where).astype(np.int64)
    weights = (_load_npy(set_dir / "weight.npy", nf, None, where) if (set_dir / "weight.npy").is_file()
               else np.ones(nf))
    return [{"group": f"{system}:{ids[k]}", "weight": float(weights[k])} for k in range(nf)]


def _pool_masks(set_dir: Path, nf: int, frame_types: np.ndarray, where: str) -> Optional[np.ndarray]:
    """DPA-ADAPT's ``pool_mask.npy`` [nf, n] as bool (padding atoms, type -1, are dropped with it), or None."""
    if not (set_dir / "pool_mask.npy").is_file():
        return None
    return _load_npy(set_dir / "pool_mask.npy", nf, frame_types.shape[1], where) > 0


def _fparam_info(fparam: Optional[np.ndarray], k: int) -> Dict[str, float]:
    """Frame ``k``'s DeePMD frame parameters as ``info`` entries: ``fparam`` for one column, else ``fparam_0``, ...
    (what ``--frame-param`` names; :mod:`mftcalc.data.frame_params`)."""
    if fparam is None:
        return {}
    if fparam.shape[1] == 1:
        return {"fparam": float(fparam[k, 0])}
    return {f"fparam_{j}": float(v) for j, v in enumerate(fparam[k])}


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
