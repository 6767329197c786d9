"""Regenerate the README's screenshot: what a newcomer sees after `make run`, then `make ui`.

``python docs/screenshot.py [--out docs/partitions.png]`` runs exactly those two targets in
this tree, with a scratch data folder and Dagster home (never the user's own), then lets headless
Chromium render the partitions page of ``call_kpis_daily`` with the last day selected (the UI
is JavaScript: it gets a virtual-time budget to fetch and draw) and saves the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cdr_pipeline.cli.days import LOCAL_INSTANCE  # noqa: E402
from cdr_pipeline_tests.servers import answers, server_process  # noqa: E402

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(out: Path, *, asset: str = "call_kpis_daily", **env_extra: str) -> Path:
    browser = find_browser()
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium-headless-shell (or chromium)")
    with tempfile.TemporaryDirectory(prefix="cdr-screenshot-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
        env |= {"CDR_DATA_DIR": str(Path(tmp) / "data"), "CDR_SIMULATOR": "true", **env_extra}
        home = Path(tmp) / "home"
        home.mkdir()
        # the instance `make run` makes (the first-visit pop-up off, as there),
        # and without telemetry from a docs build
        (home / "dagster.yaml").write_text(LOCAL_INSTANCE + "telemetry:\n  enabled: false\n")
        make = ["make", "-s", f"DAGSTER_HOME={home}"]
        _run([*make, "run"], env=env, cwd=ROOT)
        # the last complete day (make run's default zone), selected: its metadata shows the trend
        last = datetime.now(ZoneInfo(env.get("CDR_TIMEZONE", "Asia/Shanghai"))).date()
        last -= timedelta(days=1)
        with server_process(
            "make ui",
            lambda port: [*make, "ui", f"UI_PORT={port}"],
            lambda port: answers(f"http://127.0.0.1:{port}/server_info"),
            Path(tmp) / "ui.log",
            env=env,
            cwd=ROOT,
        ) as port:
            out.parent.mkdir(parents=True, exist_ok=True)
            _run(
                [
                    browser,
                    "--headless",
                    "--no-sandbox",  # root in containers and CI
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1400,1300",
                    "--virtual-time-budget=25000",
                    f"--screenshot={out}",
                    f"http://127.0.0.1:{port}/assets/{asset}?view=partitions"
                    f"&partition={last.isoformat()}",
                ],
                timeout=180,
            )
    return out


def _run(argv: list[str], **kw: Any) -> None:
    """Run a step; if it fails, say which and how it ended (CalledProcessError alone hides
    the output)."""
    done = subprocess.run(argv, capture_output=True, text=True, **kw)
    if done.returncode:
        raise RuntimeError(
            f"{Path(argv[0]).name} exited with {done.returncode}:\n"
            f"{(done.stdout + done.stderr)[-4000:]}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "partitions.png"))
    args = parser.parse_args()
    print(f"wrote {screenshot(Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
