"""``python -m mftcalc ...`` = the ``mftcalc`` command (for machines where the package is on PYTHONPATH but not
installed, e.g. a GPU machine that receives the source tree)."""
import sys

from mftcalc.cli import main

if __name__ == "__main__":
    sys.exit(main())
