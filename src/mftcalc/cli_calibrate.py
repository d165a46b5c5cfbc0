"""``mftcalc calibrate``: give a fine-tuned model a prediction interval for one of its properties, calibrated on
labelled structures it was not trained on (split-conformal, scaled by its ``ood_score``;
:mod:`mftcalc.model.intervals`). ``mftcalc finetune`` does this on its validation set; this command adds or
recalibrates the interval of an existing checkpoint, on data of the user's choosing."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional


def calibrate(model_path: str, data_paths: List[str], prop: str, output: str, coverage: float = 0.9,
              score: str = "ood_score", name: Optional[str] = None) -> Dict[str, Any]:
    """Add the interval head of ``prop`` to ``model_path``, calibrated on the ``prop`` labels of ``data_paths``,
    and write the model to ``output``; returns the calibration record (also in the metadata of the head).

    Raises ``SystemExit`` (status 1) naming the problem and the fix: output equal to the input, files without
    ``prop`` labels, too few of them for the coverage, or a model without the property or the applicability head.
    """
    from mftcalc.cli_evaluate import read_labelled
    from mftcalc.model.checkpoint import load_model, save_model
    from mftcalc.model.intervals import calibrate_interval
    if Path(output).resolve() == Path(model_path).resolve():
        raise SystemExit(f"{output}: calibrate writes a new checkpoint; give -o another path than the input")
    if not 0.0 < coverage < 1.0:
        raise SystemExit(f"--coverage must lie in (0, 1), e.g. 0.9 for a 90 % interval; got {coverage}")
    model = load_model(model_path, dtype=None)              # as stored: a float64 model stays float64
    structures = []
    for path in data_paths:
        labelled = [s for s in read_labelled(path) if prop in s.properties]
        if not labelled:
            raise SystemExit(f"{path}: no structure carries a {prop!r} label; calibration compares the model's "
                             f"{prop} with labels (a {prop}= key on each extxyz comment line)")
        structures += labelled
    metadata = dict(model.metadata)
    metadata["heads"] = dict(metadata.get("heads", {}))
    try:
        record = calibrate_interval(model, structures, prop, coverage, score, name,
                                    source=", ".join(str(p) for p in data_paths), metadata=metadata)
    except (KeyError, ValueError) as exc:
        raise SystemExit(f"{model_path}: {exc.args[0] if exc.args else exc}") from None
    save_model(model, output, metadata)
    unit = metadata["heads"][record["name"]]["unit"]
    print(f"{record['name']}: {prop} ± {record['name']} holds the true value with probability {coverage:g} for "
          f"structures like these {record['n_calibration']:,} ({record['n_unscored']} left out: an element its "
          f"property training data lacked, ood_score inf); half-width {record['q']:.4g} {unit} × {score} (median "
          f"{record['median_half_width']:.4g} {unit} on them); wrote {output}. Score it on other labelled structures "
          "with mftcalc evaluate.")
    return record


def _calibrate(args: argparse.Namespace) -> int:
    calibrate(args.model, args.data, args.property, args.output, args.coverage, args.score, args.name)
    return 0


def add_calibrate_parser(subparsers: Any) -> None:
    """Register ``calibrate``."""
    p = subparsers.add_parser("calibrate", help="add a prediction interval for a property to a fine-tuned model "
                              "(split-conformal on labelled structures it was not trained on, scaled by ood_score)")
    p.add_argument("model", help="fine-tuned mftcalc checkpoint (.pt) with the property and the ood_score head")
    p.add_argument("data", nargs="+", help="labelled structure files (extxyz, ASE db, ...) not used in training")
    p.add_argument("--property", required=True, help="the property head to bound, e.g. gap")
    p.add_argument("--coverage", type=float, default=0.9, help="probability that the interval holds the true value")
    p.add_argument("--score", default="ood_score", help="the applicability head that scales the interval")
    p.add_argument("--name", default=None, help="name of the interval head (default: <property>_pi<percent>)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (not the input)")
    p.set_defaults(func=_calibrate)
