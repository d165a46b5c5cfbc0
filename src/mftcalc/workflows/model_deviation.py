"""Model deviation of a committee of force fields: deepmd-kit's ``dp model-devi``, DP-GEN's error indicator.

Several models trained on the same data from different starts (seeds, or fine-tunes of one prior) agree where
the data taught them and disagree where it did not; the spread of their forces flags the structures worth
labelling next (concurrent / active learning). Definitions as deepmd-kit's (its ``doc/test/model-deviation.md``),
over the committee's K models, ⟨·⟩ their mean:

- force deviation of atom i: ε_F,i = sqrt(⟨‖F_i,k − ⟨F_i⟩‖²⟩) (eV/Å); per frame its maximum, minimum and mean
  over the atoms (``max_devi_f`` — the indicator DP-GEN selects on —, ``min_devi_f``, ``avg_devi_f``);
- virial deviation: the standard deviation over the models of each component of the virial per atom,
  Ξ/N = −σ·V/N (eV/atom; σ the stress, ASE sign), per frame its maximum, minimum and root-mean-square over the
  nine components (``max_devi_v``, ``min_devi_v``, ``avg_devi_v`` = ‖ε_Ξ‖/3); NaN for a structure without a
  stress (a molecule: :attr:`mftcalc.data.Structure.stress_defined`);
- energy deviation: the standard deviation over the models of the energy per atom (``devi_e``, eV/atom);
- relative force deviation (``relative=l``): ε_F,i / (‖⟨F_i⟩‖ + l), unitless; the same for the virial
  (``relative_v``), component by component.

Standard deviations are population ones (ddof 0), as deepmd-kit's ``np.std``. Where the frames carry reference
forces (a labelled file), the committee mean's error is reported beside its deviation (``max_error_f``: the
largest ‖⟨F_i⟩ − F_i,ref‖), so the indicator can be checked on the user's own data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

#: deepmd-kit's ``model_devi.out`` columns after ``step``, in its order
OUT_COLUMNS = ("max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f", "devi_e")


@dataclass
class ModelDeviation:
    """The committee statistics of ``n_frames`` structures (arrays [n_frames]; units in the module docstring).

    ``atomic_devi_f``: per structure, ε_F,i of its atoms ([n_atoms_k], eV/Å, or unitless when ``relative``).
    ``max_error_f``: [n_frames] eV/Å, the committee mean's largest force error per frame, NaN where a frame has no
    reference forces. ``datasets``: per model, the force-field dataset used for each frame (its name).
    """
    max_devi_f: np.ndarray
    min_devi_f: np.ndarray
    avg_devi_f: np.ndarray
    max_devi_v: np.ndarray
    min_devi_v: np.ndarray
    avg_devi_v: np.ndarray
    devi_e: np.ndarray
    max_error_f: np.ndarray
    atomic_devi_f: List[np.ndarray]
    datasets: List[List[str]] = field(default_factory=list)
    relative: Optional[float] = None
    relative_v: Optional[float] = None

    def __len__(self) -> int:
        return len(self.max_devi_f)

    def table(self) -> np.ndarray:
        """[n_frames, 7]: the columns of :data:`OUT_COLUMNS`, in deepmd-kit's order."""
        return np.stack([getattr(self, c) for c in OUT_COLUMNS], axis=1)


def force_deviation(forces: np.ndarray, relative: Optional[float] = None) -> np.ndarray:
    """ε_F,i of one structure: ``forces`` [K, n, 3] eV/Å of K models → [n] (eV/Å, or unitless with ``relative``:
    divided by ‖⟨F_i⟩‖ + relative)."""
    mean = forces.mean(axis=0)
    devi = np.sqrt(((forces - mean) ** 2).sum(axis=-1).mean(axis=0))
    if relative is not None:
        devi = devi / (np.linalg.norm(mean, axis=-1) + relative)
    return devi


def virial_deviation(virials: np.ndarray, relative: Optional[float] = None) -> np.ndarray:
    """The nine component deviations of one structure: ``virials`` [K, 3, 3] (eV/atom) → [9] (or relative: each
    divided by |⟨Ξ_αβ⟩| + relative)."""
    flat = virials.reshape(len(virials), 9)
    devi = flat.std(axis=0)
    if relative is not None:
        devi = devi / (np.abs(flat.mean(axis=0)) + relative)
    return devi


