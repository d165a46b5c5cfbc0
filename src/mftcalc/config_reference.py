"""The configuration reference, ``docs/config.md``, generated from the schema dataclasses of every YAML config.

    python -m mftcalc.config_reference > docs/config.md      # regenerate after changing a config dataclass
    python -m mftcalc.config_reference --check docs/config.md   # exit 1 when the committed file is stale

Each key's type, default and help come from the dataclass fields (:func:`mftcalc.schema.option`), so the reference
cannot drift from what the loader (:mod:`mftcalc.schema`) accepts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from mftcalc.experiments.config import BenchConfig, FinetuneConfig
from mftcalc.schema import reference_markdown
from mftcalc.training.pretrain import PretrainConfig

SECTIONS = (("`mftcalc train CONFIG.yaml`: pretraining", PretrainConfig),
            ("`mftcalc finetune CONFIG.yaml`: one fine-tuning run", FinetuneConfig),
            ("`mftcalc bench CONFIG.yaml`: a grid of fine-tuning runs", BenchConfig))

PREAMBLE = """
Generated from the config dataclasses by `python -m mftcalc.config_reference > docs/config.md`; do not edit by
hand (tests/unit/test_schema.py checks that this file is current).

Every config is YAML, loaded strictly by `mftcalc.schema`: an unknown key is refused with the closest known one
("did you mean"), a value of the wrong type is refused naming its key, and numbers written as strings (`1e-3`) are
converted. `--set KEY=VALUE` overrides any key before loading, dotted for nested keys and list items
(`--set settings.steps=500 tasks.0.property=homo variants.mft_fast.settings.model_prob=0.7`); the value is read as
YAML. A bench grid is validated whole (every task, fraction, strategy, variant and force-field data spec) before
any data is read. Lengths are in Å, energies in eV, forces in eV/Å.

`base: OTHER.yaml` (a path relative to the config's own folder) makes a config a variant of another: OTHER's keys,
with this file's keys on top. A mapping in both (`backbone`, `settings`) is merged key by key; any other value,
lists included (`datasets`), replaces OTHER's whole. Bases may chain; a missing base or a cycle is refused.
Paths inside a config (`init`, dataset paths) stay relative to the working directory, as without `base`.
"""


def reference() -> str:
    """The Markdown text of ``docs/config.md``."""
    return reference_markdown(SECTIONS, PREAMBLE)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mftcalc.config_reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", metavar="FILE", help="compare with FILE instead of printing; exit 1 if it differs")
    args = parser.parse_args(argv)
    text = reference()
    if args.check:
        if Path(args.check).read_text() != text:
            print(f"{args.check} is stale; regenerate it: python -m mftcalc.config_reference > {args.check}",
                  file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
