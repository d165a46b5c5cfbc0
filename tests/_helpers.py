"""Helpers shared by the tests: a tiny random model and small labelled structures (no pytest fixtures here)."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from mftcalc.data import Structure
from mftcalc.model.config import HeadConfig, ModelConfig, backbone_preset, default_forcefield_head
from mftcalc.model.mft_model import MFTModel

SHARED = Path(__file__).resolve().parents[2] / "shared"

def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_environment() -> dict:
    """A bare environment for a ``python -m mftcalc.cli`` subprocess: one thread, the shipped prior named
    explicitly, and the caller's build cache (``MFTCALC_CACHE``, ``XDG_CACHE_HOME``) so the compiled kernels are
    not rebuilt for the child (CI sets ``MFTCALC_CACHE`` inside its clone)."""
    import os
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
           "MFTCALC_PRETRAINED": str(Path(__file__).resolve().parents[1] / "models" / "pretrained.pt")}
    env.update({k: os.environ[k] for k in ("MFTCALC_CACHE", "XDG_CACHE_HOME") if k in os.environ})
    return env


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skips the test when the shared folder is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is only beside the repo in the dev/CI layout)")
    return path



#: the tiny model's two datasets: "a" for molecules of H, C, N, O, "b" for Si crystals (inferred per structure)
TINY_DOMAINS = {"a": {"elements": [1, 6, 7, 8], "periodic": False}, "b": {"elements": [14], "periodic": True}}


def save_tiny_model(path: Path, **kwargs) -> Path:
    """:func:`make_tiny_model` (``kwargs``) saved at ``path`` with metadata naming its elements and dataset
    domains (:data:`TINY_DOMAINS`), as a checkpoint a user would have; returns ``path``."""
    from mftcalc.model.checkpoint import model_metadata, save_model
    model = make_tiny_model(**kwargs)
    save_model(model, path, model_metadata(model, elements=[1, 6, 7, 8, 14], dataset_domains=TINY_DOMAINS))
    return Path(path)


def save_property_only_model(path: Path) -> Path:
    """A tiny model with a gap head and no force-field head (as an LP or frozen-sklearn fine-tune), saved."""
    from mftcalc.model.checkpoint import model_metadata, save_model
    torch.manual_seed(0)
    model = MFTModel(ModelConfig(backbone=backbone_preset("tiny"),
                                 heads={"gap": HeadConfig(kind="scalar", unit="Hartree", hidden=(8,))}))
    save_model(model, path, model_metadata(model, elements=[1, 6, 7, 8, 14]))
    return Path(path)


def make_tiny_model(seed: int = 0, dtype: torch.dtype = torch.float64, **backbone) -> MFTModel:
    """A tiny random model with a force-field head (2 datasets) and one scalar, dipole and ⟨R²⟩ head each."""
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone=backbone_preset("tiny", **backbone),
                      heads={"ff": default_forcefield_head(2, hidden=(16, 16)),
                             "gap": HeadConfig(kind="scalar", unit="Hartree", hidden=(16,)),
                             "mu": HeadConfig(kind="dipole", unit="Debye", hidden=(16,)),
                             "r2": HeadConfig(kind="r2", unit="bohr^2", hidden=(16,))},
                      datasets=["a", "b"])
    model = MFTModel(cfg)
    # non-trivial residual scales so every block matters in the tests (drawn before the dtype cast)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "res_" in name:
                p.uniform_(0.3, 0.7)
    return model.to(dtype).eval()



def emt_structures(symbol: str, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = bulk(symbol, "fcc", a=3.6 if symbol == "Cu" else 4.05, cubic=True)
        atoms.set_cell(atoms.cell * (1 + rng.normal(scale=0.01, size=(3, 3))), scale_atoms=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        out.append(Structure.from_ase(atoms))
    return out


# ---------------------------------------------------------------- the import graph of src/mftcalc (architecture tests)
SRC = Path(__file__).resolve().parents[1] / "src"


def source_modules():
    out = {}
    for path in (SRC / "mftcalc").rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def import_graph() -> nx.DiGraph:
    """Directed graph module -> module it imports (module level or inside functions, absolute or relative).

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``; a
    module's own ancestor packages are not counted (Python runs them first anyway)."""
    modules = source_modules()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        ancestors = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                if target in modules and target != name and target not in ancestors:
                    graph.add_edge(name, target)
    return graph


def scored_gap_model(train: list) -> MFTModel:
    """A tiny float64 model with a force field, a ``gap`` head (Hartree) and the applicability head ``ood_score``
    fitted on ``train`` (Structures), in eval mode."""
    from mftcalc.model.applicability import fit_applicability, pooled_features
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone_preset("tiny"),
                      heads={"ff": default_forcefield_head(1, hidden=(16,)),
                             "gap": HeadConfig(kind="scalar", unit="Hartree", hidden=(16,)),
                             "ood_score": HeadConfig(kind="knn_ood", unit="")})
    model = MFTModel(cfg).double().eval()
    fit_applicability(model.property_heads["ood_score"], pooled_features(model, train), [s.numbers for s in train])
    return model
