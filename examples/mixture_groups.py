"""Write a made-up group-property data set: mixtures of 1-3 small molecules, one label per mixture.

Usage: python examples/mixture_groups.py [OUT_DIR] (default: mixtures/). Writes ``train.extxyz`` (160 mixtures) and
``test.extxyz`` (40). Every molecule of a mixture is one frame; its comment line carries ``group`` (the mixture),
``weight`` (its mole fraction) and ``cp`` (the mixture's label, the same on each of its frames). The label is
synthetic, for showing the workflow only: the mole-fraction-weighted mean of a per-molecule value
(250 K + 10 K × its index in ``NAMES``) plus a non-ideal term 20 K · Σ x².

Then::

    mftcalc finetune --data mixtures/train.extxyz --test mixtures/test.extxyz --property cp --unit K \\
        --group-key group -o mixtures/cp.pt
    mftcalc predict mixtures/cp.pt mixtures/test.extxyz --group-key group --out mixtures/test_groups.csv
"""
import sys
from pathlib import Path

import numpy as np
from ase.build import molecule
from ase.io import write

NAMES = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "HCN", "C2H4", "CO2"]


def mixture_frames(n: int, seed: int = 0, prefix: str = "mix") -> list:
    """ASE frames of ``n`` mixtures (``info``: group, weight, cp in K), each molecule rattled by 0.02 Å."""
    rng = np.random.default_rng(seed)
    frames = []
    for g in range(n):
        picks = rng.choice(len(NAMES), int(rng.integers(1, 4)), replace=False)
        x = rng.dirichlet(np.ones(len(picks)))
        label = float(np.sum(x * (250.0 + 10.0 * picks)) + 20.0 * np.sum(x * x))
        for p, xi in zip(picks, x):
            atoms = molecule(NAMES[p])
            atoms.rattle(0.02, seed=int(rng.integers(1_000_000)))
            atoms.info.update(group=f"{prefix}{g}", weight=float(xi), cp=label)
            frames.append(atoms)
    return frames


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "mixtures")
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.extxyz", mixture_frames(160, seed=0, prefix="train"))
    write(out / "test.extxyz", mixture_frames(40, seed=1, prefix="test"))
    print(f"wrote {out / 'train.extxyz'} (160 mixtures) and {out / 'test.extxyz'} (40)")
