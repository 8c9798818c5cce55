"""The code stays clean: `ruff check` (rules and line length in pyproject.toml) finds nothing."""
import subprocess
import sys

import pytest

from helpers.config import REPO


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff is in the dev extra: pip install -e '.[dev]'")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
