"""The first install: an old Python is refused before anything is installed, and a failed
install leaves no half-made .venv behind (the next `make run` would otherwise fail the same
way until `make clean`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A Python that says it is 3.10: enough for the Makefile's check, which is all it meets.
OLD_PYTHON = f"""#!/bin/sh
exec {sys.executable} -c "import sys, collections
V = collections.namedtuple('V', 'major minor micro releaselevel serial')
sys.version_info = V(3, 10, 13, 'final', 0)
exec(sys.argv[1])" "$2"
"""


def _project(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "README.md"):
        shutil.copy(ROOT / name, work / name)
    return work


@pytest.mark.slow
def test_an_old_python_is_refused_before_anything_is_installed(tmp_path):
    work = _project(tmp_path)
    old = tmp_path / "python3.10"
    old.write_text(OLD_PYTHON)
    old.chmod(0o755)
    out = subprocess.run(
        ["make", "-s", "install", f"PYTHON={old}"], cwd=work, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "needs Python 3.11 or newer" in out.stderr and "3.10" in out.stderr
    assert not (work / ".venv").exists()


@pytest.mark.slow
def test_a_failed_install_leaves_no_venv(tmp_path):
    import os

    work = _project(tmp_path)
    offline = {"PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}  # the install fails, and on loopback
    out = subprocess.run(
        ["make", "-s", "install", f"PYTHON={sys.executable}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | offline,
    )
    assert out.returncode != 0
    assert ".venv was removed" in out.stderr
    assert not (work / ".venv").exists()


@pytest.mark.slow
def test_every_install_target_asks_for_whole_extras():
    """A comma in `$(call install,[test,bench],...)` once split the argument: a fresh clone's
    `make bench` asked pip for `.[test`. Every install line names its extras whole."""
    out = subprocess.run(
        ["make", "-n", "-B", "install", "bench"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    asked = re.findall(r'-e "(\.[^"]*)"', out)
    assert asked and set(asked) <= {".", ".[test]", ".[test,bench]"}, asked
    assert ".[test,bench]" in asked
