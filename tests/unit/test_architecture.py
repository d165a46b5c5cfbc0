"""The house rules of docs/design.md that a machine can check: no import cycles in src/mftcalc (lazy imports
inside functions count too), no module over 400 lines, and the public API of ``mftcalc`` imports and is curated."""
import importlib
import subprocess
import sys
from pathlib import Path

import networkx as nx

from _helpers import import_graph, source_modules as _modules

SRC = Path(__file__).resolve().parents[2] / "src"
MAX_LINES = 400


def test_no_import_cycles():
    graph = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not cycles, f"import cycles in src/mftcalc: {cycles}"


def test_graph_sees_lazy_and_relative_imports():
    """The checker itself: a lazy import inside a function and a relative import both make edges."""
    graph = import_graph()
    assert graph.has_edge("mftcalc.kernels._module", "mftcalc.kernels._backend")      # relative, module level
    assert graph.number_of_edges() > 100


def test_no_module_over_limit():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "mftcalc").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"


def test_public_api():
    """The curated names resolve to the functions and classes, also after their rooms were imported first (a
    room named like a public function would replace it: ``import mftcalc.<room>.x`` sets ``mftcalc.<room>``)."""
    code = ("import mftcalc.relaxation.engine, mftcalc.calculators.predict, mftcalc.model.checkpoint, mftcalc\n"
            "import inspect\n"
            "for name in mftcalc.__all__:\n"
            "    obj = getattr(mftcalc, name)\n"
            "    assert name == '__version__' or inspect.isfunction(obj) or inspect.isclass(obj), (name, obj)\n"
            "from mftcalc import relax, predict, MFTCalculator, Structure, read_structures, load_model\n"
            "assert relax.__module__ == 'mftcalc.relaxation.api' and predict.__module__ == 'mftcalc.calculators.predict'\n"
            "print(mftcalc.__version__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == __import__("mftcalc").__version__


def test_import_mftcalc_is_light():
    """``import mftcalc`` must not import torch (the CLI's --help and the version stay fast)."""
    code = "import sys, mftcalc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_FORK_EACH = """
import importlib, os, sys
for heavy in ("numpy", "scipy", "scipy.optimize", "scipy.sparse", "torch", "ase", "ase.io", "ase.optimize",
              "networkx", "multiprocessing", "concurrent.futures"):   # third-party only: no mftcalc module
    importlib.import_module(heavy)
assert not any(m == "mftcalc" or m.startswith("mftcalc.") for m in sys.modules)
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException as exc:
            sys.stderr.write(f"{name}: {type(exc).__name__}: {exc}\\n")
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print(" ".join(failed))
"""


def test_every_module_imports_alone():
    """Each module imports on its own into an interpreter where no other mftcalc module is loaded (catches
    cycles hidden by import order). One interpreter preloads the third-party libraries and forks a child per
    module, so each child starts without any mftcalc module, at a fraction of a fresh interpreter's cost."""
    names = sorted(n for n in _modules() if "._cpp" not in n and ".angle" not in n and "_triton" not in n)
    out = subprocess.run([sys.executable, "-c", _FORK_EACH, *names], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"modules that fail to import alone: {out.stdout.strip()}\n{out.stderr[-3000:]}"
    importlib.import_module("mftcalc")
