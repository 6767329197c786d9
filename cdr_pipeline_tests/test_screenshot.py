"""The README's screenshot target, run for real: the webserver and headless Chromium."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from screenshot import find_browser, screenshot


@pytest.mark.slow
def test_screenshot_of_make_run_then_make_ui(tmp_path):
    if find_browser() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium: .ci/run installs chromium-headless-shell")
        pytest.skip("no Chromium here: apt-get install chromium-headless-shell")
    out = screenshot(tmp_path / "shot.png", CDR_SIM_CALLS_PER_DAY="300")
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", png[16:24]) == (1400, 1300)
    import matplotlib.image

    pixels = matplotlib.image.imread(out)
    assert pixels.std() > 0.05  # a rendered page, not a blank or single-colour image
