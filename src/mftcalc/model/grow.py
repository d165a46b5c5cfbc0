"""Adding capacity to a trained model: deeper (``grow_layers``: appended message-passing layers that start as the
identity, keeping the predictions, or with set residual scales, acting at once) or wider (``widen_backbone``: more
node/edge/angle channels that start at zero, keeping the predictions).

A trained backbone that underfits its data (train error ≈ validation error) has too little capacity or too little
training; adding layers tests the first without throwing the training away. Each appended
:class:`~mftcalc.model.backbone.RepFlowLayer` gets freshly initialised weights and, by default, **zero residual
scales** (``RepFlowLayer.residual_scales``), so its node, edge and angle outputs equal its inputs and the grown
model's energies, forces, stresses and properties equal the base model's to rounding. The residual scales
receive gradients from the first step (ReZero-style), and the new layers' weights do once their scales move;
at a continuation's small learning rate that is slow (``residual_init`` says how slow, and how to start the
scales at a fresh layer's value instead).

The base's last layer skipped its edge and angle updates (nothing read them; see ``Backbone.forward``), so those
weights are untrained; in the grown model they feed the new layers, which ignore them until their scales move.
"""
from __future__ import annotations

import dataclasses

import torch

from mftcalc.model.config import ModelConfig
from mftcalc.model.mft_model import MFTModel


def grow_layers(base: MFTModel, n_new: int, seed: int = 0, residual_init: float = 0.0) -> MFTModel:
    """A copy of ``base`` with ``n_new`` layers appended to its backbone, identity-initialised by default.

    Args:
        base: a trained model (any heads); not modified.
        n_new: layers to append (≥ 1).
        seed: seed of the new layers' weight initialisation.
        residual_init: the new layers' residual scales. 0 (default): the grown model predicts what ``base``
            predicts, but the new layers engage only as fast as the optimiser moves their scales off zero, which
            at a continuation's small learning rate is slow (a 3 -> 6 layer model at lr 1e-4..4e-5 had moved its
            new node scales to 0.001-0.004 after 15,000 Adam steps; the trained layers' are 0.05-0.3). A positive
            value (e.g. the fresh-model default 0.1) engages the new layers at once and changes the predictions
            at step 0, which the training must first recover.
    Returns:
        The grown model (``base``'s dtype, train mode), whose ``config.backbone.n_layers`` is the base's plus
        ``n_new``; ``metadata`` is the base's plus ``grown_from`` (the base's content hash and layer count, the
        seed and ``residual_init``).
    """
    if n_new < 1:
        raise ValueError(f"n_new must be at least 1, got {n_new}")
    if not residual_init >= 0.0:
        raise ValueError(f"residual_init must be >= 0 (0: exact identity; 0.1: a fresh layer's scale), "
                         f"got {residual_init}")
    old = base.config.backbone.n_layers
    config = ModelConfig(backbone=dataclasses.replace(base.config.backbone, n_layers=old + n_new),
                         heads=dict(base.config.heads), datasets=list(base.config.datasets))
    dtype = next(base.parameters()).dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MFTModel(config).to(dtype)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    new_prefixes = tuple(f"backbone.layers.{k}." for k in range(old, old + n_new))
    if unexpected or any(not key.startswith(new_prefixes) for key in missing):
        raise RuntimeError(f"growing {old} -> {old + n_new} layers: unexpected keys {unexpected}, "
                           f"missing keys outside the new layers {[k for k in missing if not k.startswith(new_prefixes)]}")
    with torch.no_grad():
        for layer in list(model.backbone.layers)[old:]:
            for scale in layer.residual_scales():
                scale.fill_(residual_init)
    meta = dict(getattr(base, "metadata", {}))
    meta["grown_from"] = {"content_sha256": getattr(base, "content_sha256", None), "n_layers": old,
                          "n_new": n_new, "seed": seed, "residual_init": residual_init}
    model.metadata = meta                                              # type: ignore[attr-defined]
    model.train()
    return model


