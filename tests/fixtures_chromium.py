"""A real headless browser for the tests of HTML output: Debian's chromium, installed by this fixture
when missing (the project brings its own tools: a fresh machine has none of them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.apt_packages import ensure_installed

PACKAGES = ("chromium",)


def _install() -> str:
    ensure_installed(PACKAGES, ("chromium",), "the report tests render the page in a real browser")
    return shutil.which("chromium")  # type: ignore[return-value]


@pytest.fixture(scope="session")
def chromium() -> str:
    return _install()


def rendered_dom(browser: str, page: Path, profile: Path) -> str:
    """The DOM of ``page`` once loaded and its scripts run, as headless chromium renders it (no network
    needed: a file URL; its own profile directory, so parallel tests never share one)."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
                           page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
