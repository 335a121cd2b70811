"""The commands end their process with ``exit_process``: the exit status, the atexit handlers, the log
file and buffered output all come out as with a normal exit, and idle pool threads do not hold it up;
only the interpreter's module teardown is skipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = """
import atexit, concurrent.futures, logging, sys, threading
from linnaeus.cli.commands import exit_process

out = sys.argv[1]
atexit.register(lambda: open(out + "/atexit", "w").write("ran"))
log = logging.getLogger("probe")
log.addHandler(logging.FileHandler(out + "/log.txt"))
log.warning("a line of the log")
pool = concurrent.futures.ThreadPoolExecutor(2)  # idle non-daemon workers, never shut down
pool.submit(lambda: None).result()
worker = threading.Thread(target=lambda: open(out + "/thread", "w").write("finished"))
worker.start()  # a non-daemon thread: a normal exit waits for it
sys.stdout.write("buffered, no newline")
exit_process(int(sys.argv[2]))
"""


def test_exit_process_keeps_what_a_normal_exit_does(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), "3"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "thread").read_text() == "finished"
    assert (tmp_path / "log.txt").read_text() == "a line of the log\n"
