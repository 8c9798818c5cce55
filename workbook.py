"""The workbook's front door: set-up and the everyday commands in one file, with nothing but Python itself.

    python workbook.py course [options]   # run the seven notebooks (python -m helpers.course; --help for options)
    python workbook.py test [options]     # run the tests (python -m pytest)
    python workbook.py lab [options]      # open JupyterLab on the notebooks
    python workbook.py setup              # only set up (done by the commands above on first use)

On first use it creates a virtual environment in ``.venv`` next to this file, installs PyTorch first and then
the workbook (``pip install -e ".[dev]"``), and reuses it afterwards; it installs again when pyproject.toml
changes. A PyTorch that the Python running this file already has (a CUDA build, say) is kept: the environment
then sees that Python's packages, and pip finds torch already there. Without one, ``torch==2.13.0`` is
installed; set WORKBOOK_TORCH to install another build, e.g.

    WORKBOOK_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu124" python workbook.py setup

Set WORKBOOK_VENV to put the environment elsewhere. Works on Linux, macOS and Windows (Python 3.10+). The conda
route (environment.yml) stays available: inside an activated environment that already holds the workbook,
``python -m helpers.course`` and ``python -m pytest`` work directly.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("WORKBOOK_VENV", ROOT / ".venv"))
TORCH = os.environ.get("WORKBOOK_TORCH", "torch==2.13.0")
COMMANDS = {
    "course": ["-m", "helpers.course"],
    "test": ["-m", "pytest"],
    "lab": ["-m", "helpers.lab"],
}


def say(message: str) -> None:
    print(f"[workbook] {message}", flush=True)


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def has_torch(python: str | Path) -> bool:
    return subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0


def pip(*args: str) -> None:
    command = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *args]
    say(" ".join(["pip install", *args]))
    if subprocess.run(command, cwd=ROOT).returncode != 0:
        sys.exit(f"[workbook] the install failed: {' '.join(command)}")


def setup() -> Path:
    """Create and fill the environment if needed; returns its Python."""
    python = venv_python()
    if not python.exists():
        keep_torch = has_torch(sys.executable)
        say(f"creating a virtual environment in {VENV}"
            + (" that sees this Python's packages (its PyTorch is kept)" if keep_torch else ""))
        venv.EnvBuilder(with_pip=True, system_site_packages=keep_torch).create(VENV)
    if not has_torch(python):
        pip(*shlex.split(TORCH))  # before the workbook: an open torch range would pull another build
    stamp = VENV / ".workbook-installed"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        pip("-e", ".[dev]")
        stamp.write_text(wanted)
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*COMMANDS, "setup"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    python = setup()
    if argv[0] == "setup":
        say(f"ready: {python}")
        return 0
    return subprocess.run([str(python), *COMMANDS[argv[0]], *argv[1:]], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
