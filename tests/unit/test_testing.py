"""The physics checker itself (mftcalc.testing): it passes the tiny model and fails each deliberately broken copy
of it in the check that the fault breaks, so no check can pass vacuously."""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np
import pytest
import torch
from torch import Tensor

from _helpers import TINY_DOMAINS, make_tiny_model
from mftcalc import keys as K
from mftcalc.model.checkpoint import model_metadata
from mftcalc.model.mft_model import MFTModel
from mftcalc.testing import CHECKS, ModelCheckFailed, check_model

Fault = Callable[[Dict[str, Tensor], Dict[str, Tensor]], Dict[str, Tensor]]


def _tiny() -> MFTModel:
    model = make_tiny_model()
    model.metadata = model_metadata(model, elements=[1, 6, 7, 8, 14], dataset_domains=TINY_DOMAINS)
    return model


class Broken(torch.nn.Module):
    """The tiny model with a fault applied to its outputs (same call signature, cutoffs and metadata)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__()
        self.inner = _tiny()
        self.fault = fault
        self.metadata = self.inner.metadata
        self.e_rcut, self.a_rcut = self.inner.e_rcut, self.inner.a_rcut

    def forward(self, data: Dict[str, Tensor], compute_forces: bool = True, compute_stress: bool = True,
                compute_properties: bool = True, features: bool = False) -> Dict[str, Tensor]:
        out = dict(self.inner(data, compute_forces, compute_stress, compute_properties, features))
        return self.fault(data, out)


def _per_structure(data: Dict[str, Tensor], values: Tensor) -> Tensor:
    """Per-atom values [N] summed per structure [B] (float64)."""
    n = data[K.CELL].shape[0]
    return torch.zeros(n, dtype=torch.float64).index_add_(0, data[K.BATCH], values.to(torch.float64))


def _pairs(data: Dict[str, Tensor]):
    """Atom pairs i < j of the same non-periodic structure: (i, j, vector r_j − r_i [P, 3], distance [P])."""
    pos, batch = data[K.POSITIONS].to(torch.float64), data[K.BATCH]
    i, j = torch.triu_indices(len(pos), len(pos), 1)
    keep = (batch[i] == batch[j]) & ~data[K.PBC].any(1)[batch[i]]
    i, j = i[keep], j[keep]
    vec = pos[j] - pos[i]
    return i, j, vec, vec.norm(dim=1)


def wrong_force_sign(data, out):
    if K.FORCES in out:
        out[K.FORCES] = -out[K.FORCES]
    return out


def absolute_position_energy(data, out):
    """E += c Σ x_i (of the raw input positions), with its consistent force −c x̂: translation breaks."""
    c = 0.01
    out[K.ENERGY] = out[K.ENERGY] + c * _per_structure(data, data[K.POSITIONS][:, 0])
    if K.FORCES in out:
        out[K.FORCES] = out[K.FORCES] - torch.tensor([c, 0.0, 0.0], dtype=out[K.FORCES].dtype)
    return out


def orientation_energy(data, out):
    """E += c Σ (x_i − x̄)² for molecules, with its forces: translation invariant, not rotation invariant, so the
    net force vanishes and the net torque does not."""
    c = 0.01
    pos, batch = data[K.POSITIONS].to(torch.float64), data[K.BATCH]
    counts = data[K.N_ATOMS].to(torch.float64)
    mean_x = _per_structure(data, pos[:, 0]) / counts
    dx = (pos[:, 0] - mean_x[batch]) * (~data[K.PBC].any(1))[batch]
    out[K.ENERGY] = out[K.ENERGY] + c * _per_structure(data, dx * dx)
    if K.FORCES in out:
        extra = torch.zeros_like(out[K.FORCES])
        extra[:, 0] = -2 * c * dx
        out[K.FORCES] = out[K.FORCES] + extra
    return out


def hard_cutoff_step(data, out):
    """E += c per pair closer than e_rcut (a step, no force): the energy jumps where a neighbour crosses it."""
    i, _, _, r = _pairs(data)
    inside = (r < 4.0).to(torch.float64)
    out[K.ENERGY] = out[K.ENERGY] + 1e-3 * _per_structure(data, torch.zeros_like(data[K.POSITIONS][:, 0])
                                                          .index_add(0, i, inside))
    return out


def force_kink_at_cutoff(data, out):
    """E += c Σ max(0, r_cut − r) with its forces: continuous energy, forces jump by c at the cutoff."""
    c, r_cut = 1e-3, 4.0
    i, j, vec, r = _pairs(data)
    inside = r < r_cut
    energy = torch.where(inside, c * (r_cut - r), torch.zeros_like(r))
    out[K.ENERGY] = out[K.ENERGY] + _per_structure(data, torch.zeros_like(data[K.POSITIONS][:, 0])
                                                   .index_add(0, i, energy))
    if K.FORCES in out:
        push = torch.where(inside, c, 0.0).unsqueeze(1) * vec / r.unsqueeze(1)   # −dE/dr_j = c û, on j; −c û on i
        forces = out[K.FORCES].clone().index_add(0, j, push.to(out[K.FORCES].dtype))
        out[K.FORCES] = forces.index_add(0, i, -push.to(out[K.FORCES].dtype))
    return out


def batch_size_energy(data, out):
    out[K.ENERGY] = out[K.ENERGY] + 0.01 * data[K.CELL].shape[0]
    return out


def non_extensive_energy(data, out):
    n = data[K.N_ATOMS].to(torch.float64)
    out[K.ENERGY] = out[K.ENERGY] + 1e-3 * n * n
    return out


def index_weighted_energy(data, out):
    """E += c Σ_i i·Z_i (i: the atom's index in its structure): the order of the atoms matters."""
    batch = data[K.BATCH]
    first = torch.cumsum(data[K.N_ATOMS], 0) - data[K.N_ATOMS]
    index = torch.arange(len(batch)) - first[batch]
    out[K.ENERGY] = out[K.ENERGY] + 1e-3 * _per_structure(data, index * data[K.NUMBERS])
    return out


def stress_not_per_volume(data, out):
    if K.STRESS not in out:
        return out
    volume = torch.abs(torch.linalg.det(data[K.CELL].to(torch.float64)))
    out[K.STRESS] = out[K.STRESS] * volume.view(-1, 1, 1)
    return out


def stress_fixed_frame_term(data, out):
    """σ_xx += c for crystals: a term that does not turn with the cell (and is no derivative of the energy)."""
    if K.STRESS not in out:
        return out
    periodic = data[K.PBC].all(1).to(torch.float64)
    out[K.STRESS] = out[K.STRESS] + 1e-3 * periodic.view(-1, 1, 1) * torch.diag(torch.tensor([1.0, 0.0, 0.0]))
    return out


def property_cutoff_step(data, out):
    """gap += c per pair closer than e_rcut: the property head jumps where a neighbour crosses it."""
    i, _, _, r = _pairs(data)
    count = torch.zeros_like(data[K.POSITIONS][:, 0]).index_add(0, i, (r < 4.0).to(torch.float64))
    out["gap"] = out["gap"] + 1e-3 * _per_structure(data, count)
    return out


def intensive_head_summed(data, out):
    """The intensive ``gap`` head multiplied by the atom count, as if it summed instead of averaging."""
    out["gap"] = out["gap"] * data[K.N_ATOMS].to(out["gap"].dtype)
    return out


def identity(data, out):
    return out


class ShiftedEager(MFTModel):
    """An eager model whose forward adds 0.01 eV: its TorchScript export (rebuilt from config and weights) lacks
    the shift, so eager and export disagree."""

    def forward(self, data, compute_forces=True, compute_stress=True, compute_properties=True, features=False):
        out = super().forward(data, compute_forces, compute_stress, compute_properties, features)
        out[K.ENERGY] = out[K.ENERGY] + 0.01
        return out


def test_the_unbroken_model_passes_everything_and_is_left_unchanged():
    model = _tiny().float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = check_model(model)
    report.raise_for_failures()
    assert {r.check for r in report.results} == set(CHECKS)
    # only the dipole and ⟨R²⟩ heads are left out, of the supercell and additivity checks, which have no rule for them
    assert {(r.check, r.quantity) for r in report.skips} == {(c, q) for c in ("supercell", "additivity")
                                                              for q in ("mu", "r2")}
    assert next(model.parameters()).dtype == torch.float32 and next(model.parameters()).requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    check_model(Broken(identity), checks=[c for c in CHECKS if c != "export"]).raise_for_failures()


@pytest.mark.parametrize("fault, checks, failing", [
    (wrong_force_sign, ["forces_fd"], {"forces_fd/molecule/forces", "forces_fd/crystal/forces"}),
    (absolute_position_energy, ["translation", "rotation", "acoustic_sum", "forces_fd"],
     {"translation/molecule/energy", "translation/crystal/energy", "rotation/molecule/energy",
      "acoustic_sum/molecule/net force", "acoustic_sum/crystal/net force"}),
    (orientation_energy, ["acoustic_sum", "rotation", "translation", "forces_fd"],
     {"acoustic_sum/molecule/net torque", "rotation/molecule/energy"}),
    (hard_cutoff_step, ["cutoff", "forces_fd"], {"cutoff/e_rcut/energy"}),
    (force_kink_at_cutoff, ["cutoff", "forces_fd"], {"cutoff/e_rcut/forces"}),
    (batch_size_energy, ["batch", "forces_fd"], {"batch/molecule/energy", "batch/crystal/energy"}),
    (non_extensive_energy, ["supercell", "additivity", "forces_fd"],
     {"supercell/crystal 2x1x1/energy", "supercell/crystal 2x2x1/energy", "additivity/molecule+molecule/energy"}),
    (index_weighted_energy, ["permutation", "forces_fd"], {"permutation/molecule/energy"}),   # Si2: same atoms
    (stress_not_per_volume, ["stress_fd", "supercell"], {"stress_fd/crystal/stress",
                                                         "supercell/crystal 2x1x1/stress"}),
    (stress_fixed_frame_term, ["rotation", "stress_fd"], {"rotation/crystal/stress", "stress_fd/crystal/stress"}),
    (property_cutoff_step, ["cutoff"], {"cutoff/e_rcut/gap"}),
    (intensive_head_summed, ["supercell", "additivity", "rotation"],
     {"supercell/crystal 2x1x1/gap", "supercell/crystal 2x2x1/gap", "additivity/molecule+molecule/gap"}),
], ids=lambda v: getattr(v, "__name__", None))
def test_each_fault_fails_its_check_and_only_there(fault, checks, failing):
    report = check_model(Broken(fault), checks=checks)
    failed = {r.name for r in report.failures}
    assert failing <= failed, str(report)
    # forces_fd runs as a control with every fault that leaves the forces consistent with the energy: it passes
    assert {name.split("/")[0] for name in failed} == {name.split("/")[0] for name in failing}, str(report)
    with pytest.raises(ModelCheckFailed, match=sorted(failing)[0].split("/")[0]):
        report.raise_for_failures()


def test_export_check_fails_when_the_eager_model_differs_from_its_export():
    tiny = _tiny()
    model = ShiftedEager(tiny.config).double()
    model.load_state_dict(tiny.state_dict())
    model.metadata = tiny.metadata
    report = check_model(model, checks=["export"])
    assert {r.name for r in report.failures} == {"export/molecule/energy", "export/crystal/energy"}, str(report)
    assert all(r.error == pytest.approx(0.01) for r in report.failures)


def test_a_property_only_model_skips_the_force_checks_with_a_reason_and_checks_its_heads():
    from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset
    torch.manual_seed(0)
    model = MFTModel(ModelConfig(backbone=backbone_preset("tiny"),
                                 heads={"gap": HeadConfig(kind="scalar", hidden=(8,))})).double()
    report = check_model(model).raise_for_failures()
    assert {r.check for r in report.skips} == {"forces_fd", "stress_fd", "acoustic_sum"}
    assert all("no force-field head" in r.note for r in report.skips)
    for check, structure in [("rotation", "crystal"), ("supercell", "crystal 2x2x1"), ("cutoff", "e_rcut")]:
        assert report.select(check, structure, "gap")[0].status == "pass"


def test_a_torchscript_module_object_is_checked_but_cannot_be_compared_with_an_eager_model(tmp_path):
    from mftcalc.model.checkpoint import export_torchscript, load_any
    export_torchscript(_tiny(), tmp_path / "tiny.ts")
    scripted, metadata = load_any(tmp_path / "tiny.ts")
    with pytest.raises(ValueError, match="carries no metadata"):
        check_model(scripted)
    scripted.metadata = metadata
    report = check_model(scripted, checks=["batch", "export"]).raise_for_failures()
    assert [r.name for r in report.skips] == ["export/*/energy"] and "pass the export's path" in report.skips[0].note
    assert report.select("batch", "crystal", K.STRESS)[0].status == "pass"


def test_results_carry_error_and_tolerance_and_the_report_reads():
    report = check_model(_tiny(), checks=["rotation"])
    result = report.select("rotation", "crystal", K.STRESS)[0]
    assert result.passed and 0 <= result.error <= result.tolerance and result.unit == "eV/Å³"
    assert result.name == "rotation/crystal/stress" and result.name in str(report)
    with pytest.raises(ValueError, match="did you mean 'rotation'"):
        check_model(_tiny(), checks=["rotations"])


def test_max_deviation_treats_matching_non_finite_values_as_equal_and_others_as_infinite():
    from mftcalc.testing.results import max_deviation
    assert max_deviation(np.array([np.nan, np.inf, 1.0]), np.array([np.nan, np.inf, 1.5])) == 0.5
    assert max_deviation(np.array([np.nan]), np.array([1.0])) == np.inf
    assert max_deviation(np.array([np.inf]), np.array([-np.inf])) == np.inf
