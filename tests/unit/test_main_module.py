"""``python -m mftcalc`` is the ``mftcalc`` command (the GPU session runs the package from PYTHONPATH)."""
import subprocess
import sys


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "mftcalc", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--time-budget" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "mftcalc", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "no-such-command" in bad.stderr
