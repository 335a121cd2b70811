"""A move aside in a bucket folder killed at any step loses nothing, and the next use of the folder
finishes it. A real ``rclone serve s3`` on 127.0.0.1; the process that moves (forked from the
test) is killed with ``kill -9`` by the rclone it starts (a wrapper around the real binary), right before its Nth call
that writes or deletes: for every N until the move completes with ``LINNAEUS_SLOW_TESTS=1``, else
for one N of each kind of step."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from linnaeus.checkpoint import CheckpointManager, find_resume_point
from linnaeus.checkpoint.errors import CheckpointError
from linnaeus.checkpoint.remote import RemoteRun
from linnaeus.checkpoint.sources import rclone_binary
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server, settle  # noqa: F401

TRIES = 12  # more than the writes and deletes of either move below (10 and 6)
# Each kill point once with LINNAEUS_SLOW_TESTS=1; else one of each kind: before the journal, after it, after a
# payload's copy, after the marker's copy (committed twice), after the source's marker went; and no kill.
KILL_POINTS = list(range(1, TRIES + 1)) if os.environ.get("LINNAEUS_SLOW_TESTS") else [1, 2, 3, 4, 5, 99]

# Kills the process that started it (its parent) right before the Nth rclone call that writes or deletes.
WRAPPER = """#!/bin/sh
sub=""
for a in "$@"; do case "$a" in -*) ;; *) sub="$a"; break;; esac; done
case "$sub" in
  rcat|copyto|copy|moveto|deletefile|purge|delete)
    n=$(( $(cat "$KILL_COUNT" 2>/dev/null || echo 0) + 1 ))
    echo "$n" > "$KILL_COUNT"
    if [ "$n" -eq "$KILL_AT" ]; then kill -9 "$PPID"; exit 1; fi;;
esac
exec "$REAL_RCLONE" "$@"
"""


def _move(folder: str, names: list[str], env: dict[str, str]) -> None:
    """In a forked process: move ``names`` aside as a restart does, through the killing rclone."""
    os.environ.update(env)
    rclone_binary.cache_clear()
    RemoteRun(folder).move_aside(names, "abandoned-x")


def _intact(folder: str, name: str, into: Path) -> bool:
    """Committed in ``folder`` and every byte as its marker records (a verified download)."""
    run = RemoteRun(folder)
    if name not in run.list():  # its marker is there (a file's download checks a sidecar only if present)
        return False
    try:
        run.fetch(name, into)
        return True
    except CheckpointError:
        return False


@pytest.mark.parametrize("fmt, moved", [("file", ["checkpoint_epoch_2.pth", "checkpoint_epoch_3.pth"]),
                                        ("sharded", ["checkpoint_epoch_3"])])
def test_a_move_aside_killed_at_any_step_loses_nothing(tmp_path: Path, s3_server: RcloneServer, fmt: str,
                                                        moved: list[str]) -> None:
    local = tmp_path / "run"
    with CheckpointManager(local, format=fmt) as manager:
        for epoch in (1, 2, 3):
            torch.manual_seed(epoch)
            manager.save(epoch=epoch, step=2 * epoch, model=nn.Linear(4, 3))
    saved = sorted(p.name for p in local.iterdir() if not p.name.startswith(".") and not p.name.endswith(".sha256")
                   and p.name != "latest")
    wrapper = tmp_path / "rclone-killer"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)

    for name in saved:  # one verified upload, copied on the server's disk for each kill point
        RemoteRun(f"{REMOTE}:{BUCKET}/runs/k1/").upload(local / name)
    runs = s3_server.root / BUCKET / "runs"
    for kill_at in KILL_POINTS[1:]:
        shutil.copytree(runs / "k1", runs / f"k{kill_at}")
    settle()
    remaining = [n for n in saved if n not in moved]

    completed = False
    for kill_at in KILL_POINTS:
        folder = f"{REMOTE}:{BUCKET}/runs/k{kill_at}/"
        run = RemoteRun(folder)
        env = {"LINNAEUS_RCLONE": str(wrapper), "REAL_RCLONE": rclone_binary(),
               "KILL_COUNT": str(tmp_path / f"count-{kill_at}"), "KILL_AT": str(kill_at)}
        mover = multiprocessing.get_context("fork").Process(target=_move, args=(folder, moved, env))
        mover.start()
        mover.join(timeout=300)
        killed = mover.exitcode == -signal.SIGKILL
        assert killed or mover.exitcode == 0, (kill_at, mover.exitcode)
        # Nothing lost: each checkpoint being moved is whole and committed under its name or in the sub-folder.
        for name in moved:
            assert _intact(folder, name, tmp_path / f"a{kill_at}") or \
                _intact(folder + "abandoned-x/", name, tmp_path / f"b{kill_at}"), (kill_at, name)
        # The next use of the folder (a relaunch's resume on a fresh machine) finishes a move that began
        # (its journal written: every kill but the one before the first write) before reading the folder.
        began = kill_at > 1
        with CheckpointManager(tmp_path / f"fresh-{kill_at}", format=fmt) as relaunch:
            point = find_resume_point(relaunch, auto=True, remote=run)
        assert point is not None and point.path.name == (remaining[-1] if began else saved[-1]), (kill_at, point)
        if not began:
            assert sorted(run.list()) == saved and not RemoteRun(folder + "abandoned-x/").list()
            continue
        assert sorted(run.list()) == remaining
        assert sorted(RemoteRun(folder + "abandoned-x/").list()) == sorted(moved)
        for name in moved:
            assert _intact(folder + "abandoned-x/", name, tmp_path / f"c{kill_at}")
        listed = {p.relative_to(runs / f"k{kill_at}").parts[0] for p in (runs / f"k{kill_at}").rglob("*") if p.is_file()}
        assert listed <= {*remaining, *(n + ".sha256" for n in remaining), "abandoned-x", "latest"}, listed
        if not killed:
            completed = True
            break
    assert completed, "the move never completed"
    assert kill_at > 5  # it was killed at every point before