def deviation_statistics(energies: np.ndarray, forces: Sequence[np.ndarray], stresses: Sequence[Optional[np.ndarray]],
                         structures: Sequence[Any], relative: Optional[float] = None,
                         relative_v: Optional[float] = None) -> ModelDeviation:
    """The committee statistics from the models' predictions: ``energies`` [K, F] eV; ``forces[j]`` [K, n_j, 3]
    eV/Å; ``stresses[j]`` [K, 3, 3] eV/Å³ (ASE sign) or None; ``structures`` the F structures (their atom counts,
    cell volumes and reference forces)."""
    n_frames = len(structures)
    nan = np.full(n_frames, np.nan)
    out = {c: nan.copy() for c in OUT_COLUMNS}
    max_error = nan.copy()
    atomic = []
    for j, s in enumerate(structures):
        n = s.n_atoms
        devi_f = force_deviation(np.asarray(forces[j]), relative)
        atomic.append(devi_f)
        out["max_devi_f"][j], out["min_devi_f"][j], out["avg_devi_f"][j] = devi_f.max(), devi_f.min(), devi_f.mean()
        out["devi_e"][j] = np.std(np.asarray(energies)[:, j] / n)
        if stresses[j] is not None:
            virials = -np.asarray(stresses[j]) * abs(np.linalg.det(s.cell)) / n
            devi_v = virial_deviation(virials, relative_v)
            out["max_devi_v"][j], out["min_devi_v"][j] = devi_v.max(), devi_v.min()
            out["avg_devi_v"][j] = np.linalg.norm(devi_v) / 3
        if s.forces is not None:
            max_error[j] = np.linalg.norm(np.asarray(forces[j]).mean(axis=0) - s.forces, axis=-1).max()
    return ModelDeviation(**out, max_error_f=max_error, atomic_devi_f=atomic, relative=relative,
                          relative_v=relative_v)


def check_committee(models: Sequence[Any], relative: Optional[float], relative_v: Optional[float]) -> None:
    """Refuse, naming the fix, a committee of fewer than two models or a negative/non-finite relative level."""
    if len(models) < 2:
        raise ValueError(f"model deviation needs a committee of at least two models, got {len(models)}; give the "
                         "models trained from different seeds (deepmd-kit's graph.000.pb ... graph.003.pb)")
    for name, level in (("relative", relative), ("relative_v", relative_v)):
        if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float, np.floating))
                                  or not np.isfinite(level) or level <= 0):
            raise ValueError(f"{name}={level!r}: the relative deviation's level l (ε / (|F| + l)) must be a positive "
                             "number in the quantity's unit (eV/Å for forces, eV/atom for the virial), e.g. 1.0")


def model_deviation(structures: Sequence[Any], models: Sequence[Any], dataset: Optional[str] = None,
                    relative: Optional[float] = None, relative_v: Optional[float] = None, device: str = "cpu",
                    dtype: Any = None, max_atoms: int = 4096, progress: bool = False) -> ModelDeviation:
    """Model deviation of ``structures`` (Structures, ASE Atoms or pymatgen objects) under the committee
    ``models`` (paths or models with a force-field head; at least two).

    Each model predicts every structure (:func:`mftcalc.calculators.predict.predict`, batched, with its checks:
    elements, overlapping atoms, dataset); ``dataset`` names one force-field dataset for all models and
    structures, default each model's rule per structure. A model without a force field is refused by name."""
    import torch

    from mftcalc.calculators.inputs import as_structures
    from mftcalc.calculators.model_handle import ModelHandle
    from mftcalc.calculators.predict import predict
    check_committee(models, relative, relative_v)
    structures = as_structures(structures, "model_deviation")
    energies, forces, stresses, datasets = [], [], [], []
    for k, model in enumerate(models):
        try:
            handle = ModelHandle.load(model, device, dtype or torch.float32, dataset=dataset)
        except (ValueError, KeyError) as exc:           # e.g. a --dataset this member does not have
            raise ValueError(f"model {k} ({model}): {exc.args[0] if exc.args else exc}") from exc
        if not handle.forcefield_heads:
            raise ValueError(f"model {k} ({model}) has no force-field head (a property-only model, e.g. an LP or "
                             "frozen-sklearn fine-tune): a committee's deviation is over forces; give force fields")
        try:
            rows = predict(structures, handle, properties=[], max_atoms=max_atoms, forces=True, stress=True,
                           progress=progress)
        except ValueError as exc:                       # a structure this member cannot compute: name the member
            raise ValueError(f"model {k} ({model}): {exc}") from exc
        energies.append([r["energy"] for r in rows])
        forces.append([r["forces"] for r in rows])
        stresses.append([r.get("stress") for r in rows])
        datasets.append([handle.dataset_names[handle.dataset_index(s)] for s in structures])
    per_frame_forces = [np.stack([forces[k][j] for k in range(len(models))]) for j in range(len(structures))]
    per_frame_stress = [None if stresses[0][j] is None else np.stack([stresses[k][j] for k in range(len(models))])
                        for j in range(len(structures))]
    result = deviation_statistics(np.asarray(energies), per_frame_forces, per_frame_stress, structures, relative,
                                  relative_v)
    result.datasets = datasets
    return result


