"""Wheels the GPU session carries to the device machine, packed to fit its 64 MiB travel limit (``gpu_session.sh
--pack``; run here, where pip reaches the package registry; the device machine reaches nothing).

The device image has torch, triton, numpy, scipy, h5py, e3nn and pytest but not ASE or the peers. Groups, most
valuable first, each packed only if it still fits beside the working tree (tracked and untracked files, which
travel too) and the carried ``.gpu/`` (``gpu_pretrain.py --pack``) under the limit:

1. ASE (the pretraining, mftcalc's relax-then-predict and training sections and the pytest step need it; tests and
   GUI removed);
2. vesin-torch (the neighbour-list peer, imported as ``vesin_torch``; slimmed to the library of the device's torch);
3. deepmd-kit and what its ``deepmd.pt`` import needs (mpich, dargs, wcmatch, bracex, array-api-compat).

torch-sim is not packed: its releases for the device's Python 3.12 require nvalchemi-toolkit-ops and NVIDIA Warp
(hundreds of MB); ``gpu_relax.py`` reports it as not installed there. Wheels go to ``.whl/`` (git-ignored through
``.git/info/exclude``); the device run names ``.whl`` in ``carry``.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Callable, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20
MARGIN = 512 * 2**10
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def tree_bytes() -> int:
    """Bytes of the files that travel anyway: tracked and untracked files that git does not ignore, and the
    carried ``.gpu/`` folder of the pretraining data."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.split(b"\0")
    tree = sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())
    return tree + sum(p.stat().st_size for p in (REPO / ".gpu").rglob("*") if p.is_file())


def download(spec: str, dest: Path) -> Path:
    """One wheel for CPython 3.12 on manylinux x86-64 (the device machine), no dependencies."""
    before = set(dest.glob("*.whl"))
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), spec],
                   check=True)
    new = set(dest.glob("*.whl")) - before
    name = spec.split("==")[0].replace("-", "_").lower()
    return next(iter(new)) if new else next(p for p in dest.glob("*.whl") if p.name.lower().startswith(name))


def slim(wheel: Path, keep: Callable[[str], bool]) -> Path:
    """Rewrite ``wheel`` with only the members ``keep`` accepts (and a RECORD that lists exactly them)."""
    out = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        lines = []
        for name in src.namelist():
            if name == record_name or not keep(name):
                continue
            data = src.read(name)
            dst.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{name},sha256={digest},{len(data)}")
        dst.writestr(record_name, "\n".join(lines + [f"{record_name},,"]) + "\n")
    out.replace(wheel)
    return wheel


def groups(torch_version: str) -> List[Tuple[str, List[Tuple[str, Optional[Callable[[str], bool]]]]]]:
    lib = f"vesin_torch/torch-{torch_version}/"
    return [
        ("ase (pretraining, mftcalc's relax and training sections, pytest step)", [
            ("ase==3.29.0", lambda n: not n.startswith(("ase/test/", "ase/gui/")))]),
        ("vesin-torch (neighbour-list peer)", [
            ("vesin-torch==0.6.2", lambda n: not n.startswith("vesin_torch/torch-") or n.startswith(lib))]),
        ("deepmd-kit (training peer)", [("deepmd-kit==3.2.0", None), ("mpich", None), ("dargs", None),
                                        ("wcmatch", None), ("bracex", None), ("array-api-compat", None)]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", default="2.11", help="major.minor of the device's torch (KINDS.md: 2.11)")
    parser.add_argument("--dest", default=str(REPO / ".whl"))
    args = parser.parse_args()
    dest = Path(args.dest)
    dest.mkdir(exist_ok=True)
    exclude = REPO / ".git" / "info" / "exclude"
    if dest == REPO / ".whl" and "/.whl/" not in (exclude.read_text() if exclude.exists() else ""):
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a") as fh:  # the wheels travel only when carried
            fh.write("/.whl/\n")
    room = LIMIT - MARGIN - tree_bytes() - sum(p.stat().st_size for p in dest.glob("*.whl"))
    print(f"room for wheels beside the working tree: {room / 2**20:.1f} MiB of the 64 MiB travel limit")
    staging = dest / "staging"
    staging.mkdir(exist_ok=True)
    for title, members in groups(args.torch):
        wheels = []
        for spec, keep in members:
            wheel = download(spec, staging)
            wheels.append(slim(wheel, keep) if keep else wheel)
        size = sum(w.stat().st_size for w in wheels)
        if size <= room:
            for w in wheels:
                w.replace(dest / w.name)
            room -= size
            print(f"packed {title}: {size / 2**20:.1f} MiB")
        else:
            for w in wheels:
                w.unlink()
            print(f"LEFT OUT {title}: needs {size / 2**20:.1f} MiB, {max(room, 0) / 2**20:.1f} MiB left "
                  "(the device run reports it as not installed)")
    staging.rmdir()


if __name__ == "__main__":
    main()
