"""Assemblies (mftcalc.data.assembly): frames grouped by an info key into one labelled item, their batch, and the
refusals that name the frame, the group and the fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from mftcalc import keys as K
from mftcalc.data.assembly import Assembly, components_of, group_structures
from mftcalc.data.batch import collate, collate_assemblies
from mftcalc.data.structure import Structure, structures_digest


def _frame(name: str, group, weight=None, label=None, **info) -> Structure:
    atoms = molecule(name)
    atoms.info["group"] = group
    if weight is not None:
        atoms.info["weight"] = weight
    atoms.info.update(info)
    s = Structure.from_ase(atoms)
    return s.with_labels(properties={"cp": label}, property_units={"cp": "K"}) if label is not None else s


def test_frames_become_groups_in_order_with_weights_labels_and_conditions():
    frames = [_frame("H2O", "b", 0.25, 300.0, pH=7.0), _frame("CH4", "a", None, 280.0, pH=5.0),
              _frame("NH3", "b", 0.75, 300.0, pH=7.0)]
    groups = group_structures(frames, frame_params=["pH"])
    assert [g.info["group"] for g in groups] == ["b", "a"]                  # first appearance
    assert [len(g.components) for g in groups] == [2, 1]
    np.testing.assert_array_equal(groups[0].weights, [0.25, 0.75])
    np.testing.assert_array_equal(groups[1].weights, [1.0])                 # no weight: 1
    assert groups[0].properties == {"cp": 300.0} and groups[0].property_units == {"cp": "K"}
    assert groups[0].info["pH"] == 7.0 and groups[1].info["pH"] == 5.0
    assert groups[0].n_atoms == 3 + 4 and list(groups[0].numbers) == [8, 1, 1, 7, 1, 1, 1]
    assert components_of(groups) == [frames[0], frames[2], frames[1]]
    assert components_of(frames) == frames                                  # plain structures pass through


def test_a_batch_of_groups_has_component_fields_and_one_label_per_group():
    groups = group_structures([_frame("H2O", 1, 2.0, 300.0), _frame("CH4", 1, 1.0, 300.0),
                               _frame("NH3", 2, None, 310.0)])
    batch = collate(groups, dtype=torch.float64)                             # collate dispatches
    assert batch[K.N_ATOMS].tolist() == [3, 5, 4]
    assert batch[K.GROUP_INDEX].tolist() == [0, 0, 1]
    assert batch[K.GROUP_WEIGHT].tolist() == [2.0, 1.0, 1.0]
    assert batch[K.property_key("cp")].tolist() == [300.0, 310.0]
    assert batch[K.has_property_key("cp")].tolist() == [True, True]
    same = collate_assemblies(groups, dtype=torch.float64, dataset=[3, 4])
    assert same[K.DATASET].tolist() == [3, 3, 4]                             # one dataset per group, repeated


def test_the_digest_sees_weights_and_labels():
    frames = [_frame("H2O", 1, 2.0, 300.0), _frame("CH4", 1, 1.0, 300.0)]
    base = group_structures(frames)
    heavier = [Assembly(base[0].components, [3.0, 1.0], base[0].properties, base[0].property_units, base[0].info)]
    relabelled = [Assembly(base[0].components, base[0].weights, {"cp": 301.0}, base[0].property_units, base[0].info)]
    digests = {structures_digest(x) for x in (base, heavier, relabelled)}
    assert len(digests) == 3


@pytest.mark.parametrize("frames, message", [
    ([_frame("H2O", 1, 1.0, 300.0), Structure.from_ase(molecule("CH4"))],
     r"data: frame 1 has no group key 'group'.*info\['group'\]"),
    ([_frame("H2O", 1, 0.0, 300.0)], r"frame 0 \(group 1\): component weight weight=0.0 must be finite and non-zero"),
    ([_frame("H2O", 1, float("nan"), 300.0)], r"must be finite and non-zero"),
    ([_frame("H2O", 1, "heavy", 300.0)], r"component weight weight='heavy' is not one real number"),
    ([_frame("H2O", 7, 1.0, 300.0), _frame("CH4", 7, 1.0, 301.0)],
     r"group 7 \(frames 0, 1\): its frames carry different 'cp' values.*same cp="),
    ([_frame("H2O", 7, 1.0, 300.0), _frame("CH4", 7, 1.0, None)], r"different 'cp' values \[300.0, None\]"),
])
def test_bad_groups_are_refused_naming_the_frame_and_the_fix(frames, message):
    with pytest.raises(ValueError, match=message):
        group_structures(frames)


def test_a_condition_that_differs_inside_a_group_is_refused():
    frames = [_frame("H2O", "g", 1.0, 300.0, pH=7.0), _frame("CH4", "g", 1.0, 300.0, pH=6.0)]
    with pytest.raises(ValueError, match=r"group 'g'.*different frame parameter 'pH' values \[7.0, 6.0\]"):
        group_structures(frames, frame_params=["pH"])
    with pytest.raises(ValueError, match="weights must be finite and non-zero"):
        Assembly([frames[0].with_labels()], [np.nan])


def test_signed_weights_are_for_summing_heads_only():
    """A reaction (products +1, reactants -1) is a group with signed weights; a weighted mean of it is refused."""
    from mftcalc.data.assembly import check_signed_weights
    frames = [_frame("H2O", "r", 1.0, -0.3), _frame("CH4", "r", -1.0, -0.3), _frame("NH3", "r", -2.0, -0.3)]
    reaction = group_structures(frames)
    assert reaction[0].weights.tolist() == [1.0, -1.0, -2.0]
    check_signed_weights(reaction, reduce_mean=False, where="data")            # a summing head: fine
    with pytest.raises(ValueError, match=r"data: group 'r' has negative component weights.*--extensive"):
        check_signed_weights(reaction, reduce_mean=True, where="data")
    check_signed_weights(group_structures(frames[:1]), reduce_mean=True, where="data")


def _write_grouped_system(root, name: str, components: list, group_id: int, weights, label: float,
                          mask_real_atom: bool = False) -> None:
    """A DPA-ADAPT grouped, mixed-type DeePMD system: one frame per component, padded to the largest with type -1
    (written here from the format's documentation: group_id/weight/pool_mask/real_atom_types .npy)."""
    type_map = ["H", "C", "N", "O"]
    n = max(len(a) for a in components)
    system = root / name / "set.000"
    system.mkdir(parents=True)
    (root / name / "type.raw").write_text("0\n" * n)
    (root / name / "type_map.raw").write_text("\n".join(type_map) + "\n")
    coord = np.zeros((len(components), n, 3))
    types = -np.ones((len(components), n), dtype=np.int32)
    for k, atoms in enumerate(components):
        coord[k, :len(atoms)] = atoms.positions
        types[k, :len(atoms)] = [type_map.index(s) for s in atoms.get_chemical_symbols()]
    mask = (types >= 0).astype(float)
    if mask_real_atom:
        mask[0, 0] = 0.0
    np.save(system / "coord.npy", coord.reshape(len(components), -1))
    np.save(system / "box.npy", np.tile(np.eye(3).ravel() * 50.0, (len(components), 1)))
    np.save(system / "real_atom_types.npy", types)
    np.save(system / "pool_mask.npy", mask)
    np.save(system / "group_id.npy", np.full(len(components), group_id))
    np.save(system / "weight.npy", np.asarray(weights, dtype=float))
    np.save(system / "target_property.npy", np.full((len(components), 1), label))


def test_dpa_adapt_grouped_deepmd_systems_read_as_groups(tmp_path):
    from mftcalc.data.io import read_structures
    _write_grouped_system(tmp_path, "row_0", [molecule("CH3OH"), molecule("H2O")], 0, [0.8, 0.2], 32.1)
    _write_grouped_system(tmp_path, "row_1", [molecule("NH3")], 0, [1.0], 40.0)
    frames = read_structures(tmp_path)
    assert [s.n_atoms for s in frames] == [6, 3, 4]                          # padding atoms dropped
    assert list(frames[1].numbers) == [8, 1, 1] and list(frames[2].numbers) == [7, 1, 1, 1]
    np.testing.assert_allclose(frames[1].positions, molecule("H2O").positions)
    assert [s.info["group"] for s in frames] == ["row_0:0", "row_0:0", "row_1:0"]   # ids are per system
    groups = group_structures(frames)
    assert len(groups) == 2 and groups[0].weights.tolist() == [0.8, 0.2]
    assert groups[0].properties == {"target_property": 32.1} and "group_id" not in frames[0].properties


def test_pool_masks_are_kept_and_markers_without_group_ids_refused(tmp_path):
    from mftcalc.data.io import read_structures
    _write_grouped_system(tmp_path / "a", "row_0", [molecule("CH3OH"), molecule("H2O")], 0, [0.8, 0.2], 1.0,
                          mask_real_atom=True)
    masked = read_structures(tmp_path / "a")                                 # a mask over real atoms is kept
    assert masked[0].pool_mask.tolist() == [False] + [True] * 5 and masked[1].pool_mask is None
    _write_grouped_system(tmp_path / "b", "row_0", [molecule("H2O")], 0, [1.0], 1.0)
    (tmp_path / "b" / "row_0" / "set.000" / "group_id.npy").unlink()
    with pytest.raises(ValueError, match="weight.npy or pool_mask.npy without group_id.npy"):
        read_structures(tmp_path / "b")


def test_a_pool_mask_round_trips_through_extxyz_and_is_validated(tmp_path):
    from mftcalc.data.io import read_structures, write_extxyz
    atoms = molecule("CH3OH")
    atoms.arrays["pool_mask"] = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    s = Structure.from_ase(atoms)
    assert s.pool_mask.tolist() == [True, True, False, False, False, False]
    write_extxyz([s], tmp_path / "m.extxyz")
    back = read_structures(tmp_path / "m.extxyz")[0]
    assert back.pool_mask.tolist() == s.pool_mask.tolist()
    assert structures_digest([back]) != structures_digest([back.with_labels(pool_mask=None)])
    assert Structure(s.positions, s.numbers, pool_mask=np.ones(6)).pool_mask is None      # all atoms: no mask
    with pytest.raises(ValueError, match="pool_mask leaves out every atom"):
        Structure(s.positions, s.numbers, pool_mask=np.zeros(6, bool))
    with pytest.raises(ValueError, match=r"pool_mask must be one 0/1 \(or bool\) value per atom, shape \(6,\)"):
        Structure(s.positions, s.numbers, pool_mask=np.ones(5, bool))
    batch = collate([s, Structure.from_ase(molecule("H2O"))])
    assert batch[K.POOL_MASK].tolist() == [1, 1, 0, 0, 0, 0, 1, 1, 1]
    assert K.POOL_MASK not in collate([Structure.from_ase(molecule("H2O"))])
