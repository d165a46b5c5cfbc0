"""``mftcalc change-bias``: re-reference a model's force-field energies to your own labelled structures (deepmd-kit's
``dp change-bias``): one dataset's per-element energy shift is refitted to the model's energy residuals on them
(least absolute deviations per atom, :func:`mftcalc.model.fitting.refit_forcefield_shift`). Forces, stress,
property heads and the other datasets are unchanged; the result is written as a new checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, List

import numpy as np

from mftcalc.data.structure import Structure


def change_bias(model_path: str, data_paths: List[str], dataset: str, output: str,
                max_structures: int = 5000) -> dict:
    """Refit dataset ``dataset``'s energy shift of ``model_path`` on the energies of ``data_paths`` and write the
    model to ``output``; returns the fit record (also appended to the metadata's ``energy_shift_refits``).

    Raises ``SystemExit`` (status 1) naming the problem and the fix: output equal to the input, a TorchScript or
    unreadable model, an unknown dataset, files without energies, or elements the model never trained on (their
    type embeddings are untrained: a shift cannot make their energies right).
    """
    from ase.data import chemical_symbols
    from mftcalc.cli_evaluate import read_labelled
    from mftcalc.model.checkpoint import CheckpointError, load_model, save_model
    from mftcalc.model.fitting import refit_forcefield_shift
    if Path(output).resolve() == Path(model_path).resolve():
        raise SystemExit(f"{output}: change-bias writes a new checkpoint; give -o another path than the input")
    try:
        model = load_model(model_path, dtype=None)        # as stored: a float64 model stays float64
    except CheckpointError as exc:
        raise SystemExit(str(exc)) from None
    except Exception as exc:                              # a TorchScript export or not a model at all
        raise SystemExit(f"{model_path}: not an mftcalc checkpoint ({type(exc).__name__}); change-bias needs the "
                         ".pt checkpoint, not a TorchScript export") from None
    names = list(model.config.datasets)
    if dataset not in names:
        raise SystemExit(f"{model_path} has no force-field dataset {dataset!r}; its datasets: {', '.join(names)}")
    structures: List[Structure] = []
    for path in data_paths:
        with_energy = [s for s in read_labelled(path) if s.energy is not None]
        if not with_energy:
            raise SystemExit(f"{path}: no structure carries an energy; change-bias fits energies (add them, e.g. "
                             "energy= on each extxyz comment line)")
        structures += with_energy
    known = set(model.metadata.get("elements", []))
    unknown = sorted({int(z) for s in structures for z in np.unique(s.numbers)} - known) if known else []
    if unknown:
        raise SystemExit(f"{', '.join(data_paths)}: elements {', '.join(chemical_symbols[z] for z in unknown)} were "
                         f"never in {model_path}'s training, so their energies are not learnt; a shift cannot "
                         "fix that: fine-tune the force field on them (mftcalc train --init) instead")
    fit = refit_forcefield_shift(model, structures, names.index(dataset), max_structures=max_structures)
    record = {"dataset": dataset, "data": [str(p) for p in data_paths], **fit}
    metadata = dict(model.metadata)
    metadata["energy_shift_refits"] = list(metadata.get("energy_shift_refits", [])) + [record]
    save_model(model, output, metadata)
    print(f"{dataset}: {fit['n']} structures fitted; per-atom energy MAE on them {1000 * fit['mae_before']:.1f} -> "
          f"{1000 * fit['mae_after']:.1f} meV/atom (mean residual before {1000 * fit['mean_before']:+.1f}); "
          f"wrote {output}. These structures were fitted: score the model on others (mftcalc evaluate).")
    return record


def _change_bias(args: argparse.Namespace) -> int:
    change_bias(args.model, args.data, args.dataset, args.output, args.max_structures)
    return 0


def add_change_bias_parser(subparsers: Any) -> None:
    """Register ``change-bias``."""
    p = subparsers.add_parser("change-bias", help="re-reference one dataset's force-field energies to your labelled "
                              "structures (per-element shift, robust fit; forces unchanged), as deepmd-kit's "
                              "dp change-bias")
    p.add_argument("model", help="mftcalc checkpoint (.pt)")
    p.add_argument("data", nargs="+", help="structure files with energies (extxyz, ASE db, DeePMD, ...)")
    p.add_argument("--dataset", required=True, help="the model's force-field dataset to re-reference (mftcalc info "
                   "MODEL lists them)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (not the input)")
    p.add_argument("--max-structures", type=int, default=5000, help="fit on at most this many (seeded draw)")
    p.set_defaults(func=_change_bias)
