"""docs/architecture.md describes the tree as it is, and every link in the docs leads somewhere."""

from __future__ import annotations

import ast
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
    folders = ("transform/", "defs/", "simulator/")
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


def _imports(path: Path) -> set[str]:
    """The project's modules ``path`` imports, at module level or inside a function, named as
    the docs name them (``api/client``, ``transform/`` for the package itself)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "cdr_pipeline":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("cdr_pipeline."):
                found.add(node.module.removeprefix("cdr_pipeline."))
        elif isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("cdr_pipeline.")
                for a in node.names
                if a.name.startswith("cdr_pipeline.")
            }
    return {name.replace(".", "/") for name in found}


def _rules() -> dict[str, str]:
    """The architecture page's table: module -> what it may import, as written."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `([a-z_/.]+)` \| .* \| (.+) \|$", page, re.M)
    return {module.removesuffix(".py"): allowed.strip() for module, allowed in rows}


def _allows(rule: str, imported: str) -> bool:
    if rule == "anything":
        return True
    if rule.startswith("anything but "):
        banned = re.findall(r"`([a-z_/]+)`", rule)
        return not any(imported == b.rstrip("/") or imported.startswith(b) for b in banned)
    allowed = re.findall(r"`([a-z_/]+)`", rule)
    return any(
        imported == a.rstrip("/") or (a.endswith("/") and imported.startswith(a)) for a in allowed
    )


def test_every_module_imports_only_what_the_architecture_page_allows():
    rules = _rules()
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").as_posix().removesuffix("__init__")
        imported = _imports(path) - {rel.rstrip("/")}
        if not imported:
            continue
        package = rel.split("/")[0] + "/" if "/" in rel else ""
        rule = rules.get(rel.rstrip("/"))
        if rule is None:  # a module of a package the table describes as a whole
            rule = rules.get(package)
            imported = {i for i in imported if not i.startswith(package)}
        assert rule is not None, f"docs/architecture.md's table has no row for {rel}"
        broken += [f"{rel} imports {i} ({rule})" for i in sorted(imported) if not _allows(rule, i)]
    assert not broken, "imports the architecture page does not allow:\n" + "\n".join(broken)


def test_production_code_never_imports_the_simulator():
    """Only the demo's choice of API resource and ``simulate-api`` reach for it, lazily."""
    reached = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if "simulator" not in path.parts and any(i.startswith("simulator") for i in _imports(path))
    }
    assert reached == {"resources.py", "cli/api.py"}
    for name in reached:
        tree = ast.parse((PACKAGE / name).read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert not any("simulator" in (getattr(n, "module", "") or "") for n in top), name


def test_no_module_over_500_lines_nor_function_over_80():
    """The sizes the redesign set (issue 23): a module a maintainer can hold in mind, a
    function that fits a screen or two. Counted as a reader sees them, every line."""
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(PACKAGE)
        if len(text.splitlines()) > 500:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, too_long
