"""Export check: the TorchScript export of a model gives what the eager model gives (both float64, both called
through the calculator's path), from either side: an eager model or checkpoint is exported here, a TorchScript
file is rebuilt as the eager ``MFTModel`` from the config and weights it carries."""
from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from mftcalc import keys as K
from mftcalc.data.structure import Structure
from mftcalc.model.checkpoint import export_torchscript, load_any
from mftcalc.model.config import ModelConfig
from mftcalc.model.mft_model import MFTModel
from mftcalc.testing.results import CheckResult, Tolerances, skipped
from mftcalc.testing.subject import Subject, compare_rows
from mftcalc.testing.symmetry import FORCEFIELD_KEYS


def _export_config(path: Path) -> dict:
    """The ``config.json`` a TorchScript export carries (``export_torchscript``); raise naming the file if none."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if n.endswith("/extra/config.json")]
        text = zf.read(names[0]).decode() if names else ""
    if not text:
        raise ValueError(f"{path} carries no config.json, so its eager model cannot be rebuilt; re-export it with "
                         "`mftcalc export CKPT -o FILE`")
    return json.loads(text)


def _rebuild_eager(path: Path, scripted: torch.nn.Module, metadata: dict) -> MFTModel:
    """The eager ``MFTModel`` of a TorchScript export: its config, its weights, its active force-field head."""
    model = MFTModel(ModelConfig.from_dict(_export_config(path))).to(torch.float64)
    weights = scripted.state_dict()            # TorchScript also lists non-persistent buffers: take the model's
    missing = [k for k in model.state_dict() if k not in weights]
    if missing:
        raise ValueError(f"{path} lacks the weights {missing[:5]} of the model its config.json describes; "
                         "re-export it with `mftcalc export CKPT -o FILE`")
    model.load_state_dict({k: weights[k] for k in model.state_dict()})
    model.active_ff_head = str(scripted.active_ff_head)
    model.metadata = metadata  # type: ignore[attr-defined]
    return model.eval()


def counterpart(model: Any, subject: Subject, fused: bool = False,
                dataset: Optional[str] = None, head: Optional[str] = None) -> Tuple[Optional[Subject], str]:
    """The other side of ``model`` (the subject under check): its TorchScript export (``fused``: the C++ angle
    operator, default the portable plain-torch file) when it is eager, its eager rebuild when it is an export.
    Returns ``(subject or None, what it is, or why there is none)``."""
    if isinstance(model, (str, Path)) and isinstance(subject.module, torch.jit.ScriptModule):
        scripted, metadata = load_any(model, torch.float64)
        eager = _rebuild_eager(Path(model), scripted, metadata)
        return Subject.load(eager, dataset=dataset, head=head), "the eager MFTModel rebuilt from the export"
    if isinstance(subject.module, torch.jit.ScriptModule):
        return None, "a TorchScript module object carries no config: pass the export's path to compare it"
    if not isinstance(subject.module, MFTModel):
        return None, f"{type(subject.module).__name__} is not an MFTModel, so it has no TorchScript export"
    with tempfile.TemporaryDirectory(prefix="mftcalc-check-") as tmp:
        path = Path(tmp) / "export.pt"
        export_torchscript(subject.module, path, fused=fused)
        exported = Subject.load(path, dataset=dataset, head=head)
    return exported, f"its TorchScript export ({'fused' if fused else 'portable'})"


def check_export(model: Any, subject: Subject, structures: Sequence[Structure], names: Sequence[str],
                 tol: Tolerances, fused: bool = False, dataset: Optional[str] = None,
                 head: Optional[str] = None) -> List[CheckResult]:
    """Every output of every structure (one batch) equal between ``subject`` and :func:`counterpart`."""
    other, what = counterpart(model, subject, fused, dataset, head)
    if other is None:
        return [skipped("export", "*", K.ENERGY, what)]
    keys = list(FORCEFIELD_KEYS) + list(subject.properties)
    out = []
    for name, row, ref in zip(names, other.evaluate(structures), subject.evaluate(structures)):
        out += compare_rows("export", name, row, ref, keys, tol.exact_rtol, tol.exact_atol, f"against {what}")
    return out
