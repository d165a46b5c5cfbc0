"""Group properties (one value per assembly of component structures: mftcalc.data.assembly, GroupHead): the head
pools as documented, is invariant as a function of a weighted set of structures must be, gives one structure's
value (a group of one) alike on every path, trains through `finetune` (scratch, and ft/mft from the shipped
prior on the command line) and refuses by name what it cannot do."""
from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from mftcalc.calculators import MFTCalculator
from mftcalc.data.assembly import Assembly, group_structures
from mftcalc.data.batch import collate
from mftcalc.data.structure import Structure
from mftcalc.experiments.tasks import PropertyTask, file_task
from mftcalc.model.checkpoint import export_torchscript, load_model, model_metadata, read_checkpoint, save_model
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.inference import predict_assemblies, predict_structures
from mftcalc.model.mft_model import MFTModel
from mftcalc.testing import check_model
from mftcalc.testing.structures import random_rotation

REPO = Path(__file__).resolve().parents[3]


def _model(reduce: str = "mean") -> MFTModel:
    torch.manual_seed(0)
    heads = {"energy": default_forcefield_head(),
             "cp": HeadConfig(kind="group", unit="K", hidden=(16, 16), group_reduce=reduce)}
    return MFTModel(ModelConfig(backbone=backbone_preset("cpu", n_layers=1), heads=heads)).double()


def _mixtures(n: int, seed: int = 0) -> list:
    """Frames of ``n`` mixtures of 1-3 small molecules with a made-up label (``examples/mixture_groups.py``)."""
    return runpy.run_path(str(REPO / "examples" / "mixture_groups.py"))["mixture_frames"](n, seed)


def _groups(n: int, seed: int = 0) -> list:
    frames = [Structure.from_ase(a).with_labels(properties={"cp": a.info["cp"]}, property_units={"cp": "K"})
              for a in _mixtures(n, seed)]
    return group_structures(frames)


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_the_head_pools_component_means_by_weight_then_applies_its_mlp(reduce):
    model = _model(reduce)
    groups = _groups(4)
    with torch.no_grad():
        out = model(collate(groups, dtype=torch.float64), compute_forces=False, compute_stress=False)["cp"]
    head = model.group_heads["cp"]
    for g, value in zip(groups, out):
        rows = predict_structures(model, g.components, compute_forces=False, compute_stress=False, features=True,
                                  properties=False)
        pooled = np.stack([r["node_features"].mean(0) for r in rows])                 # [C, n_dim]
        embedding = (g.weights[:, None] * pooled).sum(0)
        if reduce == "mean":
            embedding = embedding / g.weights.sum()
        with torch.no_grad():
            expected = head.mlp(torch.as_tensor(embedding)[None]).squeeze() * head.scale + head.shift
        assert float(value) == pytest.approx(float(expected), rel=1e-12, abs=1e-12)


def test_a_pool_mask_pools_only_its_atoms_the_rest_staying_environment(tmp_path):
    model = _model()
    methanol = Structure.from_ase(molecule("CH3OH"))
    mask = np.array([True, True, False, False, False, False])                # the C and O atoms
    masked = methanol.with_labels(pool_mask=mask)
    rows = predict_structures(model, [methanol], compute_forces=False, compute_stress=False, features=True,
                              properties=False)
    head = model.group_heads["cp"]
    with torch.no_grad():
        expected = head.mlp(torch.as_tensor(rows[0]["node_features"][mask].mean(0))[None]).squeeze() \
            * head.scale + head.shift
    value = predict_assemblies(model, [Assembly([masked], [1.0])])[0]["cp"]
    assert value == pytest.approx(float(expected), abs=1e-12)
    assert value != pytest.approx(predict_assemblies(model, [Assembly([methanol], [1.0])])[0]["cp"], abs=1e-6)
    save_model(model, tmp_path / "m.pt", model_metadata(model, elements=[1, 6, 7, 8]))
    atoms = methanol.to_ase()
    atoms.calc = MFTCalculator(str(tmp_path / "m.pt"), dtype=torch.float64)
    unmasked = atoms.calc.get_property("cp", atoms)
    atoms.arrays["pool_mask"] = mask                                         # a change ASE's cache must see
    assert atoms.calc.get_property("cp", atoms) == pytest.approx(value, abs=1e-10) != unmasked
    frames = [masked.with_labels(properties={"cp": 1.0}, property_units={"cp": "K"})] * 4
    from mftcalc.data.io import write_extxyz
    write_extxyz(frames, tmp_path / "masked.extxyz")
    with pytest.raises(ValueError, match="frame 0 has a pool_mask, which only a group head reads"):
        file_task(str(tmp_path / "masked.extxyz"), "cp", "K")


