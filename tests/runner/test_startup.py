"""The ``Ready to train`` line counts from the process's own start, not from when linnaeus was imported."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_seconds_since_process_start_include_what_ran_before_the_import() -> None:
    code = ("import time; time.sleep(1.5); "
            "from linnaeus.runner.startup import seconds_since_process_start as s; print(s())")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert 1.5 <= float(out) < 60, out
