"""Open JupyterLab on the course notebooks, with the notebooks' kernel running this Python.

    python -m helpers.lab                 # or: python workbook.py lab
    python -m helpers.lab --port 8890     # any option of `jupyter lab`
"""
from __future__ import annotations

import subprocess
import sys

from .course import NOTEBOOKS_DIR, current_kernel


def main(argv: list[str] | None = None) -> int:
    """Start ``jupyter lab`` in the notebooks folder (options passed on); returns its exit status."""
    current_kernel()
    command = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={NOTEBOOKS_DIR.parent}",
               *(sys.argv[1:] if argv is None else argv)]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main())
