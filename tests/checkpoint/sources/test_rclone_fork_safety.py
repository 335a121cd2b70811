"""rclone calls made on a background thread must finish while the main thread forks.

The trainer's main thread forks DataLoader workers (``persistent_workers``, fork start method)
while the upload thread runs rclone. A process forked in the moment between a ``Popen``
creating its pipes and closing its copy of their write ends keeps that copy for its whole
life; a caller that waits for EOF on the pipe then waits for the DataLoader worker, which
lives until the trainer exits, which waits for the upload: the run hung at "Waiting for
uploads" (seen in CI, examples/local_bucket). The storm below forks as fast as it can while
a thread makes real rclone calls through every path we have (capture, bytes, stdin, stream).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings
from pathlib import Path

from linnaeus.checkpoint.sources import RcloneSource, rcat, run_rclone, run_rclone_bytes

CHILD_LIFE_S = 40  # far longer than any one call may take: a call that waits for a child shows
CALL_LIMIT_S = 15


def _calls(tmp: Path) -> list:
    data = tmp / "data.bin"
    data.write_bytes(os.urandom(200_000))

    def stream() -> None:
        with RcloneSource(f":local:{data}").open_stream() as chunks:
            assert sum(len(c) for c in chunks) == 200_000

    return [
        lambda: run_rclone(["lsjson", "--", str(tmp)], what="listing"),
        lambda: run_rclone_bytes(["cat", "--", str(data)], what="reading"),
        lambda: rcat(b"marker\n", f":local:{tmp / 'marker'}"),
        stream,
    ]


def test_rclone_calls_finish_while_the_main_thread_forks(tmp_path: Path) -> None:
    calls = _calls(tmp_path)
    durations: list[tuple[int, float]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def uploader_like() -> None:
        try:
            for round_ in range(12):
                for i, call in enumerate(calls):
                    t0 = time.monotonic()
                    call()
                    durations.append((i, time.monotonic() - t0))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)
        finally:
            done.set()

    children: list[int] = []
    worker = threading.Thread(target=uploader_like, daemon=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: that is the point
        worker.start()
        try:
            deadline = time.monotonic() + 12 * len(calls) * CALL_LIMIT_S
            while not done.is_set() and time.monotonic() < deadline and len(children) < 400:
                pid = os.fork()
                if pid == 0:  # like a persistent DataLoader worker: holds what it inherited, lives on
                    time.sleep(CHILD_LIFE_S)
                    os._exit(0)
                children.append(pid)
                time.sleep(0.003)
            worker.join(timeout=12 * len(calls) * CALL_LIMIT_S)
        finally:
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            for pid in children:
                os.waitpid(pid, 0)
    assert not errors, errors
    assert not worker.is_alive(), "an rclone call never returned"
    slow = [(i, round(d, 1)) for i, d in durations if d > CALL_LIMIT_S]
    assert not slow, f"rclone calls waited for a forked process (call index, seconds): {slow}"
    assert len(durations) == 12 * len(calls)
