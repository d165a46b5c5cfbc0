"""The authors' recipe as the default: deepmd-kit energy/virial normalisation, summed property loss, clip 5,
ResNet-dt heads, domain-matched auxiliary force-field data, and a resume that states changed settings."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mftcalc import keys as K
from mftcalc.data.boom import BoomSplit, save_splits
from mftcalc.data.io import write_extxyz
from mftcalc.model.config import HeadConfig
from mftcalc.model.heads import ScalarHead
from mftcalc.model.layers import MLP, ResNetDtLayer
from mftcalc.training.finetune import FinetuneSettings
from mftcalc.training.losses import forcefield_loss, property_loss
from mftcalc.training.forcefield_data import drop_test_molecules, load_forcefield_set
from mftcalc.training.sampler import EpochSampler


def _ff_pair(n_atoms=(3, 12)):
    """A batch of two structures with known energy errors 1 and 2 eV and no force/virial labels."""
    batch = {K.N_ATOMS: torch.tensor(n_atoms), K.ENERGY: torch.zeros(2), K.HAS_ENERGY: torch.tensor([True, True])}
    pred = {K.ENERGY: torch.tensor([1.0, 2.0])}
    return pred, batch


def test_energy_term_is_deepmd_kits_mse_over_n():
    """deepmd-kit: pref_e · ⟨(E−Ê)²/N⟩; the old per-atom form ⟨((E−Ê)/N)²⟩ is N times weaker."""
    pred, batch = _ff_pair()
    deepmd, parts = forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3)            # pref_e = 0.2 at lr0
    per_atom, _ = forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3, energy_norm="per_atom")
    assert float(deepmd) == pytest.approx(0.2 * (1.0 / 3 + 4.0 / 12) / 2)
    assert float(per_atom) == pytest.approx(0.2 * (1.0 / 9 + 4.0 / 144) / 2)
    assert parts["rmse_e_per_atom"] == pytest.approx(math.sqrt((1.0 / 9 + 4.0 / 144) / 2))   # logged per atom
    with pytest.raises(ValueError, match="energy_norm"):
        forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3, energy_norm="total")


def test_virial_term_is_divided_by_n_once():
    n = torch.tensor([4])
    cell = torch.eye(3).unsqueeze(0) * 2.0                      # volume 8 Å^3
    batch = {K.N_ATOMS: n, K.STRESS: torch.zeros(1, 3, 3), K.HAS_STRESS: torch.tensor([True]), K.CELL: cell,
             K.ENERGY: torch.zeros(1), K.HAS_ENERGY: torch.tensor([False])}
    pred = {K.ENERGY: torch.zeros(1), K.VIRIAL: torch.full((1, 3, 3), 2.0)}
    loss, _ = forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3)   # pref_v = 0.02 at lr0
    assert float(loss) == pytest.approx(0.02 * 9 * 4.0 / (9 * 4))


def test_property_loss_sums_over_the_batch_by_request():
    name = "gap"
    batch = {K.property_key(name): torch.tensor([1.0, 2.0, 3.0]),
             K.has_property_key(name): torch.tensor([True, True, True])}
    pred = {name: torch.tensor([1.5, 1.0, 3.0])}
    summed, _ = property_loss(pred, batch, name, reduction="sum")
    mean, _ = property_loss(pred, batch, name, reduction="mean")
    assert float(summed) == pytest.approx(0.25 + 1.0) and float(mean) == pytest.approx((0.25 + 1.0) / 3)
    with pytest.raises(ValueError, match="reduction"):
        property_loss(pred, batch, name, reduction="max")


def test_finetune_defaults_are_the_authors_recipe():
    s = FinetuneSettings()
    assert (s.grad_clip, s.property_reduction, s.energy_norm, s.head_resnet_dt) == (5.0, "sum", "deepmd", True)
    assert tuple(s.head_hidden) == (240, 240, 240) and s.head_activation == "tanh"
    with pytest.raises(ValueError, match="property_reduction"):
        FinetuneSettings(property_reduction="median")


def test_resnet_dt_layers_skip_on_equal_and_doubled_widths():
    torch.manual_seed(0)
    mlp = MLP(4, (4, 8, 5), 1, "tanh", resnet_dt=True)
    layers = [m for m in mlp.net if isinstance(m, ResNetDtLayer)]
    assert [layer.skip for layer in layers] == [1, 2, 0]
    assert all(abs(float(layer.idt.detach().mean()) - 0.1) < 0.01 for layer in layers)
    x = torch.randn(6, 4)
    first = layers[0]
    expected = x + torch.tanh(first.linear(x)) * first.idt
    torch.testing.assert_close(first(x), expected)
    doubled = layers[1](expected)
    torch.testing.assert_close(doubled, torch.cat([expected, expected], -1)
                               + torch.tanh(layers[1].linear(expected)) * layers[1].idt)
    scripted = torch.jit.script(mlp)
    torch.testing.assert_close(scripted(x), mlp(x))


def test_head_config_without_resnet_dt_keeps_old_state_dict_keys():
    """Checkpoints written before the option have plain MLP keys; their config lacks resnet_dt -> False."""
    old = ScalarHead(8, HeadConfig(**{"kind": "scalar", "hidden": (16, 16)}))
    new = ScalarHead(8, HeadConfig(kind="scalar", hidden=(16, 16), resnet_dt=True))
    assert "mlp.net.0.weight" in old.state_dict() and not any("idt" in k for k in old.state_dict())
    assert "mlp.net.0.idt" in new.state_dict() and "mlp.net.1.idt" in new.state_dict()


def test_forcefield_set_keeps_its_dataset_and_drops_test_molecules(tmp_path):
    molecules = [s.with_labels(info={"qm9_index": k + 1, "dataset": "xtb_qm9" if k < 6 else "md17"})
                 for k, s in enumerate(_molecules(8))]
    write_extxyz(molecules, tmp_path / "mixed.extxyz")
    only_xtb = load_forcefield_set("xtb_qm9", str(tmp_path / "mixed.extxyz"))
    assert [s.info["qm9_index"] for s in only_xtb] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="no structures of dataset 'water'"):
        load_forcefield_set("water", str(tmp_path / "mixed.extxyz"))
    empty = np.zeros(0, dtype=np.int64)
    save_splits({"gap": BoomSplit("gap", empty, empty, np.array([2]), np.array([5])),
                 "mu": BoomSplit("mu", empty, empty, np.array([3]), empty)}, tmp_path / "splits.json")
    kept = load_forcefield_set("xtb_qm9", {"path": str(tmp_path / "mixed.extxyz"),
                                           "exclude_splits": str(tmp_path / "splits.json"),
                                           "exclude_properties": ["gap"]})
    assert [s.info["qm9_index"] for s in kept] == [1, 3, 4, 6]
    assert len(drop_test_molecules(only_xtb, str(tmp_path / "splits.json"), None)) == 3
    with pytest.raises(ValueError, match="unknown key 'exclude'; did you mean 'exclude_splits'"):
        load_forcefield_set("xtb_qm9", {"path": "x", "exclude": "y"})
    with pytest.raises(ValueError, match="have no split"):
        drop_test_molecules(only_xtb, str(tmp_path / "splits.json"), ["homo"])


def test_sampler_resumes_when_its_source_shrank():
    small = EpochSampler(6, 4, seed=0)
    small.load_state_dict({"epoch": 2, "position": 9})
    assert (small.epoch, small.position) == (3, 0)
    assert len(small.next_indices()) == 4


def test_force_huber_is_the_squared_error_below_delta_and_linear_above():
    """force_huber δ: x² for |x| ≤ δ, 2δ|x| − δ² above (per component, mean over components); rmse_f stays plain."""
    batch = {K.N_ATOMS: torch.tensor([2]), K.HAS_FORCES: torch.tensor([True]), K.BATCH: torch.zeros(2, dtype=torch.long),
             K.FORCES: torch.zeros(2, 3), K.ENERGY: torch.zeros(1), K.HAS_ENERGY: torch.tensor([False])}
    errors = torch.tensor([[0.05, -0.05, 0.0], [1.0, -2.0, 0.0]])
    pred = {K.ENERGY: torch.zeros(1), K.FORCES: errors}
    mse, parts = forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3)                 # pref_f = 100 at lr0
    huber, parts_h = forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3, force_huber=0.1)
    assert float(mse) == pytest.approx(100 * (2 * 0.05 ** 2 + 1.0 + 4.0) / 6)
    assert float(huber) == pytest.approx(100 * (2 * 0.05 ** 2 + (0.2 * 1.0 - 0.01) + (0.2 * 2.0 - 0.01)) / 6)
    assert parts_h["rmse_f"] == pytest.approx(parts["rmse_f"])
    assert parts["mae_f"] == pytest.approx((0.05 + 0.05 + 1.0 + 2.0) / 6)
    small = {K.ENERGY: torch.zeros(1), K.FORCES: errors * (errors.abs() < 0.5)}   # all below δ: the same loss
    assert float(forcefield_loss(small, batch, 1e-3, 1e-3, force_huber=0.1)[0]) == pytest.approx(
        float(forcefield_loss(small, batch, 1e-3, 1e-3)[0]))
    with pytest.raises(ValueError, match="force_huber"):
        forcefield_loss(pred, batch, lr=1e-3, lr0=1e-3, force_huber=-0.1)


def test_force_huber_config_is_checked_and_passed_on(tiny_config):
    from mftcalc.training.pretrain import PretrainConfig
    with pytest.raises(ValueError, match="force_huber"):
        PretrainConfig.from_yaml(tiny_config, {"force_huber": -1.0})
    assert PretrainConfig.from_yaml(tiny_config, {"force_huber": 0.1}).force_huber == 0.1


def test_resume_with_changed_settings_is_stated(tiny_config, capsys):
    from mftcalc.training.pretrain import PretrainConfig, pretrain
    pretrain(PretrainConfig.from_yaml(tiny_config, {"steps": 4}))
    pretrain(PretrainConfig.from_yaml(tiny_config, {"steps": 6, "lr0": 5e-4, "grad_clip": 5.0}))
    log = (Path(PretrainConfig.from_yaml(tiny_config).out_dir) / "resume.log").read_text()
    assert "at step 4 with changed settings" in log and "grad_clip: 10.0 -> 5.0" in log
    assert "lr: ExponentialLR(lr0=0.001" in log and "num_steps" in log
    assert "changed settings" in capsys.readouterr().err


def test_a_setting_added_later_at_its_default_is_no_change(tiny_config, capsys):
    """A state written before a setting existed resumes without a false 'changed' line when it is at its
    default; a non-default value is stated."""
    from mftcalc.training.pretrain import PretrainConfig, pretrain
    cfg = PretrainConfig.from_yaml(tiny_config, {"steps": 2})
    pretrain(cfg)
    state = torch.load(cfg.state_path, weights_only=False)
    del state["settings"]["force_huber"]                        # as written before the setting existed
    torch.save(state, cfg.state_path)
    pretrain(PretrainConfig.from_yaml(tiny_config, {"steps": 3}))
    resume_log = Path(cfg.out_dir) / "resume.log"
    assert "force_huber" not in (resume_log.read_text() if resume_log.exists() else "")
    pretrain(PretrainConfig.from_yaml(tiny_config, {"steps": 4, "force_huber": 0.2}))
    assert "force_huber: 0.0 -> 0.2" in resume_log.read_text()


def _molecules(n):
    from ase.build import molecule
    from mftcalc.data.structure import Structure
    out = []
    for k in range(n):
        atoms = molecule("CH4")
        atoms.rattle(0.05, seed=k)
        out.append(Structure.from_ase(atoms).with_labels(energy=-1.0 * k, forces=np.zeros((5, 3))))
    return out


def test_device_auto_is_cpu_here_and_missing_cuda_is_refused():
    from mftcalc.devices import resolve_device
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")


def test_progress_shows_one_running_loss_per_task_kind():
    from types import SimpleNamespace
    from mftcalc.training.loop import Trainer
    fake = SimpleNamespace(sources=[SimpleNamespace(kind="property"), SimpleNamespace(kind="forcefield")])
    fields = {}
    for step, (k, loss) in enumerate([(0, 1.0), (1, 100.0), (0, 1.0), (1, 100.0)]):
        fields = Trainer._running_losses(fake, {"source": float(k), "loss": loss, "lr": 1e-3, "step": step})
    assert fields["loss_prop"] == "1" and fields["loss_ff"] == "100" and fields["lr"] == "0.001"