def test_a_group_head_reads_the_groups_frame_parameters():
    torch.manual_seed(0)
    heads = {"energy": default_forcefield_head(),
             "cp": HeadConfig(kind="group", unit="K", hidden=(16,), frame_params={"pressure": "bar"})}
    model = MFTModel(ModelConfig(backbone=backbone_preset("cpu", n_layers=1), heads=heads)).double()
    frames = []
    for g, p in enumerate([1.0, 5.0, 1.0]):
        for name in ("H2O", "CH4"):
            atoms = molecule(name)
            atoms.info.update(group=g, pressure=p, cp=300.0 + g)
            frames.append(Structure.from_ase(atoms).with_labels(properties={"cp": 300.0 + g}))
    groups = group_structures(frames, frame_params=["pressure"])
    from mftcalc.model.fitting import fit_property_head
    fit_property_head(model.group_heads["cp"], groups, "cp", "group", False, False)
    assert model.group_heads["cp"].frame_mean.tolist() == pytest.approx([7.0 / 3.0])
    values = [r["cp"] for r in predict_assemblies(model, groups)]
    assert values[0] == pytest.approx(values[2], abs=1e-12) and values[1] != pytest.approx(values[0], abs=1e-6)
    with pytest.raises(ValueError, match="no frame parameter 'pressure'"):
        predict_assemblies(model, [Assembly([Structure.from_ase(molecule("H2O"))], [1.0])])


def test_a_group_is_invariant_to_moving_reordering_and_reweighting_its_components():
    model = _model()
    group = _groups(6)[next(k for k, g in enumerate(_groups(6)) if len(g.components) > 1)]
    base = predict_assemblies(model, [group])[0]["cp"]
    rng = np.random.default_rng(1)
    moved = []
    for c in group.components:
        perm = rng.permutation(c.n_atoms)
        pos = (c.positions @ random_rotation(int(rng.integers(100))).T + rng.normal(size=3) * 5.0)[perm]
        moved.append(Structure(pos, c.numbers[perm]))
    variants = [Assembly(moved, group.weights, group.properties),                        # rotated, shifted, atoms permuted
                Assembly(group.components[::-1], group.weights[::-1], group.properties),  # components reordered
                Assembly(group.components, 3.0 * group.weights, group.properties)]       # weights scaled (mean)
    for value in predict_assemblies(model, variants):
        assert value["cp"] == pytest.approx(base, rel=1e-10, abs=1e-10)
    heavier = Assembly(group.components, group.weights * np.array([5.0] + [1.0] * (len(group.weights) - 1)))
    assert predict_assemblies(model, [heavier])[0]["cp"] != pytest.approx(base, rel=1e-6)   # weights matter


