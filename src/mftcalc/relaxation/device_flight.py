"""The structures in flight of the on-device optimisers, as padded tensors on the model's device: their model
inputs, the optimiser's coordinates and forces (atoms, or atoms and cell through a cell filter), and structures
joining and leaving, every step's arithmetic batched over all of them (no per-structure host loop).

Slot k holds the engine's k-th structure in flight (:class:`mftcalc.relaxation.flight.InFlight`, kept in the
host-side list ``flights``), with n_k atoms; n_max = max n_k. Every tensor of :attr:`DeviceBatch.t` has one of
four layouts (``LAYOUTS``), float64 unless said:

- ``slot`` [B, ...]: energy [B] eV, cell [B, 3, 3] Å, start cell, deformation gradient, stress [B, 3, 3] eV/Å³,
  pbc, dataset, atom count, and the optimiser's per-structure scalars;
- ``atoms`` [B, n_max, ...]: numbers (int64), Cartesian positions [B, n_max, 3] Å, forces [B, n_max, 3] eV/Å;
  rows n_k.. are zero;
- ``rows`` [B, R, 3]: the optimiser's coordinates ``x`` (Å) and forces ``f`` (eV/Å), R = n_max, or n_max + 3 with a
  cell filter whose 3 cell rows sit at n_max..n_max + 2 (:mod:`mftcalc.relaxation.torch_cell`; the atom rows are
  then positions in the undeformed frame). Padding rows are zero, so sums over rows are per-structure sums;
- ``dofs`` [B, 3R, 3R]: matrices over the flattened rows (BFGS's Hessian, eV/Å²), the identity on padding.

An optimiser rule (:mod:`mftcalc.relaxation.torch_fire`, :mod:`mftcalc.relaxation.torch_bfgs`) declares its own
tensors' layouts, makes them for joining structures (``fresh``) and moves ``x`` of all slots at once (``step``).
Joins and leaves index all tensors together (one ``index_select`` or ``cat`` per tensor); the padding follows
n_max up and down.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from mftcalc import keys as K
from mftcalc.relaxation import torch_cell
from mftcalc.relaxation.cell_filters import Frechet, UnitCell
from mftcalc.relaxation.flight import InFlight

LAYOUTS = ("slot", "atoms", "rows", "dofs")
_OWN = {"numbers": "atoms", "pbc": "slot", "dataset": "slot", "n": "slot", "cell0": "slot", "cell": "slot",
        "grad": "slot", "x": "rows", "positions": "atoms", "pressure": "slot"}
_RESULTS = {"energy": "slot", "forces": "atoms", "stress": "slot", "f": "rows"}


def filter_kind(flight: InFlight) -> Optional[str]:
    """The cell filter around ``flight``'s atoms (``"unitcell"``, ``"frechet"``) or None (fixed cell)."""
    if flight.target is flight.atoms:
        return None
    for kind, cls in (("frechet", Frechet), ("unitcell", UnitCell)):
        if isinstance(flight.target, cls):
            return kind
    raise ValueError(f"the on-device optimisers move atoms or the cell filters of cell_filters.CELL_FILTERS, not "
                     f"{type(flight.target).__name__}")


