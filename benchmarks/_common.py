"""Shared helpers of the benchmark scripts: threads, timing (warm-up + median), workloads, peer subprocesses, tables.

Only numpy and torch at import time, so the peer workers (``_peer_*.py``, run by the peers' own venvs, which do not
have mftcalc) import this module too; everything that needs mftcalc or ase imports it inside the function.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: intra-op threads of every row, peers included (override: $MFTCALC_BENCH_THREADS, e.g. 1 while another job holds
#: the second core)
THREADS = int(os.environ.get("MFTCALC_BENCH_THREADS", "2"))
#: where benchmarks/peers/README.md puts the peers' virtual environments (override: $MFTCALC_PEERS)
PEERS_ROOT = Path(os.environ.get("MFTCALC_PEERS", "/work/peers"))
PEER_VENVS = {"deepmd": PEERS_ROOT / "deepmd", "mace": PEERS_ROOT / "mace"}
NOT_INSTALLED = "not installed (see benchmarks/peers/README.md)"
#: element symbol of each atomic number the workloads use (QM9 elements and Si)
SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F", 14: "Si"}
TYPE_MAP = ["H", "C", "N", "O", "F", "Si"]


def set_threads(n: int = THREADS) -> None:
    """Intra-op threads of this process and of every subprocess it starts (OpenMP/MKL/deepmd variables)."""
    import torch

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS"):
        os.environ[var] = str(n)
    os.environ["DP_INTER_OP_PARALLELISM_THREADS"] = "1"
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Wall times of the timed calls, s; ``median`` is what the tables report."""

    times: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)



def time_call(fn: Callable[[], Any], warmup: int = 1, repeats: int = 5, max_seconds: Optional[float] = None) -> Timing:
    """Wall time of ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls (fewer, but at least 2, once
    the timed calls have taken ``max_seconds``). Report the median (robust to other processes on the cores)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    start_all = time.perf_counter()
    for k in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        if max_seconds is not None and k >= 1 and time.perf_counter() - start_all > max_seconds:
            break
    return Timing(times)


def fmt_rate(value: Optional[float]) -> str:
    """Throughput with 3 significant digits (no exponent), or ``–``."""
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def fmt_ratio(value: Optional[float], reference: Optional[float]) -> str:
    if value is None or not reference:
        return "–"
    return f"{value / reference:.2f}×"


# ----------------------------------------------------------------------------------------------------- tables
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """GitHub Markdown table; columns whose index is in ``right`` are right-aligned."""
    cells = [[str(c).replace("|", "\\|").replace("\n", " ") for c in row] for row in rows]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if k in right else "---" for k in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def machine_info() -> Dict[str, str]:
    """CPU model, cores, torch and Python versions, threads and the current load average."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "torch": torch.__version__,
            "python": platform.python_version(), "threads": str(torch.get_num_threads()),
            "load": load_average()}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB (``VmHWM``; ``ru_maxrss`` would include the parent's peak
    that a subprocess inherits across fork/exec)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def report_header(title: str, argv: Sequence[str], load_before: str) -> str:
    """Title, command, date and machine lines of a Markdown report."""
    info = machine_info()
    command = "python " + " ".join([os.path.relpath(argv[0], REPO)] + list(argv[1:]))
    return "\n".join([
        f"# {title}", "",
        f"- command: `{command}` (from the repo root, mftcalc's venv)",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, Python {info['python']}, "
        f"{info['threads']} threads everywhere (peers too)",
        f"- load average (1/5/15 min) before: {load_before}; after: {info['load']} "
        "(anything well above the thread count means other processes shared the cores and the numbers are low)",
    ])


def write_report(path: Optional[str], text: str) -> None:
    print(text)
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"\nwritten to {out}")


# ----------------------------------------------------------------------------------------------------- workloads
def qm9_structures(n: int, atoms: int = 18, seed: int = 0) -> list:
    """``n`` QM9 molecules (mftcalc ``Structure``), all with ``atoms`` atoms (0: any size), a fixed random pick."""
    from mftcalc.data.qm9 import load_qm9

    ds = load_qm9(progress=False)
    pool = np.flatnonzero(ds.n_atoms == atoms) if atoms else np.arange(len(ds))
    if pool.size < n:
        raise ValueError(f"only {pool.size} QM9 molecules with {atoms} atoms, asked for {n}")
    rows = np.sort(np.random.default_rng(seed).choice(pool, size=n, replace=False))
    return ds.structures(rows, properties=[])


def si_crystal(repeat: int = 5, rattle: float = 0.05, seed: int = 0):
    """Rattled Si diamond crystal, ``repeat``³ conventional cells of 8 atoms (5 -> 1000 atoms), a = 5.431 Å."""
    from ase.build import bulk

    from mftcalc.data.structure import Structure

    atoms = bulk("Si", "diamond", a=5.431, cubic=True).repeat((repeat, repeat, repeat))
    atoms.rattle(stdev=rattle, seed=seed)
    return Structure(positions=atoms.get_positions(), numbers=atoms.get_atomic_numbers(),
                     cell=np.asarray(atoms.get_cell()), pbc=np.ones(3, dtype=bool))