def test_one_structure_is_a_group_of_one_on_every_path(tmp_path):
    model = _model()
    groups = _groups(5)
    from mftcalc.model.fitting import fit_property_head
    fit_property_head(model.group_heads["cp"], groups, "cp", "group", False, False)
    labels = np.array([g.properties["cp"] for g in groups])
    assert float(model.group_heads["cp"].shift) == pytest.approx(labels.mean())
    assert float(model.group_heads["cp"].scale) == pytest.approx(labels.std())
    save_model(model, tmp_path / "m.pt", model_metadata(model, elements=[1, 6, 7, 8]))
    assert read_checkpoint(tmp_path / "m.pt")["metadata"]["heads"]["cp"]["kind"] == "group"
    export_torchscript(load_model(tmp_path / "m.pt", torch.float64), tmp_path / "m_ts.pt")
    single = groups[0].components[0]
    alone = predict_assemblies(model, [Assembly([single], [2.5])])[0]["cp"]
    assert float(predict_structures(model, [single])[0]["cp"]) == pytest.approx(alone, abs=1e-10)
    scripted = torch.jit.load(str(tmp_path / "m_ts.pt"))
    both = predict_assemblies(scripted, groups[:3], names=["cp"], dtype=torch.float64)
    np.testing.assert_allclose([r["cp"] for r in both], [r["cp"] for r in predict_assemblies(model, groups[:3])],
                               rtol=0, atol=1e-10)
    import mftcalc
    water, methane = molecule("H2O"), molecule("CH4")            # ase.Atoms components, through the public API
    api = mftcalc.predict([mftcalc.Assembly([water, methane], [0.3, 0.7])], str(tmp_path / "m.pt"),
                          dtype=torch.float64)
    direct = predict_assemblies(model, [Assembly([Structure.from_ase(water), Structure.from_ase(methane)],
                                                 [0.3, 0.7])])
    assert list(api[0]) == ["cp"] and api[0]["cp"] == pytest.approx(direct[0]["cp"], abs=1e-10)
    with pytest.raises(ValueError, match="forces and stress belong to single structures"):
        mftcalc.predict([mftcalc.Assembly([water], [1.0])], str(tmp_path / "m.pt"), forces=True)
    with pytest.raises(KeyError, match=r"\['energy'\] is not one"):
        mftcalc.predict([mftcalc.Assembly([water], [1.0])], str(tmp_path / "m.pt"), properties=["energy"])
    for path in (tmp_path / "m.pt", tmp_path / "m_ts.pt"):
        atoms = single.to_ase()
        atoms.calc = MFTCalculator(str(path), dtype=torch.float64)
        assert atoms.calc.get_property("cp", atoms) == pytest.approx(alone, abs=1e-9)
    report = check_model(tmp_path / "m.pt", checks=["rotation", "translation", "permutation", "supercell", "batch",
                                                     "cutoff", "export"])
    assert report.passed, report.failures


def test_finetune_learns_a_group_label_from_scratch(tmp_path):
    from mftcalc.training.finetune import FinetuneSettings, finetune
    groups = _groups(40, seed=3)
    task = PropertyTask(name="mix-cp", property="cp", unit="K", train=groups[:32], val=groups[32:],
                        test_parts={}, recipe=dict(kind="group", extensive=False, element_bias=False, loss="mse",
                                                   group_reduce="mean"), description="mixtures")
    settings = FinetuneSettings(strategy="scratch", steps=60, lr0=5e-3, lr_end=1e-4, property_batch=8,
                                head_hidden=(32, 32), val_every=60, checkpoint_every=1000, dtype="float32",
                                progress=False, interval_coverage=0.0)
    result = finetune(task, settings, tmp_path / "run", backbone_cfg=backbone_preset("cpu", n_layers=1))
    labels = np.array([g.properties["cp"] for g in groups[32:]])
    constant = float(np.abs(labels - np.mean([g.properties["cp"] for g in groups[:32]])).mean())
    assert result["val"]["n"] == 8
    assert result["val"]["mae"] < 0.6 * constant, (result["val"], constant)   # learned beyond the mean


