"""docs/architecture.md describes the tree as it is, and every link in the docs leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cdr_pipeline"


def _modules() -> set[str]:
    """Every module and sub-package of the project, as the docs name them."""
    names = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    return names | {p.name + "/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def test_the_layout_names_every_module_and_nothing_else():
    page = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"## Where things are\n\n```\n(.*?)```", page, re.S).group(1)
    named = set(re.findall(r"\b([a-z_]+(?:\.py|/))", block))
    modules = _modules()
    top = {m for m in modules if "/" not in m.rstrip("/")}
    inner = {m.split("/")[-1] for m in modules if "/" in m.rstrip("/")}
    missing = {m for m in top | inner if m not in named}
    assert not missing, f"the layout does not name {sorted(missing)}"
    stray = {n for n in named if n.endswith(".py") and n not in top | inner}
    assert not stray, f"the layout names modules that do not exist: {sorted(stray)}"


def test_the_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([a-z_/]+(?:\.py|/))`", page))
    # transform/ and defs/ are described as folders, their modules in a sentence each
    folders = ("transform/", "defs/")
    missing = {
        m for m in _modules() if m.endswith(".py") and m not in named and not m.startswith(folders)
    }
    assert set(folders) <= named
    assert not missing, f"docs/architecture.md does not name {sorted(missing)}"
    assert not {
        n
        for n in named
        if n.endswith(".py") and not (PACKAGE / n).exists() and not (ROOT / n).exists()
    }