def widen_backbone(base: MFTModel, n_dim: int, e_dim: int, a_dim: int, seed: int = 0) -> MFTModel:
    """A copy of ``base`` with wider node, edge and angle features that predicts exactly what ``base`` predicts.

    The new channels are appended after the old ones. Every weight row (and bias) that *produces* a new channel is
    zero, as are the new channels of the type, edge and angle embeddings, so the new features are ``act(0) = 0`` in
    every layer and the old ones are computed as before. The weights that *read* a new channel into an old one keep
    their fresh random initialisation: they multiply zeros now, and they carry the loss's gradient to the zero rows
    from the first step, so the new channels start to learn at once, each differently. The new channels' residual
    scales take the config's ``update_residual``.

    Args:
        base: a trained model (``a_compress`` 0, ``a_compress_linear`` off); not modified. Its heads' first
            layers read the new node channels through fresh weights, like the backbone's.
        n_dim, e_dim, a_dim: the new widths, each at least the old one, one of them larger.
        seed: seed of the fresh weights.
    Returns:
        The widened model (``base``'s dtype, train mode); ``metadata`` is the base's plus ``widened_from`` (the
        base's content hash and widths).
    """
    old_bb = base.config.backbone
    n0, e0, a0 = old_bb.n_dim, old_bb.e_dim, old_bb.a_dim
    if n_dim < n0 or e_dim < e0 or a_dim < a0 or (n_dim, e_dim, a_dim) == (n0, e0, a0):
        raise ValueError(f"the new widths (n_dim {n_dim}, e_dim {e_dim}, a_dim {a_dim}) must each be at least the "
                         f"model's ({n0}, {e0}, {a0}) and one of them larger")
    if old_bb.a_compress or old_bb.a_compress_e or old_bb.a_compress_linear:
        raise ValueError("widening needs a_compress 0 and a_compress_linear off (the angle block reads every "
                         "channel); this model compresses them")
    config = ModelConfig(backbone=dataclasses.replace(old_bb, n_dim=n_dim, e_dim=e_dim, a_dim=a_dim),
                         heads=dict(base.config.heads), datasets=list(base.config.datasets))
    dtype = next(base.parameters()).dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MFTModel(config).to(dtype)
    axis = old_bb.axis_neuron
    span = {"n": (n0, n_dim), "e": (e0, e_dim), "a": (a0, a_dim)}

    def blocks(*kinds: str) -> torch.Tensor:
        """New positions of the old entries of a dimension laid out as the concatenation of ``kinds``."""
        out, offset = [], 0
        for kind in kinds:
            old, new = span[kind] if kind in span else (int(kind), int(kind))
            out.append(torch.arange(old) + offset)
            offset += new
        return torch.cat(out)

    sym = blocks(*(["e"] * axis + ["n"] * axis))               # node_sym input: axis x e, then axis x n, flattened
    # (output layout, input layout) of each parameter whose shape changes; the output dimension produces channels
    layouts = {"node_self": (("n",), ("n",)), "node_sym": (("n",), sym), "ee_node_i": (("n", "e"), ("n",)),
               "ee_node_j": (("n", "e"), ("n",)), "ee_edge": (("n", "e"), ("e",)),
               "aa_angle": (("e", "a"), ("a",)), "aa_node": (("e", "a"), ("n",)),
               "aa_edge_ik": (("e", "a"), ("e",)), "aa_edge_ij": (("e", "a"), ("e",)),
               "edge_angle2": (("e",), ("e",)), "edge_embedding": (("e",), ("1",)),
               "angle_embedding": (("a",), ("1",))}
    residual = {"res_node": "n", "res_edge": "e", "res_angle": "a"}
    new_state = model.state_dict()
    for key, old in base.state_dict().items():
        new = new_state[key]
        if old.shape == new.shape:
            new.copy_(old)
            continue
        parts = key.split(".")
        owner = parts[-2]
        if parts[0] != "backbone" and old.dim() == 2 and new.shape[1] - old.shape[1] == n_dim - n0:
            # a head's first layer: it reads [node | extra inputs (the force field's dataset one-hot)]
            new[:, blocks("n", str(old.shape[1] - n0))] = old   # new channels' columns keep their fresh weights
        elif owner in residual or parts[-1] in residual:
            new[: old.shape[0]] = old                 # the new channels' scales keep update_residual
        elif key == "backbone.type_embedding.weight":
            new.zero_()
            new[:, blocks("n")] = old
        elif owner in layouts:
            out_kinds, in_layout = layouts[owner]
            rows = blocks(*out_kinds)
            fresh = new.clone()
            new.zero_()                               # the rows (and biases) of new channels: zero
            if parts[-1] == "bias":
                new[rows] = old
            else:
                cols = in_layout if isinstance(in_layout, torch.Tensor) else blocks(*in_layout)
                new[rows] = fresh[rows]               # old channels read new ones through fresh weights
                new[rows[:, None], cols[None, :]] = old
        else:
            raise RuntimeError(f"widening: no layout for {key} {tuple(old.shape)} -> {tuple(new.shape)}")
    model.load_state_dict(new_state)
    meta = dict(getattr(base, "metadata", {}))
    meta["widened_from"] = {"content_sha256": getattr(base, "content_sha256", None), "n_dim": n0, "e_dim": e0,
                            "a_dim": a0, "seed": seed}
    model.metadata = meta                                              # type: ignore[attr-defined]
    model.train()
    return model