def test_command_line_mft_on_groups_keeps_the_force_field_and_predicts_per_group(tmp_path, capsys):
    from mftcalc.cli import main
    write(tmp_path / "mix.extxyz", _mixtures(30))
    assert main(["finetune", "--data", str(tmp_path / "mix.extxyz"), "--property", "cp", "--unit", "K",
                 "--group-key", "group", "--steps", "20", "-o", str(tmp_path / "cp.pt")]) == 0
    model = load_model(tmp_path / "cp.pt", torch.float64)
    assert model.config.heads["cp"].kind == "group" and "cp_pi90" not in model.config.heads
    assert model.metadata["heads"]["cp"]["domain"]["elements"] == [1, 6, 7, 8]
    from mftcalc.model.card import model_card
    assert "frames grouped by `info['group']` and weighted by `info['weight']`" in model_card(tmp_path / "cp.pt")
    report = check_model(tmp_path / "cp.pt", checks=["forces_fd", "rotation", "permutation", "batch"])
    assert report.passed, report.failures
    from mftcalc.calculators.model_handle import DomainWarning
    component = _mixtures(1)[0]                                  # one frame of a group, info["group"] and all
    component.calc = MFTCalculator(str(tmp_path / "cp.pt"))
    with pytest.warns(DomainWarning, match=r"predicted as a group of one; .*mftcalc predict --group-key group"):
        component.calc.get_property("cp", component)
    assert main(["predict", str(tmp_path / "cp.pt"), str(tmp_path / "mix.extxyz"), "--out",
                 str(tmp_path / "groups.csv"), "--group-key", "group"]) == 0
    import csv
    rows = list(csv.DictReader(open(tmp_path / "groups.csv")))
    assert len(rows) == 30 and rows[0]["group"] == "mix0"
    assert {"n_components", "n_atoms", "cp_K", "cp_K_label", "ood_score_unitless"} <= set(rows[0])
    expected = predict_assemblies(load_model(tmp_path / "cp.pt"), group_structures(
        [Structure.from_ase(a) for a in _mixtures(30)]))
    np.testing.assert_allclose([float(r["cp_K"]) for r in rows], [e["cp"] for e in expected], rtol=1e-5)
    odd = _mixtures(2)
    fullerene = molecule("C60")
    fullerene.info.update(group="odd", weight=1.0)
    write(tmp_path / "odd.extxyz", odd + [fullerene])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "cp.pt"), str(tmp_path / "odd.extxyz"), "--out",
                 str(tmp_path / "odd.csv"), "--group-key", "group"]) == 0
    assert "warning: group 'odd' (its least familiar component) has ood_score" in capsys.readouterr().err
    assert main(["relax", str(tmp_path / "cp.pt"), str(tmp_path / "mix.extxyz"), "--out",
                 str(tmp_path / "relaxed.csv"), "--group-key", "group", "--fmax", "0.05"]) == 0
    relaxed = list(csv.DictReader(open(tmp_path / "relaxed.csv")))
    assert len(relaxed) == 30 and all(r["n_converged"] == r["n_components"] for r in relaxed)
    assert all(float(r["fmax_eV_per_A"]) <= 0.05 for r in relaxed)
    assert [r["cp_K"] for r in relaxed] != [r["cp_K"] for r in rows]       # the relaxed geometries were used
    from mftcalc.cli_evaluate import evaluate_files
    from mftcalc.data.io import write_extxyz
    labelled = [Structure.from_ase(a).with_labels(properties={"cp": a.info["cp"]}, property_units={"cp": "K"})
                for a in _mixtures(30)]
    write_extxyz(labelled, tmp_path / "labelled.extxyz")
    scored = evaluate_files(str(tmp_path / "cp.pt"), [str(tmp_path / "labelled.extxyz")], plot=None)
    err = scored[str(tmp_path / "labelled.extxyz")]["properties"]["cp"]
    truth = np.array([float(r["cp_K_label"]) for r in rows])
    assert err["n"] == 30                                                   # groups, not their 60-odd frames
    assert err["mae"] == pytest.approx(np.abs(np.array([e["cp"] for e in expected]) - truth).mean(), rel=1e-5)
    write_extxyz([s.with_labels(info={k: v for k, v in s.info.items() if k != "group"}) if k == 3 else s
                  for k, s in enumerate(labelled)], tmp_path / "partly.extxyz")
    with pytest.raises(SystemExit, match="have no group key 'group'"):
        evaluate_files(str(tmp_path / "cp.pt"), [str(tmp_path / "partly.extxyz")], plot=None)
    assert main(["cv", "--data", str(tmp_path / "mix.extxyz"), "--property", "cp", "--unit", "K", "--group-key",
                 "group", "--folds", "2", "--strategy", "ft", "--steps", "4", "--out-dir", str(tmp_path / "cv")]) == 0
    report = (tmp_path / "cv" / "report.md").read_text()
    assert "| 0 | 15 |" in report and "| 1 | 15 |" in report                 # 30 groups split 15/15, not frames


def test_frozen_sklearn_fits_a_group_head_in_closed_form(tmp_path):
    from mftcalc.training.finetune import FinetuneSettings, finetune
    write(tmp_path / "mix.extxyz", _mixtures(60, seed=5))
    task = file_task(str(tmp_path / "mix.extxyz"), "cp", "K", group_key="group", val_fraction=0.2)
    result = finetune(task, FinetuneSettings(strategy="frozen-sklearn", progress=False, interval_coverage=0.0),
                      tmp_path / "run", pretrained_path=REPO / "models" / "pretrained.pt")
    model = load_model(tmp_path / "run" / "model.pt", torch.float64)
    assert model.config.heads["cp"].hidden == ()
    ridge = model.metadata["finetuning"]["ridge"]
    fitted = np.array([r["cp"] for r in predict_assemblies(model, task.train)])
    labels = np.array([g.properties["cp"] for g in task.train])
    assert np.sqrt(np.mean((fitted - labels) ** 2)) == pytest.approx(ridge["train_rmse"], rel=1e-3)
    constant = float(np.abs(np.array([g.properties["cp"] for g in task.val]) - labels.mean()).mean())
    assert result["val"]["mae"] < 0.5 * constant, (result["val"], constant)