def out_text(result: ModelDeviation, frequency: int = 1, header: str = "") -> str:
    """deepmd-kit's ``model_devi.out`` (what DP-GEN reads): a ``#`` header naming ``step`` and the seven columns,
    then one row per frame, ``step`` = frame index × ``frequency``; a frame without a stress has ``nan`` virial
    columns."""
    import io
    steps = np.arange(len(result)) * frequency
    head = "%10s" % "step" + "".join("%19s" % c for c in OUT_COLUMNS)
    buffer = io.StringIO()
    np.savetxt(buffer, np.column_stack([steps, result.table()]), fmt=["%12d"] + ["%19.6e"] * 7, delimiter="",
               header=(header + "\n" if header else "") + head)
    return buffer.getvalue()


def csv_rows(result: ModelDeviation, structures: Sequence[Any], formulas: Sequence[str]) -> List[Dict[str, str]]:
    """One row per structure with unit-suffixed columns (:func:`csv_columns`); empty cells where a quantity has no
    value (no stress, no reference forces)."""
    columns = csv_columns(result)
    rows = []
    for j, s in enumerate(structures):
        values = [result.max_devi_f[j], result.min_devi_f[j], result.avg_devi_f[j], result.max_devi_v[j],
                  result.min_devi_v[j], result.avg_devi_v[j], result.devi_e[j], result.max_error_f[j]]
        row = {"index": str(j), "formula": formulas[j], "n_atoms": str(s.n_atoms),
               "dataset": "|".join(sorted({d[j] for d in result.datasets}))}
        row.update({c: ("" if not np.isfinite(v) else f"{v:.6e}") for c, v in zip(columns[4:], values)})
        rows.append(row)
    return rows


def csv_columns(result: ModelDeviation) -> List[str]:
    """The CSV columns: index, formula, n_atoms, dataset, then the deviations with their units (``_rel`` when
    relative, unitless) and ``max_error_f_eV_per_A``."""
    f_unit = "rel" if result.relative is not None else "eV_per_A"
    v_unit = "rel" if result.relative_v is not None else "eV_per_atom"
    return (["index", "formula", "n_atoms", "dataset"]
            + [f"{s}_devi_f_{f_unit}" for s in ("max", "min", "avg")]
            + [f"{s}_devi_v_{v_unit}" for s in ("max", "min", "avg")]
            + ["devi_e_eV_per_atom", "max_error_f_eV_per_A"])


def summary_counts(result: ModelDeviation, trust_lo: Optional[float], trust_hi: Optional[float]) -> Dict[str, int]:
    """DP-GEN's three classes by ``max_devi_f``: accurate (< ``trust_lo``), candidate (between, to label next) and
    failed (≥ ``trust_hi``); empty when no bounds are given."""
    if trust_lo is None or trust_hi is None:
        return {}
    devi = result.max_devi_f
    return {"accurate": int((devi < trust_lo).sum()), "candidate": int(((devi >= trust_lo) & (devi < trust_hi)).sum()),
            "failed": int((devi >= trust_hi).sum())}
