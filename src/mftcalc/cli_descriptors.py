"""``mftcalc descriptors``: the model's backbone descriptors of a structure file, for the user's own models (e.g. a
scikit-learn regressor) and maps (:mod:`mftcalc.analysis.descriptors`)."""
from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence


def run_descriptors(model: str, input_path: str, out: str, pool: str = "mean", plot: Optional[str] = None,
                    color_by: Optional[str] = None, dtype: str = "float32", device: str = "auto",
                    properties: Optional[Sequence[str]] = None, units: Optional[Sequence[str]] = None) -> Any:
    """Compute, write and (``plot``) map the descriptors; print what was written. Returns the ``Descriptors``.

    Labels kept beside them: the properties the file declares (``property_units``, as ``mftcalc`` writes them) and
    the info keys ``properties`` (units ``units``, one per name, when given).

    Raises ``SystemExit`` (status 1) naming the problem and the fix for an unreadable input, an unknown output
    suffix or ``--color-by`` label; structures the model cannot take raise ``ValueError`` naming the structure.
    """
    from mftcalc.analysis.descriptors import FORMATS, compute_descriptors, plot_descriptor_map, write_descriptors
    from mftcalc.cli_evaluate import read_input
    from mftcalc.cli_model import DTYPES
    if not out.lower().endswith(FORMATS):
        raise SystemExit(f"--out {out}: descriptors are written as {', '.join(FORMATS)} (.npz keeps the formulas, "
                         "labels and the model's record with them); give a name ending in one")
    if units and len(units) != len(properties or []):
        raise SystemExit(f"--unit gives {len(units)} units for {len(properties or [])} --property names; give one "
                         "unit per name, in the same order, or none")
    spec = dict(zip(properties, units or [""] * len(properties))) if properties else None
    structures = read_input(input_path, spec)
    labels = sorted({name for s in structures for name in s.properties})
    if color_by is not None and color_by not in labels:
        raise SystemExit(f"--color-by {color_by}: {input_path} carries no {color_by!r} label; its labels: "
                         f"{', '.join(labels) or 'none'}")
    desc = compute_descriptors(model, structures, pool=pool, device=device, dtype=DTYPES[dtype],
                               progress=len(structures) > 2000)
    write_descriptors(desc, out)
    kind = "atom" if pool == "atoms" else "structure"
    rows = f"{len(desc.values):,} {kind}{'' if len(desc.values) == 1 else 's'}"
    print(f"wrote {out}: {rows} × {desc.values.shape[1]} backbone features ({pool} of the node features; "
          f"labels kept: {', '.join(desc.labels) or 'none'})")
    if plot:
        color = color_by if color_by is not None else (labels[0] if len(labels) == 1 else None)
        ratio = plot_descriptor_map(desc, plot, color)["explained_variance_ratio"]
        print(f"wrote {plot}: principal-component map coloured by {color or 'chemical system'} "
              f"(PC1 {100 * ratio[0]:.0f} %, PC2 {100 * ratio[1]:.0f} % of the variance)")
    return desc


def _descriptors(args: argparse.Namespace) -> int:
    run_descriptors(args.model, args.input, args.out, args.pool, args.plot, args.color_by, args.dtype, args.device,
                    args.property, args.unit)
    return 0


def add_descriptors_parser(subparsers: Any) -> None:
    """Register ``descriptors``."""
    from mftcalc.analysis.descriptors import POOLS
    p = subparsers.add_parser(
        "descriptors", help="backbone descriptors of structures (pooled per structure or per atom) to .npz/.npy/.csv, "
        "with a principal-component map, for your own models")
    p.add_argument("model", help="checkpoint (.pt) or TorchScript export")
    p.add_argument("input", help="structures: extxyz, ASE db, DeePMD dir, any ASE-readable file")
    p.add_argument("--out", required=True, help=".npz (descriptors with formula, n_atoms, numbers, y_<label> and the "
                   "model's record), .npy (the array alone) or .csv (one row per structure or atom)")
    p.add_argument("--pool", choices=POOLS, default="mean",
                   help="mean or sum of the node features per structure, or atoms: one row per atom")
    p.add_argument("--plot", default=None, help="also draw a 2-D principal-component map to this image (e.g. map.png)")
    p.add_argument("--color-by", default=None, help="label of the input to colour the map by (default: the input's "
                   "only label if it has one, else the chemical system)")
    p.add_argument("--property", nargs="+", default=None, help="info keys of the input to keep as labels beside "
                   "the descriptors (y_<name> in .npz, a column in .csv), e.g. gap; keys the file declares in "
                   "property_units are kept without this")
    p.add_argument("--unit", nargs="+", default=None, help="the unit of each --property, in order (e.g. Hartree)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="floating-point precision of the model")
    p.set_defaults(func=_descriptors)