def test_group_paths_refuse_what_they_cannot_do(tmp_path):
    from mftcalc.experiments.config import TaskSpec
    from mftcalc.model.intervals import calibrate_interval
    from mftcalc.workflows.group_predict import predict_groups
    write(tmp_path / "mix.extxyz", _mixtures(6))
    with pytest.raises(ValueError, match=r"has no group head.*mftcalc finetune --group-key KEY"):
        predict_groups(REPO / "models" / "mft_gap.pt", tmp_path / "mix.extxyz", None, "group")
    with pytest.raises(ValueError, match=r"frame 0 has no group key 'mixture'"):
        file_task(str(tmp_path / "mix.extxyz"), "cp", "K", group_key="mixture")
    with pytest.raises(ValueError, match="a SMILES CSV has one molecule per row"):
        file_task("mols.csv", "cp", "K", group_key="group")
    with pytest.raises(ValueError, match="group_key is for file tasks"):
        TaskSpec(kind="qm9", property="gap", group_key="group")
    task = file_task(str(tmp_path / "mix.extxyz"), "cp", "K", group_key="group", val_fraction=0.34)
    assert task.recipe["kind"] == "group" and len(task.train) + len(task.val) == 6
    model = _model()
    model.config.heads["ood_score"] = HeadConfig(kind="knn_ood", unit="")
    with pytest.raises(ValueError, match="'cp' is a group property"):
        calibrate_interval(model, task.val, "cp", 0.9)
    with pytest.raises(ValueError, match="group_reduce must be 'mean'"):
        HeadConfig(kind="group", group_reduce="max")
    with pytest.raises(ValueError, match=r"--out .*give a .csv path"):
        predict_groups(REPO / "models" / "mft_gap.pt", tmp_path / "mix.extxyz", tmp_path / "g.extxyz", "group")


def test_a_pool_mask_given_to_a_model_without_group_heads_is_refused_not_ignored():
    """Per-structure heads pool every atom: a masked structure would silently get the unmasked value."""
    import mftcalc
    model = str(REPO / "models" / "mft_gap.pt")
    atoms = molecule("CH3OH")
    atoms.arrays["pool_mask"] = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    atoms.calc = MFTCalculator(model)
    assert np.isfinite(atoms.get_forces()).all()              # the force field does not pool: no refusal
    with pytest.raises(ValueError, match=r"has a pool_mask, which only a group head reads.*del atoms.arrays"):
        atoms.calc.get_property("gap", atoms)
    with pytest.raises(ValueError, match="structure 0 has a pool_mask"):
        mftcalc.predict([atoms], model, properties=["gap"])


def test_the_feature_anchor_keeps_reference_features_per_group(tmp_path):
    """An anchored FT on groups (mftcalc.training.anchor): the reference's features are kept per assembly, whose
    atoms are its components' in order, and a reordered batch of kept groups equals a fresh pass; the run trains."""
    from mftcalc.training.anchor import Anchor
    from mftcalc.training.finetune import FinetuneSettings, finetune
    groups = _groups(4)
    anchor = Anchor(_model(), "features", 1.0)
    anchor.reference_features(collate(groups, dtype=torch.float64), keys=list(range(4)))
    reordered = collate([groups[3], groups[1]], dtype=torch.float64)
    kept = anchor.reference_features(reordered, keys=[3, 1])
    assert torch.allclose(kept, anchor.reference_features(reordered), rtol=0, atol=1e-12)
    write(tmp_path / "mix.extxyz", _mixtures(24, seed=2))
    task = file_task(str(tmp_path / "mix.extxyz"), "cp", "K", group_key="group", val_fraction=0.25)
    result = finetune(task, FinetuneSettings(strategy="ft", steps=4, property_batch=4, anchor="features",
                                             anchor_weight=5.0, progress=False, interval_coverage=0.0),
                      tmp_path / "run", pretrained_path=REPO / "models" / "pretrained.pt")
    assert result["steps"] == 4 and 0 < result["drift_rel"] and np.isfinite(result["val"]["mae"])


