"""Regenerate the README's screenshot: an asset's partitions page in headless Chromium.

``python docs/screenshot.py [--out docs/partitions.png]`` materializes the last 14 days from
the built-in simulator into a scratch data folder and Dagster home (never the user's own),
starts ``dagster-webserver`` on a free loopback port, lets Chromium render the page (the UI is
JavaScript: it gets a virtual-time budget to fetch and draw) and saves the PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cdr_pipeline_tests.servers import BIN, webserver  # noqa: E402

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(out: Path, *, days: int = 14, asset: str = "call_kpis_daily") -> Path:
    browser = find_browser()
    if browser is None:
        raise SystemExit("no Chromium found: apt-get install chromium-headless-shell (or chromium)")
    with tempfile.TemporaryDirectory(prefix="cdr-screenshot-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CDR_", "DAGSTER_"))}
        home = Path(tmp) / "home"
        home.mkdir()
        # no first-visit welcome dialog over the page, no telemetry from a docs build
        (home / "dagster.yaml").write_text("nux:\n  enabled: false\ntelemetry:\n  enabled: false\n")
        start = date.today() - timedelta(days=days + 6)  # a short partition bar, mostly filled
        last = date.today() - timedelta(days=1)  # selected: its metadata shows the trend chart
        env |= {
            "DAGSTER_HOME": str(home),
            "CDR_DATA_DIR": str(Path(tmp) / "data"),
            "CDR_SIM_CALLS_PER_DAY": "800",
            "CDR_START_DATE": start.isoformat(),
        }
        _run([str(BIN / "cdr-pipeline"), "materialize", "--last", str(days)], env=env, cwd=ROOT)
        with webserver(env, Path(tmp) / "webserver.log") as url:
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
                    f"{url}/assets/{asset}?view=partitions&partition={last.isoformat()}",
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
    parser.add_argument("--days", type=int, default=14)
    args = parser.parse_args()
    print(f"wrote {screenshot(Path(args.out), days=args.days)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
