"""A real headless browser for the tests of HTML output: Debian's chromium, installed by this fixture
when missing (the project brings its own tools: a fresh machine has none of them)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = ("chromium",)


def _install() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is not installed and this user cannot install it: run `apt-get install chromium` as root "
                    "(the report tests render the page in a real browser).")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or not shutil.which("chromium"):
        pytest.fail(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
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
