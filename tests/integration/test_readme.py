"""Issue 18: the README's Python runs as written (its imports, the Tour, the names it says each module exports)."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def python_blocks() -> list:
    """The ```python code blocks of README.md, in order, as (heading above the block, code)."""
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        headings = re.findall(r"^#+ (.+)$", text[:match.start()], flags=re.M)
        blocks.append((headings[-1] if headings else "", match.group(1)))
    return blocks


def import_lines(code: str) -> list:
    """The top-level import statements of a code block (``import x`` / ``from x import a, b``)."""
    return [line.split("#")[0].rstrip() for line in code.splitlines() if re.match(r"(from|import) [\w.]+", line)]


def run_fresh(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter at the repository root (as a reader pastes it: no module imported before)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_every_import_line_of_the_readme_runs_in_a_fresh_interpreter():
    lines = [line for _, code in python_blocks() for line in import_lines(code)]
    assert "from mftcalc import MFTCalculator, predict, relax" in lines      # the Tour's
    done = run_fresh("\n".join(lines))
    assert done.returncode == 0, f"README imports fail:\n{done.stderr[-2000:]}"


def test_the_readme_tour_runs():
    tour = [code for heading, code in python_blocks() if heading.strip() == "Tour"]
    assert len(tour) == 1, "README.md has no ```python block under '## Tour'"
    for model in re.findall(r'"(models/[\w.]+\.pt)"', tour[0]):
        if not (ROOT / model).exists():
            pytest.skip(f"{model} is not in this checkout")
    done = run_fresh(tour[0])
    assert done.returncode == 0, f"the README's Tour fails:\n{done.stderr[-2000:]}"


def test_the_names_the_readme_lists_per_module_exist():
    """'Python modules: the public names are in `mftcalc` (`MFTCalculator`, `predict`, `relax`, ...); the rooms
    ... `mftcalc.testing` (`check_model`: ...)': every backticked name is an attribute or submodule."""
    paragraph = next(" ".join(p.split()) for p in README.read_text().split("\n\n") if p.startswith("Python modules:"))
    listed = re.findall(r"`(mftcalc(?:\.\w+)*)`(?: \(([^)]*)\))?", paragraph)
    assert listed[0][0] == "mftcalc" and "`relax`" in listed[0][1] and "`predict`" in listed[0][1]
    assert {name for name, _ in listed} >= {"mftcalc.relaxation", "mftcalc.geometry", "mftcalc.testing"}
    missing = []
    for module_name, names in listed:
        module = importlib.import_module(module_name)
        for name in re.findall(r"`(\w+)`", names.split(":")[0]):
            if not hasattr(module, name):
                try:
                    importlib.import_module(f"{module_name}.{name}")
                except ImportError:
                    missing.append(f"{module_name}.{name}")
    assert not missing, f"README names that do not exist: {missing}"
