"""The README as a newcomer follows it: every command block runs as written, in a copy of this
tree, and every link in the README and docs/ leads to a file and heading that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from cdr_pipeline_tests.servers import ROOT, answers, server_process

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
DOC_BLOCKS = [
    block
    for page in sorted((ROOT / "docs").glob("*.md"))
    for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", page.read_text(), re.S)
]
# Lines no test here runs, each with why; a test fails if one of them leaves the README, so
# the list cannot go stale.
NOT_RUN = {"make test": "it is this suite", "make test-fast": "it is part of this suite"}
RUN_STAMP = ROOT / ".venv" / ".installed-runtime"
KPIS_STATUS = """
query Stats($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
  }
  shouldShowNux
}
"""


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_link_in_the_docs_leads_somewhere():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "data" / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # http(s), data: ...
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"(?m)^#+ (.*)$", file.read_text())
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_the_lines_not_run_are_still_in_the_readme():
    lines = {line.split("#")[0].strip() for block in BLOCKS for line in block.splitlines()}
    assert set(NOT_RUN) <= lines


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """This tree as a fresh clone has it (no data, no Dagster home), sharing its .venv."""
    if RUN_STAMP.exists() and RUN_STAMP.stat().st_mtime < max(
        (ROOT / n).stat().st_mtime for n in ("pyproject.toml", "constraints.txt")
    ):
        pytest.fail("the .venv is older than pyproject.toml: run `make install` first")
    work = tmp_path_factory.mktemp("newcomer") / "cdr-pipeline"
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, work / name)  # mtimes kept: make sees the stamps fresh
    (work / ".venv").symlink_to(ROOT / ".venv")
    return work


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_", "MAKE"))}
    # a newcomer's day holds 2,000 calls; 300 keep the seven days quick and change nothing else
    return env | {"CDR_SIM_CALLS_PER_DAY": "300"} | extra


def _script(block: str) -> str:
    """The block as a bash script: `make ui` (a server, run by its own test) and the lines in
    NOT_RUN become no-ops."""
    kept = []
    for line in block.splitlines():
        command = line.split("#")[0].strip()
        if command in NOT_RUN or command.startswith("make ui"):
            line = ":"
        kept.append(line)
    return "set -euo pipefail\n" + "\n".join(kept)


def _run(block: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", _script(block)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"{block}\nexited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def _block(first_command: str) -> str:
    found = [b for b in BLOCKS if b.lstrip().startswith(first_command)]
    assert len(found) == 1, f"the README has no single block starting with {first_command!r}"
    return found[0]


@pytest.fixture(scope="module")
def quickstart(project) -> tuple[Path, str]:
    return project, _run(_block("make run"), project, _env())


@pytest.mark.slow
def test_quickstart_materializes_seven_days_quietly(quickstart):
    project, out = quickstart
    rows = [line for line in out.splitlines() if re.match(r"\d{4}-\d\d-\d\d\s+\d", line)]
    assert len(rows) == 7 and all(row.endswith(" ok") for row in rows), out
    assert (project / "data" / "demo" / "call_kpis_daily").is_dir()  # the demo's own folder
    assert (project / ".dagster_home" / "demo" / "dagster.yaml").is_file()
    assert not (project / "data" / "live").exists()
    # quiet: no Dagster DEBUG flood, no warnings, the simulator named once
    assert " - DEBUG - " not in out and "Warning" not in out, out
    assert out.count("fetching synthetic calls from the built-in simulator") == 1
    # Dagster's telemetry notice in one line, not 18 and a banner
    assert "Welcome to Dagster" not in out
    assert out.count("sends anonymous usage statistics") == 1


@pytest.mark.slow
def test_make_ui_opens_on_what_make_run_made(quickstart, tmp_path):
    """The README's screenshot state: the last 30 days as partitions, the 7 of `make run` green."""
    project, _ = quickstart
    assert "make ui" in _block("make run")
    with server_process(
        "make ui",
        lambda port: ["make", "-s", "ui", f"UI_PORT={port}"],
        lambda port: answers(f"http://127.0.0.1:{port}/server_info"),
        tmp_path / "ui.log",
        env=_env(),
        cwd=project,
    ) as port:
        resp = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": KPIS_STATUS, "variables": {"key": {"path": ["call_kpis_daily"]}}},
            timeout=60,
        )
    stats = resp.json()["data"]["assetNodeOrError"]["partitionStats"]
    assert stats["numMaterialized"] == 7 and stats["numFailed"] == 0
    assert 30 <= stats["numPartitions"] <= 32  # 30 days back to today, whatever the zones
    assert resp.json()["data"]["shouldShowNux"] is False  # no pop-up over the first page
    log = (tmp_path / "ui.log").read_text()
    assert "does not match" not in log  # dg's virtual-environment warning


@pytest.mark.slow
def test_reading_the_data_as_the_readme_says(quickstart):
    project, _ = quickstart
    out = _run(_block(".venv/bin/python -c"), project, _env())
    assert "connect_rate" in out and "total_calls" in out
    assert (project / "data" / "demo" / "report.html").is_file()


def _ui_stats(port: int, asset: str) -> dict:
    resp = httpx.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": KPIS_STATUS, "variables": {"key": {"path": [asset]}}},
        timeout=60,
    )
    return resp.json()["data"]["assetNodeOrError"]["partitionStats"]


def _real_api(server) -> dict[str, str]:
    """The variables the README's real-API block exports, for a loopback provider."""
    return {"CDR_API_URL": server.url, "CDR_API_ID": "readme-id", "CDR_APP_ID": "readme-app"}