def max_neighbours(structures: Sequence[Any], cutoffs: Sequence[float]) -> List[int]:
    """Largest number of neighbours of any atom within each cutoff (periodic images included)."""
    import torch

    from mftcalc.data import collate
    from mftcalc.kernels import neighbor_list

    b = collate(list(structures), torch.float64)
    edge_index, _, dist = neighbor_list(b["positions"], max(cutoffs), b["batch"], b["cell"], b["pbc"])
    return [int(torch.bincount(edge_index[0][dist < c]).max()) if edge_index.shape[1] else 0 for c in cutoffs]


def qm9_max_neighbours(e_cut: float, a_cut: float, chunk: int = 20000) -> List[int]:
    """Largest neighbour counts within ``e_cut`` and ``a_cut`` over all of QM9 (a few seconds)."""
    import torch

    from mftcalc.data.qm9 import load_qm9
    from mftcalc.kernels import neighbor_list

    ds = load_qm9(progress=False)
    positions = torch.from_numpy(ds.positions)
    best = [0, 0]
    for start in range(0, len(ds), chunk):
        stop = min(len(ds), start + chunk)
        a, b = int(ds.offsets[start]), int(ds.offsets[stop])
        batch = torch.from_numpy(np.repeat(np.arange(stop - start), ds.n_atoms[start:stop]))
        edge_index, _, dist = neighbor_list(positions[a:b], max(e_cut, a_cut), batch)
        for k, c in enumerate((e_cut, a_cut)):
            best[k] = max(best[k], int(torch.bincount(edge_index[0][dist < c]).max()))
    return best


def group_equal_size(structures: Sequence[Any], chunk: int) -> List[List[Any]]:
    """Structures grouped by atom count, each group cut into calls of at most ``chunk`` frames (deepmd-kit's
    frames in one call must share the atom count)."""
    by_size: Dict[int, List[Any]] = {}
    for s in structures:
        by_size.setdefault(s.n_atoms, []).append(s)
    return [group[k:k + chunk] for _, group in sorted(by_size.items()) for k in range(0, len(group), chunk)]


def write_frames(path: Path, groups: Sequence[Sequence[Any]]) -> None:
    """Groups of equal-size structures -> npz with ``coords_k`` [nf, nat, 3] Å, ``numbers_k`` [nf, nat],
    ``boxes_k`` [nf, 3, 3] Å (zero = not periodic) for each group k."""
    arrays: Dict[str, np.ndarray] = {}
    for k, group in enumerate(groups):
        arrays[f"coords_{k}"] = np.stack([s.positions for s in group])
        arrays[f"numbers_{k}"] = np.stack([s.numbers for s in group])
        arrays[f"boxes_{k}"] = np.stack([s.cell if s.pbc.all() else np.zeros((3, 3)) for s in group])
    np.savez(path, n_groups=np.array(len(groups)), **arrays)


def read_frames(path: str) -> List[Dict[str, np.ndarray]]:
    """The groups written by :func:`write_frames` (used by the peer workers)."""
    with np.load(path) as z:
        return [{"coords": z[f"coords_{k}"], "numbers": z[f"numbers_{k}"], "boxes": z[f"boxes_{k}"]}
                for k in range(int(z["n_groups"]))]


# ----------------------------------------------------------------------------------------------------- our model
def angle_backends() -> tuple:
    """``(field, backends, note)``: the ``BackboneConfig`` field that picks the angle-block backend and the
    backends to benchmark (``["reference", "fused"]``), or ``(None, [None], why only the default path runs)``.

    The fused op lives in ``mftcalc.kernels.angle``; the model exposes the switch as a ``BackboneConfig`` field
    whose name contains ``backend`` (e.g. ``angle_backend``). If the switch takes another form, adapt this function.
    """
    from dataclasses import fields

    try:
        import mftcalc.kernels.angle as angle_kernels
    except ImportError:
        return None, [None], "no fused angle op (mftcalc.kernels.angle absent): default path only"
    from mftcalc.model.config import BackboneConfig

    names = [f.name for f in fields(BackboneConfig) if "backend" in f.name]
    if not names:
        return None, [None], ("mftcalc.kernels.angle exists but the model has no angle-backend switch "
                              "(no *backend* field in BackboneConfig): default path only")
    note = f"angle backend set by BackboneConfig.{names[0]}"
    if not angle_kernels.fused_available():
        note += f"; the fused library does not build: {angle_kernels.build_error()}"
    return names[0], ["reference", "fused"], note


def build_ours(preset: str, backend_field: Optional[str] = None, backend: Optional[str] = None,
               **overrides: Any):
    """mftcalc ``MFTModel`` of a backbone preset with one force-field head (float32), and its parameter count."""
    from mftcalc.model.config import ModelConfig, backbone_preset, default_forcefield_head
    from mftcalc.model.mft_model import MFTModel, count_parameters

    if backend_field and backend:
        overrides[backend_field] = backend
    model = MFTModel(ModelConfig(backbone=backbone_preset(preset, **overrides),
                                 heads={"forcefield": default_forcefield_head(1)}))
    return model, count_parameters(model)


