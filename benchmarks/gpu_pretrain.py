"""Pretraining steps on a lent GPU: the first and most valuable part of the GPU session (issue 15 before issue 19).

The prior (``configs/dev/pretrain_cpu_3l_cycle5.yaml``, its fifth cycle: 3 layers, Huber force loss, a moving
average of the weights, restarted from the fourth cycle's best arm ``configs/dev/pretrain_cpu_3l_huber.yaml``; state
in ``checkpoints/pretrain5/``; the cycles before it: ``configs/dev/pretrain_cpu.yaml``, ``checkpoints/pretrain/``)
trains at ~3 steps/s on two CPU cores, far from its target. A lent GPU continues the same run from its committed state, with every batch
``--batch-scale`` times larger (the same molecular-weighted mixture and learning-rate schedule; the resume states the
changed batch sizes and device in the state folder's ``resume.log``), for ``--minutes``, then packs the new state
and logs into one tar file to bring back.

Two steps:

- here, where ``../shared`` exists: ``python benchmarks/gpu_pretrain.py --pack`` writes the config's datasets that
  live outside the repository (the DFT sets in ``../shared/data/forcefield``, which do not travel) into ``.gpu/``
  (git-ignored, carried), already filtered and subsampled as the config does (so the trainer sees the same
  structures in the same order: same training/validation split), xz-compressed, and ``.gpu/pretrain.json`` with the
  overrides that point the config at them;
- on the device machine (``gpu_session.sh`` does it first): ``python benchmarks/gpu_pretrain.py --minutes 3.5``
  trains on CUDA and writes ``$OUT/pretrain.tar`` (``state.pt``, ``train.csv``, ``val.csv``, ``resume.log``).
  Back here: ``tar -xf <files_at>/pretrain.tar -C <the config's out_dir>`` (printed at the end) and commit.

``--dry-run`` runs the same path on CPU for a few seconds on a copy of the state in a temporary folder (the
committed state is not touched).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
CONFIG = "configs/dev/pretrain_cpu_3l_cycle5.yaml"
PACK = REPO / ".gpu"
OVERRIDES = PACK / "pretrain.json"
BROUGHT_BACK = ("state.pt", "train.csv", "val.csv", "resume.log")


def _ignore_pack_folder() -> None:
    exclude = REPO / ".git" / "info" / "exclude"
    if exclude.parent.is_dir() and "/.gpu/" not in (exclude.read_text() if exclude.exists() else ""):
        with open(exclude, "a") as fh:
            fh.write("/.gpu/\n")


def pack(config: str) -> None:
    """Write the outside-repository datasets of ``config`` into ``.gpu/`` and their overrides into pretrain.json."""
    from mftcalc.data.io import write_extxyz
    from mftcalc.training.forcefield_data import read_dataset, select_structures
    from mftcalc.training.pretrain import PretrainConfig

    cfg = PretrainConfig.from_yaml(REPO / config)
    _ignore_pack_folder()
    (PACK / "forcefield").mkdir(parents=True, exist_ok=True)
    overrides = []
    for k, spec in enumerate(cfg.datasets):
        if (REPO / spec.path.split("*")[0]).resolve().is_relative_to(REPO):
            continue                                   # inside the repository: it travels anyway
        structures = select_structures(read_dataset(spec.path), spec.name, spec.path, spec.exclude_splits,
                                       spec.exclude_properties, spec.max_force, spec.max_structures, cfg.seed + k)
        target = PACK / "forcefield" / f"{spec.name}.extxyz.xz"
        write_extxyz(structures, target)
        # already filtered and subsampled: the filters must not run again (a second seeded subsample would differ)
        overrides += [f"datasets.{k}.path={target.relative_to(REPO)}", f"datasets.{k}.max_force=null",
                      f"datasets.{k}.max_structures=null"]
        print(f"packed {spec.name}: {len(structures)} structures, {target.stat().st_size / 2**20:.2f} MiB")
    OVERRIDES.write_text(json.dumps({"config": config, "set": overrides}, indent=1) + "\n")
    total = sum(p.stat().st_size for p in PACK.rglob("*") if p.is_file())
    print(f".gpu/ holds {total / 2**20:.1f} MiB; carry it: run(carry=['.gpu', '.whl'])")


def train(minutes: float, batch_scale: int, device: str, out: Path, dry_run: bool) -> None:
    """Continue the committed pretraining on ``device`` for ``minutes``; tar the new state and logs into ``out``."""
    from mftcalc.training.pretrain import PretrainConfig, pretrain

    if not OVERRIDES.is_file():
        raise SystemExit("gpu_pretrain: no .gpu/pretrain.json; run `python benchmarks/gpu_pretrain.py --pack` here "
                         "first and carry .gpu")
    packed = json.loads(OVERRIDES.read_text())
    os.chdir(REPO)
    base = PretrainConfig.from_yaml(packed["config"])
    work = Path(tempfile.mkdtemp(prefix="gpu_pretrain_")) if dry_run else REPO / base.out_dir
    if dry_run:
        for name in BROUGHT_BACK:
            if (REPO / base.out_dir / name).is_file():
                shutil.copy2(REPO / base.out_dir / name, work / name)
    pairs = list(packed["set"]) + [f"device={device}", f"out_dir={work}", f"state_path={work / 'state.pt'}",
                                   f"model_out={work / 'pretrained.pt'}", "replay=false", "heldout_out=null",
                                   "progress=false"]
    for k, spec in enumerate(base.datasets):
        text = str(spec.batch_size)
        scaled = (f"auto:{int(float(text.split(':', 1)[1]) * batch_scale)}" if text.startswith("auto:")
                  else str(int(text) * batch_scale))
        pairs.append(f"datasets.{k}.batch_size={scaled}")
    cfg = PretrainConfig.from_yaml(packed["config"], set_pairs=pairs)
    start = time.time()
    card = pretrain(cfg, time_budget_s=minutes * 60.0)
    print(f"gpu_pretrain: step {card['steps']} after {time.time() - start:.0f} s on {device}; "
          f"validation {json.dumps({k: v for k, v in (card.get('validation') or {}).items() if 'xtb' in k})}")
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "pretrain.tar", "w") as tar:
        for name in BROUGHT_BACK:
            if (work / name).is_file():
                tar.add(work / name, arcname=name)
    print(f"gpu_pretrain: wrote {out / 'pretrain.tar'}; back here: tar -xf <files_at>/pretrain.tar -C {base.out_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", action="store_true", help="here: write .gpu/ (datasets outside the repo)")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--minutes", type=float, default=3.5, help="training time on the device")
    parser.add_argument("--batch-scale", type=int, default=8, help="every dataset's batch this many times larger")
    parser.add_argument("--device", default=None, help="default: cuda (a dry run: cpu)")
    parser.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for pretrain.tar (default $OUT)")
    parser.add_argument("--dry-run", action="store_true", help="a few seconds on CPU on a copy of the state")
    args = parser.parse_args()
    if args.pack:
        pack(args.config)
        return
    import torch

    device = args.device or ("cpu" if args.dry_run else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_pretrain: no CUDA device here; use --dry-run to check the path on CPU")
    minutes = 0.1 if args.dry_run else args.minutes
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_pretrain_out_"))
    train(minutes, args.batch_scale, device, out, args.dry_run)


if __name__ == "__main__":
    main()
