"""The example scripts of ``examples/`` that need trained weights, run with the shipped model."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[3]


def test_molecule_vibrations_example_finds_a_minimum_with_the_shipped_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["molecule_vibrations.py"])           # default: models/mft_gap.pt
    runpy.run_path(str(REPO / "examples" / "molecule_vibrations.py"), run_name="__main__")
    out = capsys.readouterr().out
    # ethanol relaxed by the shipped force field: a minimum, so 21 real vibrations and no imaginary one
    assert "21 vibrations" in out and "imaginary: 0;" in out
    assert "gap: " in out and "Hartree" in out
    zpe = float(out.split("zero-point energy ")[1].split(" eV")[0])
    assert 1.5 < zpe < 2.5, "ethanol's zero-point energy is about 2.1 eV (49 kcal/mol); the model gave " + str(zpe)