def script_model(model: Any, backend: Optional[str]) -> tuple:
    """``(scripted model, None)`` or ``(None, reason)`` when ``torch.jit.script`` fails."""
    import torch

    try:
        if backend == "fused":
            from mftcalc.kernels.angle import load_library
            load_library()
        return torch.jit.script(model), None
    except Exception as exc:  # the row shows why
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return None, f"scripting failed: {type(exc).__name__}: {first[:160]}"


def angle_backend_in_use() -> str:
    """What ``mftcalc.kernels.angle`` recorded as the backend that last ran (``-`` if it never ran)."""
    try:
        from mftcalc.kernels.angle import angle_backend_in_use as in_use
    except ImportError:
        return "-"
    return in_use() or "-"


def backbone_cutoffs(preset: str) -> tuple:
    """``(e_rcut, a_rcut)`` of a preset, Å."""
    from mftcalc.model.config import backbone_preset

    b = backbone_preset(preset)
    return b.e_rcut, b.a_rcut


def size_text(preset: str, **overrides: Any) -> str:
    """``64/32/16×6, rc 6/4 Å`` for a preset (with overrides)."""
    from mftcalc.model.config import backbone_preset

    b = backbone_preset(preset, **overrides)
    return f"{b.n_dim}/{b.e_dim}/{b.a_dim}×{b.n_layers}, rc {b.e_rcut:g}/{b.a_rcut:g} Å"


def deepmd_spec(preset: str, e_sel: int, a_sel: int, dynamic_sel: bool = True) -> Dict[str, Any]:
    """Model part of a ``_peer_deepmd.py`` spec: DPA3 with a preset's sizes and cutoffs and our head's widths."""
    from mftcalc.model.config import backbone_preset, default_forcefield_head

    b = backbone_preset(preset)
    return {"n_dim": b.n_dim, "e_dim": b.e_dim, "a_dim": b.a_dim, "nlayers": b.n_layers, "e_rcut": b.e_rcut,
            "e_rcut_smth": b.e_rcut_smth, "a_rcut": b.a_rcut, "a_rcut_smth": b.a_rcut_smth, "e_sel": e_sel,
            "a_sel": a_sel, "dynamic_sel": dynamic_sel, "fitting_neuron": list(default_forcefield_head(1).hidden)}


def parse_sels(text: str, data_sel: tuple) -> List[tuple]:
    """``"120/40,1200/300,data"`` -> [(120, 40), (1200, 300), data_sel]."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "data":
            out.append(tuple(data_sel))
        elif item:
            e, a = item.split("/")
            out.append((int(e), int(a)))
    return out


# ----------------------------------------------------------------------------------------------------- peers
def peer_python(name: str) -> Optional[Path]:
    exe = PEER_VENVS[name] / "bin" / "python"
    return exe if exe.exists() else None


def run_peer(name: str, spec: Dict[str, Any], timeout: float = 3600.0) -> Dict[str, Any]:
    """Run ``benchmarks/_peer_<name>.py`` with the peer venv's python on ``spec`` (JSON); returns its JSON result.

    The result always has ``status``: ``ok``, ``not installed``, or ``error`` (with ``error``: the reason).
    """
    exe = peer_python(name)
    if exe is None:
        return {"status": "not installed", "error": NOT_INSTALLED}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run([str(exe), str(HERE / f"_peer_{name}.py"), spec_path], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(spec_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": "error", "error": f"worker exit {proc.returncode}: " + " / ".join(tail)}
    result = json.loads(lines[-1])
    result.setdefault("status", "ok")
    print(f"    {name}: {result['status']}, peak memory {result.get('peak_rss_gb', 0):.1f} GB", flush=True)
    return result


def peer_main(run: Callable[[Dict[str, Any]], Dict[str, Any]]) -> None:
    """Entry point of a peer worker: read the spec file named on the command line, print the result as one JSON
    line (errors too, as ``{"status": "error", ...}``) so the parent always gets an answer."""
    import traceback

    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        result = run(spec)
        result["status"] = "ok"
        result["peak_rss_gb"] = peak_rss_gb()
    except Exception as exc:  # the row in the parent's table says what went wrong
        traceback.print_exc(file=sys.stderr)
        result = {"status": "error", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    sys.stdout.flush()
    print(json.dumps(result), flush=True)


def peer_rate(result: Dict[str, Any], workload: str, count: str = "frames") -> tuple:
    """``(rate or None, cell text)`` of one workload of a peer result: ``count`` (``frames``, ``atoms`` or
    ``frames_per_step``) per median second, or the reason there is none."""
    if result.get("status") != "ok":
        return None, result.get("error", "failed")
    w = result.get("workloads", {}).get(workload)
    if w is None:
        return None, "–"
    if "error" in w:
        return None, w["error"]
    rate = w[count] / w["median"]
    return rate, fmt_rate(rate)
