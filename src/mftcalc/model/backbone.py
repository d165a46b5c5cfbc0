"""DPA3-style backbone ("repflow"): node, edge and angle features updated together on flat index lists.

Written from the description of DPA3 (arXiv 2506.01686) and deepmd-kit's ``repflow_layer``: per layer a node
update (self MLP, the symmetrised equivariant-to-invariant term of edge vectors, and a switch-weighted
edge-to-node message), an edge update (self MLP and an angle-to-edge reduction) and an angle update, each
added with learnable per-channel residual scales (DPA3's ``res_residual``, init 0.1). All linears that take a
concatenation of node/edge/angle features are split by input so that they run per node or per edge before the
gather, never on a concatenated per-angle tensor.

Options that reproduce deepmd-kit's DPA3 exactly (``BackboneConfig``; their defaults keep mftcalc's first
numerics): ``switch`` (``exp`` = ``use_exp_switch``), ``edge_std``/``h2_std`` (``fix_stat_std``, constant buffers
that divide the edge input and h2, not folded into weights), ``a_compress``/``a_compress_e`` (separate node and edge
widths of the angle block) and ``a_compress_linear`` (``a_compress_use_split: false``). None of them changes the
angle block's interface, so the fused C++ operator serves them all.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from mftcalc.model.config import BackboneConfig
from mftcalc.kernels.angle import AngleBlock
from mftcalc.model.layers import SiLUT, make_activation, switch_function
from mftcalc.model.segment import segment_sum, sorted_gather, transposed_gather

log = logging.getLogger(__name__)


def _residual(width: int, value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((width,), value))


class RepFlowLayer(nn.Module):
    """One message-passing layer updating node [N, n], edge [E, e] and angle [A, a] features."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        n, e, a = cfg.n_dim, cfg.e_dim, cfg.a_dim
        self.n_dim, self.e_dim, self.a_dim = n, e, a
        self.axis = cfg.axis_neuron
        self.nc, self.ec = angle_widths(cfg)      # node and edge channels seen by the angle block
        self.e_scale = cfg.e_sel_norm ** -0.5
        self.e_norm = 1.0 / cfg.e_sel_norm
        self.a_norm = cfg.a_sel_norm ** -0.5
        self.act = make_activation(cfg.activation)
        # node self
        self.node_self = nn.Linear(n, n)
        # symmetrisation (grrg of edge features and of neighbour node features)
        self.node_sym = nn.Linear(self.axis * (n + e), n)
        # edge-info linears for [node_i | node_j | edge] -> (node message n, edge self e), split by input
        self.ee_node_i = nn.Linear(n, n + e, bias=False)
        self.ee_node_j = nn.Linear(n, n + e, bias=False)
        self.ee_edge = nn.Linear(e, n + e)
        # angle-info linears for [angle | node_i | edge_ik | edge_ij] -> (edge-angle e, angle self a)
        self.aa_angle = nn.Linear(a, e + a)
        # deepmd-kit's a_compress_use_split: false -> bias-free compression maps (only built when asked for, so the
        # random initialisation of models without them is unchanged)
        self.compress_node: Optional[nn.Linear] = nn.Linear(n, self.nc, bias=False) if cfg.a_compress_linear else None
        self.compress_edge: Optional[nn.Linear] = nn.Linear(e, self.ec, bias=False) if cfg.a_compress_linear else None
        self.aa_node = nn.Linear(self.nc, e + a, bias=False)
        self.aa_edge_ik = nn.Linear(self.ec, e + a, bias=False)
        self.aa_edge_ij = nn.Linear(self.ec, e + a, bias=False)
        self.edge_angle2 = nn.Linear(e, e)
        r = cfg.update_residual
        self.res_node = nn.ParameterList([_residual(n, r), _residual(n, r), _residual(n, r)])
        self.res_edge = nn.ParameterList([_residual(e, r), _residual(e, r)])
        self.res_angle = _residual(a, r)
        # the fused C++ angle operator implements SiLUT; other activations take the eager path below
        self.angle_block = AngleBlock(e, self.act.threshold, cfg.angle_backend) if isinstance(self.act, SiLUT) else None

    def residual_scales(self) -> List[nn.Parameter]:
        """The per-channel scales of the residual updates: three node [n], two edge [e], one angle [a]."""
        return [*self.res_node, *self.res_edge, self.res_angle]

    def _sym(self, node: Tensor, edge: Tensor, h2_pad: Tensor, graph: Dict[str, Tensor]) -> Tensor:
        """grrg of edge features and of neighbour node features -> [N, axis·(e+n)] invariant.

        ``h2_pad`` [N, 3, K]: switch-weighted equivariant edge terms in the padded per-centre layout, so the
        neighbour sum Σ_j h2_ij ⊗ f_ij is one batched matmul per layer instead of an [E, 3, d] product + reduction.
        """
        n_nodes = node.shape[0]
        k = h2_pad.shape[2]
        zero_e = torch.zeros(1, self.e_dim, dtype=edge.dtype, device=edge.device)
        zero_n = torch.zeros(1, self.n_dim, dtype=node.dtype, device=node.device)
        feat = torch.cat([torch.cat([edge, zero_e], 0).index_select(0, graph["pad_edge"]),
                          torch.cat([node, zero_n], 0).index_select(0, graph["pad_neighbor"])], 1)
        hg = torch.bmm(h2_pad, feat.view(n_nodes, k, self.e_dim + self.n_dim)) * self.e_scale   # [N, 3, e+n]
        hg_e = hg[:, :, : self.e_dim]
        hg_n = hg[:, :, self.e_dim:]
        sym_e = torch.bmm(hg_e[:, :, : self.axis].transpose(1, 2), hg_e) / 3.0
        sym_n = torch.bmm(hg_n[:, :, : self.axis].transpose(1, 2), hg_n) / 3.0
        return torch.cat([sym_e.reshape(n_nodes, self.axis * self.e_dim),
                          sym_n.reshape(n_nodes, self.axis * self.n_dim)], 1)

    def forward(self, node: Tensor, edge: Tensor, angle: Tensor, h2_pad: Tensor, sw: Tensor, a_sw: Tensor,
                graph: Dict[str, Tensor], update_edges: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
        """Updated (node, edge, angle) features. ``update_edges=False`` updates the nodes only and returns the
        edge and angle features unchanged: the node update reads the incoming edges, so in the last layer, when
        nothing reads the edges afterwards, the angle block and the edge update are dead work."""
        n, e = self.n_dim, self.e_dim
        edge_index = graph["edge_index"]
        a_edges, a_ij, a_ik = graph["a_edges"], graph["a_ij"], graph["a_ik"]
        counts, a_counts, a_node_counts = graph["node_counts"], graph["a_counts"], graph["a_node_counts"]
        i = edge_index[0]
        j = edge_index[1]
        sw_col = sw.unsqueeze(1)

        # ---- node updates
        node_self = self.act(self.node_self(node))
        sym = self._sym(node, edge, h2_pad, graph)
        node_sym = self.act(self.node_sym(sym))
        edge_info = self.act(sorted_gather(self.ee_node_i(node), i, counts) + self.ee_node_j(node)[j]
                             + self.ee_edge(edge))                                              # [E, n+e]
        msg = edge_info[:, :n] * sw_col
        node_msg = segment_sum(msg, i, counts) * self.e_norm
        node_new = node + self.res_node[0] * node_self + self.res_node[1] * node_sym + self.res_node[2] * node_msg
        if not update_edges:
            return node_new, edge, angle
        edge_self = edge_info[:, n:]

        # ---- angle block (per-angle work: one small matmul, two gathers, one activation, one segment sum)
        edge_a = edge[a_edges]
        compress_node = self.compress_node
        compress_edge = self.compress_edge
        if compress_node is not None and compress_edge is not None:
            node_c = compress_node(node)                                                       # [N, nc]
            edge_c = compress_edge(edge_a)                                                     # [Ea, ec]
        else:
            node_c = node[:, : self.nc]
            edge_c = edge_a[:, : self.ec]
        p_ij = self.aa_edge_ij(edge_c) + sorted_gather(self.aa_node(node_c), i[a_edges], a_node_counts)  # [Ea, e+a]
        p_ik = self.aa_edge_ik(edge_c)                                                          # [Ea, e+a]
        if self.angle_block is not None:
            red, angle_new = self.angle_block(angle, p_ij, p_ik, self.aa_angle.weight.t(), self.aa_angle.bias, a_sw,
                                              self.res_angle, a_ij, a_ik)                       # [Ea, e], [A, a]
            red = red * self.a_norm
        else:
            x = self.act(self.aa_angle(angle) + sorted_gather(p_ij, a_ij, a_counts)
                         + transposed_gather(p_ik, a_ik, a_ij, a_counts, graph["a_transpose"]))  # [A, e+a]
            red = segment_sum(x[:, :e] * a_sw.unsqueeze(1), a_ij, a_counts) * self.a_norm
            angle_new = angle + self.res_angle * x[:, e:]
        padded = torch.zeros(edge.shape[0], e, dtype=node.dtype, device=node.device).index_copy(0, a_edges, red)
        edge_angle = self.act(self.edge_angle2(padded))

        edge = edge + self.res_edge[0] * edge_self + self.res_edge[1] * edge_angle
        return node_new, edge, angle_new


class Backbone(nn.Module):
    """Type embedding (Z = 1..118) + initial edge/angle embeddings + ``n_layers`` :class:`RepFlowLayer`."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.e_rcut, self.e_rcut_smth = float(cfg.e_rcut), float(cfg.e_rcut_smth)
        self.a_rcut, self.a_rcut_smth = float(cfg.a_rcut), float(cfg.a_rcut_smth)
        if not (0 < cfg.a_rcut_smth < cfg.a_rcut <= cfg.e_rcut and 0 < cfg.e_rcut_smth < cfg.e_rcut):
            raise ValueError("cutoffs must satisfy 0 < a_rcut_smth < a_rcut <= e_rcut and 0 < e_rcut_smth < e_rcut")
        self.type_embedding = nn.Embedding(cfg.n_types, cfg.n_dim)
        self.edge_embedding = nn.Linear(1, cfg.e_dim)
        self.angle_embedding = nn.Linear(1, cfg.a_dim, bias=False)
        self.act = make_activation(cfg.activation)
        self.switch = str(cfg.switch)
        # environment normalisation (DPA3's fix_stat_std): constants from the config, kept out of the state dict
        # (non-persistent) so that checkpoints written before the option load unchanged; float64 so that a
        # float64 model divides by exactly the configured value
        self.register_buffer("edge_std", torch.tensor(float(cfg.edge_std), dtype=torch.float64), persistent=False)
        self.register_buffer("h2_std", torch.tensor(float(cfg.h2_std), dtype=torch.float64), persistent=False)
        self.layers = nn.ModuleList([RepFlowLayer(cfg) for _ in range(cfg.n_layers)])
        if cfg.n_layers and not isinstance(self.act, SiLUT) and cfg.angle_backend != "reference":
            log.info("angle block: activation %r is not SiLUT, so the fused C++ operator does not apply; the "
                     "plain-torch angle block runs (requested backend %r)", cfg.activation, cfg.angle_backend)
        self.n_dim = cfg.n_dim
        self.e_dim = cfg.e_dim

    def edge_input(self, dist: Tensor, sw: Tensor) -> Tensor:
        """Radial input of the edge embedding, [E, 1] in 1/Å: DPA3's ``s = sw(r)/r`` over ``edge_std``, from the
        distances ``dist`` [E] (Å) and switch values ``sw`` [E]. (A probe may override it with a wider basis.)"""
        return (sw / dist / self.edge_std.to(dist.dtype)).unsqueeze(1)

    def angle_input(self, cos: Tensor) -> Tensor:
        """Input of the angle embedding, [A, 1]: DPA3's ``cos θ_jik / sqrt(π)`` from the cosines ``cos`` [A]."""
        return (cos / math.sqrt(math.pi)).unsqueeze(1)

    def forward(self, numbers: Tensor, vectors: Tensor, graph: Dict[str, Tensor],
                edge_features: bool = True) -> Tuple[Tensor, Tensor]:
        """Args: numbers [N]; vectors [E, 3] Å (edge vectors r_ij); ``graph`` from ``build_graph``.

        Returns: node features [N, n_dim] and edge features [E, e_dim]. With ``edge_features=False`` the last
        layer skips its edge and angle updates (nothing downstream of it reads them) and the edge features
        returned are those entering the last layer.
        """
        a_edges, a_ij, a_ik = graph["a_edges"], graph["a_ij"], graph["a_ik"]
        dist = torch.sqrt((vectors * vectors).sum(1) + 1e-12)                 # [E]
        sw = switch_function(self.switch, dist, self.e_rcut_smth, self.e_rcut)   # [E]
        s = sw / dist
        h2 = vectors * (s / dist).unsqueeze(1) / self.h2_std.to(vectors.dtype)   # [E, 3] 1/Å
        edge = self.act(self.edge_embedding(self.edge_input(dist, sw)))      # [E, e]
        d_a = dist[a_edges]
        sw_a = switch_function(self.switch, d_a, self.a_rcut_smth, self.a_rcut)
        unit = vectors[a_edges] / (d_a + 1e-6).unsqueeze(1)
        cos = (unit[a_ij] * unit[a_ik]).sum(1) * (1.0 - 1e-6)
        angle = self.angle_embedding(self.angle_input(cos))                   # [A, a]
        a_sw = sw_a[a_ij] * sw_a[a_ik]
        node = self.act(self.type_embedding(numbers))
        n_nodes = numbers.shape[0]
        h2sw = torch.cat([h2 * sw.unsqueeze(1), torch.zeros(1, 3, dtype=h2.dtype, device=h2.device)], 0)
        pad_edge = graph["pad_edge"]
        h2_pad = h2sw.index_select(0, pad_edge).view(n_nodes, pad_edge.shape[0] // max(n_nodes, 1), 3)
        h2_pad = h2_pad.transpose(1, 2).contiguous()                          # [N, 3, K]
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            node, edge, angle = layer(node, edge, angle, h2_pad, sw, a_sw, graph, edge_features or k < last)
        return node, edge


def angle_widths(cfg: BackboneConfig) -> Tuple[int, int]:
    """(node, edge) channel counts fed to the angle block: all channels when ``a_compress`` (``a_compress_e``) is
    0, else those widths; with split compression (``a_compress_linear`` False) at most ``n_dim`` (``e_dim``)."""
    n, e = cfg.n_dim, cfg.e_dim
    nc = n if cfg.a_compress == 0 else cfg.a_compress
    ec_wanted = cfg.a_compress_e if cfg.a_compress_e > 0 else cfg.a_compress
    ec = e if ec_wanted == 0 else ec_wanted
    if not cfg.a_compress_linear:
        nc, ec = min(nc, n), min(ec, e)
    return nc, ec
