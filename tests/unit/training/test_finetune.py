"""Fine-tuning strategies: what each trains/freezes, one checkpoint with force field + property, resume."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mftcalc.calculators import MFTCalculator
from mftcalc.model.checkpoint import read_checkpoint
from mftcalc.training.finetune import FinetuneSettings, finetune
from mftcalc.training.pretrain import PretrainConfig, pretrain
from mftcalc.experiments.tasks import PropertyTask

from _helpers import emt_structures


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from pathlib import Path
    tmp = tmp_path_factory.mktemp("pre")
    from mftcalc.data.io import write_extxyz
    write_extxyz(emt_structures("Cu", 24, 0), tmp / "cu.extxyz")
    write_extxyz(emt_structures("Al", 24, 1), tmp / "al.extxyz")
    cfg = PretrainConfig.from_yaml(_write_cfg(tmp), {})
    pretrain(cfg)
    return Path(cfg.model_out)


def _write_cfg(tmp):
    import yaml
    cfg = {"datasets": [{"name": "cu", "path": str(tmp / "cu.extxyz"), "batch_size": 4, "replay": 10},
                        {"name": "al", "path": str(tmp / "al.extxyz"), "batch_size": 4, "replay": 10}],
           "preset": "tiny", "ff_hidden": [8], "steps": 10, "decay_steps": 5, "val_every": 10,
           "checkpoint_every": 5, "dtype": "float64", "out_dir": str(tmp / "run"),
           "state_path": str(tmp / "run/state.pt"), "model_out": str(tmp / "pre.pt"),
           "progress": False}
    path = tmp / "pre.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _task() -> PropertyTask:
    structures = emt_structures("Cu", 20, 5) + emt_structures("Al", 20, 6)
    labelled = []
    for s in structures:   # a smooth synthetic property: volume per atom
        volume = abs(np.linalg.det(s.cell)) / s.n_atoms
        labelled.append(s.with_labels(properties={"vpa": volume}, property_units={"vpa": "Å^3"}))
    recipe = dict(kind="scalar", extensive=False, element_bias=True, loss="mse")
    return PropertyTask("toy-vpa", "vpa", "Å^3", labelled[:30], labelled[30:35], {"test": labelled[35:]}, recipe)


def _settings(strategy: str, **kw) -> FinetuneSettings:
    base = dict(steps=6, property_batch=4, ff_batch=4, val_every=3, checkpoint_every=2, head_hidden=(8,),
                dtype="float64", progress=False, probe_size=4, interval_coverage=0.8)   # 5 val: at most 0.83
    return FinetuneSettings(strategy=strategy, **{**base, **kw})


@pytest.mark.parametrize("strategy", ["scratch", "ft", "lp", "mft"])
def test_strategies_train_what_they_should(pretrained, tmp_path, strategy):
    task = _task()
    result = finetune(task, _settings(strategy), tmp_path / strategy, pretrained)
    assert result["steps"] == 6 and result["test"]["mae"] > 0
    # the interval head, calibrated on the 5 validation structures: the 5th smallest, so all 5 covered
    assert result["interval"]["name"] == "vpa_pi80" and result["val"]["interval_coverage"] == 1.0
    assert 0.0 <= result["test"]["interval_coverage"] <= 1.0
    parity = np.load(tmp_path / strategy / "parity.npz")
    errors = parity["test_pred"] - parity["test_true"]
    assert np.sqrt(np.mean(errors ** 2)) == pytest.approx(result["test"]["rmse"])
    assert (tmp_path / strategy / "parity.png").stat().st_size > 0
    tuned = read_checkpoint(tmp_path / strategy / "model.pt")["state_dict"]
    base = read_checkpoint(pretrained)["state_dict"]
    backbone_same = all(torch.equal(tuned[k], base[k]) for k in base if k.startswith("backbone."))
    if strategy == "scratch":
        assert not any(k.startswith("ff_heads.") for k in tuned)
        return
    ff_same = all(torch.equal(tuned[k], base[k]) for k in base if k.startswith("ff_heads."))
    assert backbone_same == (strategy == "lp")
    assert ff_same == (strategy != "mft")
    assert "drift_w1" in result and (result["drift_w1"] == 0) == (strategy == "lp")
    assert (result["drift_rel"] == 0) == (strategy == "lp") and result["drift_rel"] >= 0


def test_mft_checkpoint_is_force_field_and_property_model(pretrained, tmp_path):
    task = _task()
    finetune(task, _settings("mft", mode="sum", lambda_reg=0.5), tmp_path / "mft", pretrained)
    atoms = task.test_parts["test"][0].to_ase()
    atoms.calc = MFTCalculator(tmp_path / "mft" / "model.pt", dtype=torch.float64)
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (len(atoms), 3) and atoms.get_stress().shape == (6,)
    from mftcalc.training.evaluate import property_predictions
    from mftcalc.model.checkpoint import load_model
    model = load_model(tmp_path / "mft" / "model.pt", torch.float64)
    expected = property_predictions(model, [task.test_parts["test"][0]], "vpa")[0]
    assert abs(atoms.calc.get_property("vpa", atoms) - expected) < 1e-6 * max(1.0, abs(expected))


def test_finetuned_checkpoint_passes_the_physics_checks(pretrained, tmp_path):
    """mftcalc.testing on a checkpoint written by ``finetune`` (mft: force field and the ``vpa`` head) on a Cu
    cluster and Cu and Al cells: finite differences, symmetries, supercells, additivity, cutoffs, batch, export."""
    from ase import Atoms
    from mftcalc.data import Structure
    from mftcalc.testing import check_model
    finetune(_task(), _settings("mft"), tmp_path / "mft", pretrained)
    cluster = Structure.from_ase(Atoms("Cu3", positions=[[0.0, 0.0, 0.0], [2.4, 0.2, 0.0], [1.1, 2.1, 0.3]]))
    structures = [cluster] + emt_structures("Cu", 1, 9) + emt_structures("Al", 1, 10)
    report = check_model(tmp_path / "mft" / "model.pt", structures, dataset="cu").raise_for_failures()
    # a k-NN score of pooled features, and the interval (a constant times it)
    assert sorted(r.name for r in report.skips) == ["additivity/*/ood_score", "additivity/*/vpa_pi80"]
    assert report.select("supercell", quantity="vpa") and report.select("supercell", quantity="ood_score")
    assert report.select("supercell", quantity="vpa_pi80") and report.select("export", quantity="vpa_pi80")
    assert report.select("rotation", quantity="stress") and report.select("additivity", quantity="forces")


@pytest.mark.parametrize("task_optimizers", [False, True])
def test_finetune_resumes_to_the_same_result(pretrained, tmp_path, monkeypatch, task_optimizers):
    task = _task()
    straight = finetune(task, _settings("mft", task_optimizers=task_optimizers), tmp_path / "a", pretrained)
    import mftcalc.training.loop as loop
    original = loop.Trainer.run
    with monkeypatch.context() as patch:   # the first call stops at step 3, like a killed run
        patch.setattr(loop.Trainer, "run", lambda self, stop_at=None, time_budget_s=None: original(self, stop_at=3))
        finetune(task, _settings("mft", task_optimizers=task_optimizers), tmp_path / "b", pretrained)
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"] == 3
    resumed = finetune(task, _settings("mft", task_optimizers=task_optimizers), tmp_path / "b", pretrained)
    assert resumed["test"] == straight["test"] and resumed["val"] == straight["val"]
    with pytest.raises(ValueError, match="optimizer_per_kind"):   # a state of the other kind is refused
        finetune(task, _settings("mft", steps=8, task_optimizers=not task_optimizers), tmp_path / "b", pretrained)


def test_task_optimizers_keep_one_adam_state_per_task(pretrained, tmp_path):
    task = _task()
    finetune(task, _settings("mft", steps=12, task_optimizers=True), tmp_path / "m", pretrained)
    state = torch.load(tmp_path / "m" / "state.pt", weights_only=True)["optimizer"]["per_kind"]
    assert set(state) == {"property", "forcefield"}
    prop, ff = state["property"]["state"], state["forcefield"]["state"]
    assert prop and ff
    shared = set(prop) & set(ff)                       # backbone parameters: moments in both states
    assert shared and set(prop) != set(ff)             # each head only in its own task's state
    some = next(iter(shared))
    assert not torch.equal(prop[some]["exp_avg_sq"], ff[some]["exp_avg_sq"])
    with pytest.raises(ValueError, match="task_optimizers applies"):
        _settings("ft", task_optimizers=True)


def test_mft_with_auxiliary_data_of_a_new_dataset(pretrained, tmp_path):
    """Auxiliary data under a dataset the model lacks: refused without new_dataset_from, else a new embedding
    column (copied from the named dataset) carries it; the old datasets keep theirs."""
    task = _task()
    aux = {"al_new": emt_structures("Al", 8, 11)}
    with pytest.raises(KeyError, match="set new_dataset_from"):
        finetune(task, _settings("mft"), tmp_path / "refused", pretrained, ff_structures=aux)
    finetune(task, _settings("mft", new_dataset_from="al"), tmp_path / "mft", pretrained, ff_structures=aux)
    from mftcalc.model.checkpoint import load_model
    model = load_model(tmp_path / "mft" / "model.pt", torch.float64)
    assert model.config.datasets == ["cu", "al", "al_new"]
    assert model.metadata["dataset_domains"]["al_new"] == {"elements": [13], "periodic": True}


def test_strategies_are_small_registered_objects():
    """What differs between strategies lives in their registry entry: the freezing rule and the sources."""
    from mftcalc.training.sampler import Source
    from mftcalc.training.strategies import STRATEGIES, get_strategy
    assert list(STRATEGIES) == ["scratch", "ft", "lp", "mft", "frozen-sklearn"]
    names = ["backbone.layers.0.node_self.weight", "ff_heads.forcefield.mlp.net.0.weight",
             "property_heads.vpa.mlp.net.0.weight"]
    trains = {s: [get_strategy(s).trainable(n, "vpa") for n in names] for s in STRATEGIES}
    assert trains == {"scratch": [True, False, True], "ft": [True, False, True], "lp": [False, False, True],
                      "mft": [True, True, True], "frozen-sklearn": [False, False, True]}
    prop = Source("toy", _task().train, "property", 0, 4, 1.0, "vpa")
    assert get_strategy("ft").sources(prop, None, ["cu", "al"], 0.5, 4) == [prop]
    ff = {"al": emt_structures("Al", 3, 1), "cu": emt_structures("Cu", 1, 2)}
    mft = get_strategy("mft").sources(prop, ff, ["cu", "al"], 0.6, 4)
    assert [(s.name, s.dataset_index, round(s.prob, 6)) for s in mft] == [("toy", 0, 0.6), ("ff:al", 1, 0.3),
                                                                          ("ff:cu", 0, 0.1)]
    with pytest.raises(KeyError, match="'fe' is not a dataset of the pretrained model"):
        get_strategy("mft").sources(prop, {"fe": ff["al"]}, ["cu", "al"], 0.5, 4)
    assert not get_strategy("frozen-sklearn").optimiser and not get_strategy("scratch").from_pretrained


def test_curve_probes_score_each_set_once_per_validation(pretrained, tmp_path, monkeypatch):
    """The val probe is the trainer's validation set: ``curve/val`` reuses its errors, the other probes (train,
    test) are scored once each per validation."""
    import csv
    import mftcalc.training.finetune as ft_module
    calls = []
    real = ft_module.property_errors

    def counted(model, structures, name, *args, **kwargs):
        calls.append(len(structures))
        return real(model, structures, name, *args, **kwargs)

    monkeypatch.setattr(ft_module, "property_errors", counted)
    task = _task()
    finetune(task, _settings("ft", curve_probe=100), tmp_path / "ft", pretrained)
    rows = list(csv.DictReader(open(tmp_path / "ft" / "val.csv")))
    assert len(rows) == 2                                      # steps 3 and 6
    for row in rows:
        assert float(row["curve/val/rmse"]) == float(row["val/toy-vpa/rmse"])
        assert float(row["curve/val/mae"]) == float(row["val/toy-vpa/mae"])
        assert float(row["curve/train/rmse"]) > 0 and float(row["curve/test/rmse"]) > 0
    # per validation: the train and test probes (finetune's own scoring of val/test at the end is separate)
    assert calls[:4] == [len(task.train), len(task.test_parts["test"])] * 2


def test_resume_from_another_pretrained_model_is_refused(pretrained, tmp_path):
    """A run's state remembers the content hash of the model it started from: rerunning the same command after
    the pretrained file changed (here: its energy shifts) must not silently continue the old run."""
    from mftcalc.model.checkpoint import load_model, save_model
    task = _task()
    finetune(task, _settings("ft"), tmp_path / "run", pretrained)
    finetune(task, _settings("ft"), tmp_path / "run", pretrained)            # same model: resumes at the end
    changed = load_model(pretrained, torch.float64)
    changed.ff_heads["forcefield"].shift[0] += 0.1
    save_model(changed, tmp_path / "other.pt", changed.metadata)
    with pytest.raises(ValueError, match=r"started from another model \(pretrained: [0-9a-f]{64} -> [0-9a-f]{64}\)"
                                         r".*Delete .*run to train from the new model"):
        finetune(task, _settings("ft"), tmp_path / "run", tmp_path / "other.pt")


def test_resume_on_changed_data_is_stated(pretrained, tmp_path):
    task = _task()
    finetune(task, _settings("ft"), tmp_path / "run", pretrained)
    relabelled = [s.with_labels(properties={"vpa": s.properties["vpa"] + 0.01}) for s in task.train]
    task2 = PropertyTask(task.name, task.property, task.unit, relabelled, task.val, task.test_parts, task.recipe)
    finetune(task2, _settings("ft"), tmp_path / "run", pretrained)
    log = (tmp_path / "run" / "resume.log").read_text()
    assert "data/toy-vpa:" in log and "source/toy-vpa" not in log   # same count, other labels


def test_structures_digest_sees_every_label():
    from mftcalc.data.structure import structures_digest
    s = emt_structures("Cu", 3, 0)
    base = structures_digest(s)
    assert structures_digest(emt_structures("Cu", 3, 0)) == base and len(base) == 16
    assert structures_digest(s[::-1]) != base
    assert structures_digest([s[0].with_labels(energy=s[0].energy + 1e-9)] + s[1:]) != base
    assert structures_digest([s[0].with_labels(properties={"x": 1.0})] + s[1:]) != base


def test_weight_average_is_what_finetuning_validates_keeps_and_writes(pretrained, tmp_path):
    """With ``ema_decay`` the probes, drift and best-on-validation follow the weight average: the written model
    scores exactly the best ``ema/val`` error, and ``curve/val`` is the average's, not the trained weights'."""
    import csv
    from mftcalc.model.checkpoint import load_model
    from mftcalc.training.evaluate import property_errors
    task = _task()
    finetune(task, _settings("ft", ema_decay=0.5, curve_probe=100, steps=9), tmp_path / "ft", pretrained)
    rows = list(csv.DictReader(open(tmp_path / "ft" / "val.csv")))
    raw = [float(r["val/toy-vpa/mae"]) for r in rows]
    avg = [float(r["ema/val/toy-vpa/mae"]) for r in rows]
    assert len(rows) == 3 and all(a != b for a, b in zip(raw, avg))
    for row in rows:
        assert float(row["curve/val/rmse"]) == float(row["ema/val/toy-vpa/rmse"])
    written = load_model(tmp_path / "ft" / "model.pt", dtype=torch.float64)
    mae = property_errors(written, task.val, "vpa")["mae"]
    assert mae == pytest.approx(min(avg), rel=1e-9, abs=0) and mae != pytest.approx(min(raw), rel=1e-6)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        _settings("ft", ema_decay=1.0)


def test_resume_without_the_best_model_file_rewrites_it_from_the_state(pretrained, tmp_path, monkeypatch):
    """A committed state resumed on another machine has no ``model.pt`` (git-ignored): the best weights kept in
    the state rewrite it, so the run ends as an uninterrupted one does. A state without that copy (written before
    it existed) restarts best-on-validation at the resume, and says so, instead of crashing at the end."""
    import csv
    import mftcalc.training.loop as loop
    task = _task()
    settings = _settings("ft", steps=9, lr0=0.05)     # a rate that overshoots: the best validation is the first
    straight = finetune(task, settings, tmp_path / "a", pretrained)
    maes = [float(r["val/toy-vpa/mae"]) for r in csv.DictReader(open(tmp_path / "a" / "val.csv"))]
    assert len(maes) == 3 and maes[0] < min(maes[1:])
    original = loop.Trainer.run
    for name, keep_copy in (("b", True), ("c", False)):
        with monkeypatch.context() as patch:      # killed after the first validation
            patch.setattr(loop.Trainer, "run", lambda self, stop_at=None, time_budget_s=None: original(self, stop_at=3))
            finetune(task, settings, tmp_path / name, pretrained)
        (tmp_path / name / "model.pt").unlink()   # a fresh clone: the state is committed, the model is not
        if not keep_copy:
            state = torch.load(tmp_path / name / "state.pt", weights_only=False)
            del state["best_model"]
            torch.save(state, tmp_path / name / "state.pt")
        resumed = finetune(task, settings, tmp_path / name, pretrained)
        log = (tmp_path / name / "resume.log").read_text()
        if keep_copy:
            assert "rewritten from the state's copy" in log
            assert resumed["test"] == straight["test"] and resumed["val"] == straight["val"]
        else:
            assert "best-on-validation restarts at this resume" in log
            assert resumed["val"]["mae"] == pytest.approx(min(maes[1:]), rel=1e-9)


@pytest.mark.parametrize("kind", ["features", "weights"])
def test_an_anchored_ft_drifts_less_and_resumes_to_the_same_result(pretrained, tmp_path, monkeypatch, kind):
    """FT with an anchor (mftcalc.training.anchor) moves the backbone less than plain FT; the reference is the
    prior even after a resume (a resumed run equals an uninterrupted one), and the penalty is logged."""
    import csv
    task = _task()
    plain = finetune(task, _settings("ft", lr0=3e-3), tmp_path / "plain", pretrained)
    straight = finetune(task, _settings("ft", lr0=3e-3, anchor=kind, anchor_weight=100.0), tmp_path / "a", pretrained)
    base = read_checkpoint(pretrained)["state_dict"]

    def moved(run):
        tuned = read_checkpoint(tmp_path / run / "model.pt")["state_dict"]
        return sum(float(((tuned[k] - base[k]) ** 2).sum()) for k in base if k.startswith("backbone."))
    assert 0 < moved("a") < moved("plain")
    assert straight["drift_w1"] < plain["drift_w1"] and straight["drift_rel"] < plain["drift_rel"]
    from mftcalc.model.card import model_card
    name = "feature anchor" if kind == "features" else "weight anchor (L2-SP)"
    assert f"strategy `ft`, with a {name} to the prior (weight 100.0)" in model_card(tmp_path / "a" / "model.pt")
    column = "toy-vpa/anchor_loss" if kind == "features" else "anchor_weights"
    with open(tmp_path / "a" / "train.csv") as fh:
        assert column in next(csv.reader(fh))
    import mftcalc.training.loop as loop
    original = loop.Trainer.run
    with monkeypatch.context() as patch:
        patch.setattr(loop.Trainer, "run", lambda self, stop_at=None, time_budget_s=None: original(self, stop_at=3))
        finetune(task, _settings("ft", lr0=3e-3, anchor=kind, anchor_weight=100.0), tmp_path / "b", pretrained)
    resumed = finetune(task, _settings("ft", lr0=3e-3, anchor=kind, anchor_weight=100.0), tmp_path / "b", pretrained)
    assert resumed["test"] == straight["test"]


@pytest.mark.parametrize("strategy", ["lp", "scratch", "frozen-sklearn"])
def test_an_anchor_on_a_strategy_without_a_trained_prior_backbone_is_refused(strategy):
    with pytest.raises(ValueError, match=f"strategy {strategy!r} does not train one"):
        _settings(strategy, anchor="features")