def _reactions(n: int, seed: int = 0) -> list:
    """Made-up reactions A + B -> C + D of small molecules (weights +1 products, -1 reactants), labelled with a
    stoichiometric sum of a per-molecule value (atom counts weighted by element), so the label is a reaction sum."""
    rng = np.random.default_rng(seed)
    names = ["H2O", "CH4", "NH3", "CH3OH", "HCN", "C2H4", "HCOOH", "C2H6", "CO2", "H2CO"]
    value = {1: 0.3, 6: -1.1, 7: 0.8, 8: -0.6}
    frames = []
    for g in range(n):
        picks = rng.choice(len(names), 4, replace=False)
        weights = [1.0, 1.0, -1.0, -1.0]
        label = sum(w * sum(value[z] for z in molecule(names[i]).numbers) for w, i in zip(weights, picks))
        for w, i in zip(weights, picks):
            atoms = molecule(names[i])
            atoms.rattle(0.01, seed=g)
            atoms.info.update(group=g, weight=w, temperature=300.0 + 10 * (g % 3))
            frames.append(Structure.from_ase(atoms).with_labels(properties={"dh": label},
                                                                property_units={"dh": "eV"}))
    return frames


def test_a_reaction_is_a_group_with_signed_weights_under_a_summing_head(tmp_path):
    """Products +1, reactants -1: the head sums the signed component embeddings (its frame parameters stay the
    group's value though the weights sum to zero), a mean head refuses them, and scratch learns such a label."""
    from mftcalc.training.finetune import FinetuneSettings, finetune
    torch.manual_seed(0)
    heads = {"energy": default_forcefield_head(),
             "dh": HeadConfig(kind="group", unit="eV", hidden=(16,), group_reduce="sum",
                              frame_params={"temperature": "K"})}
    model = MFTModel(ModelConfig(backbone=backbone_preset("cpu", n_layers=1), heads=heads)).double()
    groups = group_structures(_reactions(3), frame_params=["temperature"])
    assert all(g.weights.sum() == 0 for g in groups)
    from mftcalc.model.fitting import fit_property_head
    fit_property_head(model.group_heads["dh"], groups, "dh", "group", False, False)
    values = predict_assemblies(model, groups)
    head = model.group_heads["dh"]
    for g, value in zip(groups, values):
        rows = predict_structures(model, g.components, compute_forces=False, compute_stress=False, features=True,
                                  properties=False)
        embedding = (g.weights[:, None] * np.stack([r["node_features"].mean(0) for r in rows])).sum(0)
        frame = (g.info["temperature"] - float(head.frame_mean)) / float(head.frame_std)
        with torch.no_grad():
            x = torch.as_tensor(np.append(embedding, frame))[None]
            expected = head.mlp(x).squeeze() * head.scale + head.shift
        assert value["dh"] == pytest.approx(float(expected), rel=1e-10, abs=1e-10)
    mean_model = _model("mean")
    with pytest.raises(ValueError, match=r"group head 'cp': group 0 has negative component weights.*--extensive"):
        predict_assemblies(mean_model, [Assembly(groups[0].components, groups[0].weights, {"cp": 1.0},
                                                 info=dict(groups[0].info))])
    from mftcalc.data.io import write_extxyz
    write_extxyz(_reactions(48, seed=1), tmp_path / "reactions.extxyz")
    with pytest.raises(ValueError, match=r"task file-dh: group .* negative component weights.*--extensive"):
        finetune(file_task(str(tmp_path / "reactions.extxyz"), "dh", group_key="group"),
                 FinetuneSettings(strategy="scratch", steps=1, progress=False), tmp_path / "refused")
    task = file_task(str(tmp_path / "reactions.extxyz"), "dh", intensive=False, group_key="group", val_fraction=0.25)
    assert task.recipe["group_reduce"] == "sum" and task.unit == "eV"
    settings = FinetuneSettings(strategy="scratch", steps=80, lr0=5e-3, lr_end=1e-4, property_batch=8,
                                head_hidden=(32, 32), val_every=80, checkpoint_every=1000, dtype="float32",
                                progress=False, interval_coverage=0.0)
    result = finetune(task, settings, tmp_path / "run", backbone_cfg=backbone_preset("cpu", n_layers=1))
    labels = np.array([g.properties["dh"] for g in task.val])
    constant = float(np.abs(labels - np.mean([g.properties["dh"] for g in task.train])).mean())
    assert result["val"]["mae"] < 0.6 * constant, (result["val"], constant)   # learned beyond the mean
