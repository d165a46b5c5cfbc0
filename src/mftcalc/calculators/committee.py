"""``CommitteeCalculator``: an ASE calculator over a committee of force fields that also reports how much its
members disagree, so an ASE molecular dynamics run can watch its own reliability (DP-GEN's exploration step,
done in ASE instead of LAMMPS' ``pair_style deepmd m0.pb m1.pb ...``)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from mftcalc.calculators.ase_calculator import MFTCalculator, _same
from mftcalc.data.structure import Structure
from mftcalc.workflows.model_deviation import check_committee, deviation_statistics

#: the deviations handed out, with their units (eV/Å, eV/atom; ``devi_f`` is per atom, [n_atoms])
DEVIATIONS = ("max_devi_f", "min_devi_f", "avg_devi_f", "devi_f", "devi_e", "max_devi_v", "min_devi_v", "avg_devi_v")


class CommitteeCalculator(Calculator):
    """Energy, forces and stress from a committee of force fields, with its model deviation.

    ``drive="mean"`` (default) gives the committee mean's energy, forces and stress (a mean of conservative force
    fields is one: forces stay −dE/dx); ``drive="first"`` gives the first member's, as LAMMPS' ``pair_style
    deepmd`` does with several models. Either way every member computes each structure, and ``get_property``
    hands out deepmd-kit's deviations of that structure (:mod:`mftcalc.workflows.model_deviation`):
    ``max_devi_f``, ``min_devi_f``, ``avg_devi_f`` (eV/Å), ``devi_f`` ([n_atoms] eV/Å, each atom's), ``devi_e``
    (eV/atom) and, for structures with a stress, ``max_devi_v``, ``min_devi_v``, ``avg_devi_v`` (virial per atom,
    eV/atom). ``models``: two or more paths or models with force-field heads; ``device``, ``dtype``, ``dataset``
    as :class:`~mftcalc.calculators.ase_calculator.MFTCalculator`, for every member.

    In an ASE MD run: ``dyn.attach(lambda: log.append(atoms.calc.get_property("max_devi_f")), interval=10)``, and
    stop or collect structures when it passes a trust bound.
    """

    implemented_properties: List[str] = ["energy", "free_energy", "forces", "stress", *DEVIATIONS]

    def __init__(self, models: Sequence[Any], device: str = "cpu", dtype: torch.dtype = torch.float32,
                 dataset: Optional[str] = None, drive: str = "mean", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_committee(models, None, None)
        if drive not in ("mean", "first"):
            raise ValueError(f"drive={drive!r}: 'mean' (the committee mean's energy and forces) or 'first' (the "
                             "first member's, as LAMMPS' pair_style deepmd)")
        self.members = [MFTCalculator(m, device, dtype, dataset=dataset) for m in models]
        for k, member in enumerate(self.members):
            if not member.handle.forcefield_heads:
                raise ValueError(f"model {k} ({models[k]}) has no force-field head: a committee drives dynamics "
                                 "and compares forces; give force fields")
        self.drive = drive

    def check_state(self, atoms: Any, tol: float = 1e-15) -> List[str]:
        """ASE's changes, plus ``info`` when ``atoms.info`` differs from the last calculation's (the members read
        ``info["dataset"]`` and frame parameters from it; any change recomputes, so a retagged structure is never
        given the old dataset's energy)."""
        changes = super().check_state(atoms, tol)
        if not changes and self.atoms is not None:
            old, new = self.atoms.info, atoms.info
            if old.keys() != new.keys() or any(not _same(old[k], new[k]) for k in old):
                changes = ["info"]
        return changes

    def calculate(self, atoms: Any = None, properties: Optional[List[str]] = None,
                  system_changes: List[str] = all_changes) -> None:
        super().calculate(atoms, properties or ["energy"], system_changes)
        structure = Structure.from_ase(self.atoms)
        wanted = ["energy", "forces"] + (["stress"] if structure.stress_defined else [])
        for member in self.members:
            member.calculate(self.atoms.copy(), wanted, all_changes)
        energies = np.array([[m.results["energy"]] for m in self.members])                      # [K, 1] eV
        forces = np.stack([m.results["forces"] for m in self.members])                        # [K, n, 3] eV/Å
        stresses = (np.stack([voigt_6_to_full_3x3_stress(m.results["stress"]) for m in self.members])
                    if structure.stress_defined else None)                                    # [K, 3, 3] eV/Å³
        stats = deviation_statistics(energies, [forces], [stresses], [structure])
        pick = slice(None) if self.drive == "mean" else slice(0, 1)
        energy = float(energies[pick, 0].mean())
        self.results = {"energy": energy, "free_energy": energy, "forces": forces[pick].mean(axis=0),
                        "devi_f": stats.atomic_devi_f[0], **{name: float(getattr(stats, name)[0]) for name in
                                                              ("max_devi_f", "min_devi_f", "avg_devi_f", "devi_e")}}
        if stresses is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stresses[pick].mean(axis=0))
            self.results.update({name: float(getattr(stats, name)[0])
                                 for name in ("max_devi_v", "min_devi_v", "avg_devi_v")})
        missing = [p for p in properties or [] if p not in self.results]
        if missing:
            raise PropertyNotImplementedError(f"{missing} need a structure with a stress (periodic in at least one "
                                              "direction, a cell with a volume); a molecule has none")