class DeviceBatch:
    """The padded in-flight batch (module docstring) of one relaxation stream on ``device``, for an optimiser
    ``rule`` (``layouts``, ``fresh(batch, flights)``, ``step(batch)``) and a cell filter ``kind`` (or None)."""

    def __init__(self, device: torch.device, kind: Optional[str], rule: Any) -> None:
        self.device, self.kind, self.rule = torch.device(device), kind, rule
        self.cell_rows = 3 if kind is not None else 0
        self.layout: Dict[str, str] = {**_OWN, **_RESULTS, **rule.layouts}
        self.flights: List[InFlight] = []
        self.n: List[int] = []                   # atoms per slot (host)
        self.n_max = 0
        self.t: Dict[str, torch.Tensor] = {}
        self._static: Dict[str, torch.Tensor] = {}
        self._flat = torch.zeros(0, dtype=torch.int64)

    @property
    def rows(self) -> int:
        """R: rows of the ``rows`` layout."""
        return self.n_max + self.cell_rows

    # ------------------------------------------------------------------------------------------ joins, leaves
    def join(self, flights: Sequence[InFlight]) -> None:
        """Append structures that have no results yet (slots B.. in order), at their input geometries."""
        for f in flights:
            if filter_kind(f) != self.kind:
                raise ValueError("all structures of one on-device relaxation need the same cell filter")
        ns = [f.structure.n_atoms for f in flights]
        n_max = max(self.n + ns)
        if self.flights and n_max != self.n_max:
            self._resize(n_max)
        self.n_max = n_max
        k, dev = len(flights), self.device
        numbers, positions = np.zeros((k, n_max), np.int64), np.zeros((k, n_max, 3))
        for j, f in enumerate(flights):          # admission: each joining structure's arrays copied once
            numbers[j, :ns[j]] = f.structure.numbers
            positions[j, :ns[j]] = f.structure.positions
        new = {"numbers": torch.from_numpy(numbers).to(dev),
               "positions": torch.from_numpy(positions).to(dev),
               "pbc": torch.from_numpy(np.stack([f.structure.pbc for f in flights])).to(dev),
               "dataset": torch.tensor([f.dataset for f in flights], dtype=torch.int64, device=dev),
               "n": torch.tensor(ns, dtype=torch.float64, device=dev),
               "pressure": torch.tensor([float(getattr(f.target, "scalar_pressure", 0.0)) for f in flights],
                                        dtype=torch.float64, device=dev),
               "cell0": torch.from_numpy(np.stack([f.structure.cell for f in flights]).astype(np.float64)).to(dev)}
        new["cell"] = new["cell0"].clone()
        new["grad"] = torch.eye(3, dtype=torch.float64, device=dev).expand(k, 3, 3).clone()
        x = new["positions"]
        if self.kind is not None:
            x = torch.cat([x, torch_cell.start_rows(self.kind, new["n"])], dim=1)
        new["x"] = x
        new.update(self.rule.fresh(self, flights))
        for name in _RESULTS:                    # results come with the next evaluation
            self.t.pop(name, None)
        for name, value in new.items():
            self.t[name] = torch.cat([self.t[name], value]) if self.flights else value
        self.flights += list(flights)
        self.n += ns
        self._index()

    def leave(self, keep: Sequence[InFlight]) -> None:
        """Keep only the structures ``keep`` (a subsequence of :attr:`flights`, in order)."""
        if len(keep) == len(self.flights):
            return
        kept = {id(f) for f in keep}
        slots = [k for k, f in enumerate(self.flights) if id(f) in kept]
        if len(slots) != len(keep):
            raise RuntimeError("structures to keep that are not in the on-device batch")
        index = torch.tensor(slots, dtype=torch.int64, device=self.device)
        self.t = {name: value.index_select(0, index) for name, value in self.t.items()}
        self.flights = [self.flights[k] for k in slots]
        self.n = [self.n[k] for k in slots]
        if self.n and max(self.n) != self.n_max:
            self._resize(max(self.n))
        self._index()

    def _resize(self, n_max: int) -> None:
        """Pad (or unpad) every tensor to ``n_max`` atoms, moving the cell rows along."""
        common, c = min(n_max, self.n_max), self.cell_rows
        src = torch.cat([torch.arange(common), self.n_max + torch.arange(c)]).to(self.device)
        dst = torch.cat([torch.arange(common), n_max + torch.arange(c)]).to(self.device)
        for name, value in self.t.items():
            layout = self.layout[name]
            if layout == "slot":
                continue
            b = value.shape[0]
            if layout == "atoms":
                out = value.new_zeros((b, n_max) + tuple(value.shape[2:]))
                out[:, :common] = value[:, :common]
            elif layout == "rows":
                out = value.new_zeros(b, n_max + c, 3)
                out[:, dst] = value[:, src]
            else:
                d = 3 * (n_max + c)
                dof_src = (3 * src[:, None] + torch.arange(3, device=self.device)).reshape(-1)
                dof_dst = (3 * dst[:, None] + torch.arange(3, device=self.device)).reshape(-1)
                out = torch.eye(d, dtype=value.dtype, device=self.device).repeat(b, 1, 1)
                out[:, dof_dst[:, None], dof_dst[None, :]] = value[:, dof_src[:, None], dof_src[None, :]]
            self.t[name] = out
        self.n_max = n_max

    def _index(self) -> None:
        """The flat atom index [N] into [B · n_max] and the model's membership inputs, after a join or leave."""
        n = np.asarray(self.n, dtype=np.int64)
        starts = np.repeat(np.cumsum(n) - n, n)
        flat = np.repeat(np.arange(len(n)) * self.n_max, n) + np.arange(n.sum()) - starts
        self._flat = torch.from_numpy(flat).to(self.device)
        self._static = {K.NUMBERS: self.t["numbers"].reshape(-1).index_select(0, self._flat),
                        K.BATCH: torch.from_numpy(np.repeat(np.arange(len(n)), n)).to(self.device),
                        K.PBC: self.t["pbc"], K.N_ATOMS: torch.from_numpy(n).to(self.device),
                        K.DATASET: self.t["dataset"]}

    # -------------------------------------------------------------------------------------------- each step
    def inputs(self, flights: Sequence[InFlight], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
        """The model's batch (``mftcalc.data.batch.collate``'s fields) of the structures in flight, which must be
        :attr:`flights` in order; cell in ``dtype``, positions float64."""
        if len(flights) != len(self.flights) or any(a is not b for a, b in zip(flights, self.flights)):
            raise RuntimeError("the engine's structures in flight are not the on-device batch's slots")
        positions = self.t["positions"].reshape(-1, 3).index_select(0, self._flat)
        return {**self._static, K.POSITIONS: positions, K.CELL: self.t["cell"].to(dtype)}

    def receive(self, energy: torch.Tensor, forces: torch.Tensor, stress: Optional[torch.Tensor]) -> torch.Tensor:
        """The model's results (``energy`` [B] eV, ``forces`` [N, 3] eV/Å, ``stress`` [B, 3, 3] eV/Å³ or None) at
        the current geometries; sets the optimiser's forces ``f`` and returns fmax [B] eV/Å, the largest row norm of
        ``f`` (with a cell filter also over its cell rows, as ASE's optimisers measure it)."""
        b = len(self.flights)
        padded = torch.zeros(b * self.n_max, 3, dtype=torch.float64, device=self.device)
        padded.index_copy_(0, self._flat, forces.detach().to(torch.float64))
        t = self.t
        t["energy"] = energy.detach().to(torch.float64)
        t["forces"] = padded.view(b, self.n_max, 3)
        if self.kind is None:
            t["f"] = t["forces"]
        else:
            if stress is None:
                raise ValueError("a cell filter needs the model's stress")
            t["stress"] = stress.detach().to(torch.float64)
            atom_f, cell_f = torch_cell.generalised_forces(self.kind, t["forces"], t["stress"], t["cell"],
                                                           t["grad"], t["x"][:, self.n_max:], t["n"],
                                                           t["pressure"])
            t["f"] = torch.cat([atom_f, cell_f], dim=1)
        return torch.sqrt((t["f"] * t["f"]).sum(-1)).amax(1)

    def move(self, x: torch.Tensor) -> None:
        """New coordinates ``x`` [B, R, 3] of all slots: the positions and cells they stand for."""
        t = self.t
        t["x"] = x
        if self.kind is None:
            t["positions"] = x
            return
        grad = torch_cell.deformation(self.kind, x[:, self.n_max:], t["n"])
        t["grad"] = grad
        t["positions"] = x[:, :self.n_max] @ grad.transpose(1, 2)
        t["cell"] = t["cell0"] @ grad.transpose(1, 2)

    def settle(self, leaving: Sequence[InFlight]) -> None:
        """Write the geometry and results of the structures ``leaving`` into their ``InFlight`` (atoms positions
        and cell, :class:`mftcalc.relaxation.flight.ModelResults`), one transfer to the host for all of them."""
        if not leaving:
            return
        slot = {id(f): k for k, f in enumerate(self.flights)}
        slots = [slot[id(f)] for f in leaving]
        index = torch.tensor(slots, dtype=torch.int64, device=self.device)
        host = {name: self.t[name].index_select(0, index).cpu().numpy()
                for name in ("positions", "cell", "energy", "forces") + (("stress",) if self.kind else ())}
        for j, (f, k) in enumerate(zip(leaving, slots)):
            n = self.n[k]
            f.atoms.set_cell(host["cell"][j])
            f.atoms.positions = host["positions"][j, :n]
            f.results.set(host["energy"][j], host["forces"][j, :n].copy(),
                          host["stress"][j] if self.kind else None)
