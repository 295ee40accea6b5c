"""Headless Chromium for the HTML view tests: the DOM after the scripts ran, the console
messages (any message fails a view: they log nothing), and a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]
CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


def chromium() -> str:
    """The browser binary; its absence fails the test (`.ci/run` installs Debian's chromium)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError("no chromium on PATH; install it: apt-get install -y chromium")


def _run(page: Path, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )


def render(page: Path, screenshot: Path) -> tuple[str, list[str]]:
    """(the DOM after load, the console messages) of `page`; writes `screenshot` (PNG)."""
    done = _run(page, "--dump-dom")
    console = CONSOLE.findall(done.stderr)
    shot = _run(page, f"--screenshot={screenshot.resolve()}", "--window-size=1200,1400")
    console += [m for m in CONSOLE.findall(shot.stderr) if m not in console]
    assert screenshot.is_file(), shot.stderr[-2000:]
    return done.stdout, console
