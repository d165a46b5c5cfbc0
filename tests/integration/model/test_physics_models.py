"""The shipped models through mftcalc.testing: models/mft_gap.pt (a fine-tuned checkpoint: force field and gap
head), its TorchScript export written by ``mftcalc export``, and the pretrained force field models/pretrained.pt."""
from __future__ import annotations

from pathlib import Path

import pytest

from mftcalc.cli import main
from mftcalc.testing import CHECKS, check_model, probe_structures

MODELS = Path(__file__).resolve().parents[3] / "models"


def _shipped(name: str) -> Path:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout")
    return path


def _pooled_heads(path: Path) -> set:
    """Heads of a pooled kind (the k-NN applicability score and the interval scaled by it): no additivity rule
    relates a whole to its parts."""
    from mftcalc.model.checkpoint import read_checkpoint
    from mftcalc.testing.subject import POOLED, head_classes
    return {name for name, kind in head_classes(read_checkpoint(path)["metadata"]).items() if kind == POOLED}


def _assert_no_skips_but_pooled_additivity(report, path: Path) -> None:
    pooled = _pooled_heads(path)
    assert all(r.check == "additivity" and r.quantity in pooled for r in report.skips), report.skips


@pytest.mark.parametrize("name", ["mft_gap.pt", "ft_gap.pt"])
def test_shipped_finetuned_checkpoint_passes_every_check(name):
    """MFT's model names its kept force field's dataset for molecules (metadata default_datasets); FT's kept no
    force field worth a default, so its probes name their datasets (the invariances hold for any weights)."""
    path = _shipped(name)
    structures = None
    if name == "ft_gap.pt":
        molecule, crystal = probe_structures()
        structures = [molecule.with_labels(info={"name": "molecule", "dataset": "xtb_qm9"}),
                      crystal.with_labels(info={"name": "crystal", "dataset": "mlearn_si"})]
    report = check_model(path, structures).raise_for_failures()
    _assert_no_skips_but_pooled_additivity(report, path)
    assert {r.check for r in report.results} == set(CHECKS)
    assert report.select("rotation", "crystal", "stress") and report.select("supercell", "crystal 2x2x1", "gap")


def test_torchscript_export_written_by_the_cli_passes_every_check(tmp_path, capsys):
    export = tmp_path / "mft_gap.ts"
    assert main(["export", str(_shipped("mft_gap.pt")), "-o", str(export)]) == 0     # the default float32 file
    assert "portable" in capsys.readouterr().out
    report = check_model(export).raise_for_failures()
    _assert_no_skips_but_pooled_additivity(report, _shipped("mft_gap.pt"))
    assert all("rebuilt from the export" in r.note for r in report.select("export"))


def test_shipped_pretrained_force_field_passes_every_check():
    molecule, crystal = probe_structures()
    structures = [molecule.with_labels(info={"name": "molecule", "dataset": "md17_ethanol"}),
                  crystal.with_labels(info={"name": "crystal", "dataset": "mlearn_si"})]
    report = check_model(_shipped("pretrained.pt"), structures).raise_for_failures()
    assert not report.skips