@pytest.mark.slow
def test_pointing_it_at_the_real_api(project, sim_server, tmp_path):
    """The real-API block against the simulator on loopback, with its default seed and size,
    so the README's callId is one it really serves; then `make ui-live` shows those days."""
    server = sim_server()
    block = _block("export CDR_API_URL")
    real = _real_api(server)
    block = block.replace("https://HOST/201511v3/getCdr", real["CDR_API_URL"])
    block = block.replace("CDR_API_ID=...", f"CDR_API_ID={real['CDR_API_ID']}").replace(
        "CDR_APP_ID=...", f"CDR_APP_ID={real['CDR_APP_ID']}"
    )
    assert "..." not in block.split("#")[0]
    out = _run(block, project, _env())
    assert '"callId"' in out  # lookup found the call
    assert re.search(r"2024-03-07\s+\d+", out), out  # the week's KPI table
    assert (project / "data" / "live" / "cdr").is_dir()  # its own folder, never the demo's
    assert "make ui-live" in block
    with server_process(
        "make ui-live",
        lambda port: ["make", "-s", "ui-live", f"UI_PORT={port}"],
        lambda port: answers(f"http://127.0.0.1:{port}/server_info"),
        tmp_path / "ui.log",
        env=_env(**real),
        cwd=project,
    ) as port:
        stats = _ui_stats(port, "call_kpis_daily")
    assert stats["numMaterialized"] >= 7 and stats["numFailed"] == 0
    assert stats["numPartitions"] > 365  # from CDR_START_DATE (2024-01-01): the CLI's days


# Every command block of docs/*.md, by its first line: the test that runs it as written.
PRIVACY_DEMO = "export CDR_PSEUDONYM_KEY=the-demos-key-never-a-real-one-0123456789"
DOC_RUNNERS = {
    "export DAGSTER_HOME=$PWD/.dagster_home/live": "test_operators_command_line_block",
    "export CDR_DATA_DIR=s3://cdr-lake/cdr-pipeline": "test_object_storage_block",
    ".venv/bin/cdr-pipeline simulate-api --port 8787": "test_simulator_block",
    PRIVACY_DEMO: "test_privacy_demo_block",
}


def _first(block: str) -> str:
    return block.strip().splitlines()[0].split("#")[0].strip()


def test_every_command_block_in_the_docs_has_a_test():
    assert sorted(_first(b) for b in DOC_BLOCKS) == sorted(DOC_RUNNERS)
    assert all(name in globals() for name in DOC_RUNNERS.values())


def _doc_block(first: str) -> str:
    (block,) = [b for b in DOC_BLOCKS if _first(b) == first]
    return block


@pytest.mark.slow
def test_operators_command_line_block(project, sim_server):
    """Dagster's own CLI into the live instance: a week in one run, its report, a sensor
    started (before, `dagster sensor start` without DAGSTER_HOME was a stack trace)."""
    block = _doc_block("export DAGSTER_HOME=$PWD/.dagster_home/live")
    out = _run(block, project, _env(**_real_api(sim_server())))
    assert "Started sensor cdr_freshness_sensor" in out, out
    assert (project / "data" / "live" / "report.html").is_file()


@pytest.mark.slow
def test_privacy_demo_block(project):
    """The privacy page's walk through the demo: both zones, the busiest caller erased from
    every day, the request in the audit by token, the number nowhere in what it printed."""
    block = _doc_block(PRIVACY_DEMO)
    out = _run(block + '\necho "number: $NUMBER"\n', project, _env())
    number = out.rsplit("number: ", 1)[1].strip()
    assert number.startswith("+86") and "would erase" in out and "erased +86 " in out, out
    assert out.count(number) == 1, out  # only where the test itself echoed it
    cdr = pq.read_table(project / "data" / "demo" / "cdr")
    assert number not in set(cdr.column("src_e164").to_pylist())
    shared = pq.read_table(project / "data" / "demo-shared" / "cdr")
    assert shared.num_rows == cdr.num_rows


@pytest.mark.slow
def test_object_storage_block(project, s3_server):
    block = _doc_block("export CDR_DATA_DIR=s3://cdr-lake/cdr-pipeline")
    aws = s3_server.env()
    block = block.replace(
        "AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...",
        f"AWS_ACCESS_KEY_ID={aws['AWS_ACCESS_KEY_ID']} "
        f"AWS_SECRET_ACCESS_KEY={aws['AWS_SECRET_ACCESS_KEY']}",
    ).replace("https://cos.ap-shanghai.myqcloud.com", aws["AWS_ENDPOINT_URL"])
    assert "..." not in block.split("#")[0]
    s3_server.bucket("cdr-lake")
    out = _run(block + "\n.venv/bin/cdr-pipeline config\n", project, _env())
    assert "s3://cdr-lake/cdr-pipeline" in out and aws["AWS_SECRET_ACCESS_KEY"] not in out


@pytest.mark.slow
def test_simulator_block(project, tmp_path):
    """The simulator in one terminal, a fetch in another (before, the credentials `x` and
    `y` of this example were refused as too short)."""
    block = _doc_block(".venv/bin/cdr-pipeline simulate-api --port 8787")
    server_line, rest = block.split("\n", 1)
    command = server_line.split("#")[0].split()
    with server_process(
        "simulate-api",
        lambda port: [str(project / command[0]), *command[1:3], str(port)],
        lambda port: _listening(tmp_path),
        tmp_path / "sim.log",
        env=_env(),
        cwd=project,
    ) as port:
        out = _run(rest.replace("8787", str(port)), project, _env())
    assert "records" in out, out


def _listening(log_dir: Path) -> bool:
    log = log_dir / "sim.log"
    return log.exists() and "listening on" in log.read_text()
