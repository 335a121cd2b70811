"""Kill -9 storm of sharded saves (issue 11 item 6): a loop saving a sharded checkpoint after every
step (keep-last 3) is killed with SIGKILL, the whole torchrun job (its process group) at a random
moment; relaunches alternate between 2 ranks (FSDP2) and 1 process. After every kill each
final-named checkpoint directory verifies (every file against its manifest) and holds the
weights that were saved at its step, and the relaunch resumes from the newest one.

Runs with LINNAEUS_SLOW_TESTS=1 (LINNAEUS_STORM_KILLS kills, default 20: minutes on 2 cores)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from linnaeus.checkpoint import verify_checkpoint
from linnaeus.checkpoint.formats import consolidate as consolidate_model
from linnaeus.checkpoint.formats import is_checkpoint_name
from tests.conftest import REPO, VENV_BIN

WRITER = REPO / "tests" / "helpers" / "sharded_storm_writer.py"
pytestmark = pytest.mark.skipif(not os.environ.get("LINNAEUS_SLOW_TESTS"),
                                reason="a kill storm of torchrun jobs (minutes): set LINNAEUS_SLOW_TESTS=1")


def _descendants(pid: int) -> list[int]:
    """``pid``'s child processes, recursively (torchrun starts its workers in sessions of their own,
    so killing its process group would leave them running)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process under it, all at once (the whole job)."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _read_until(proc: subprocess.Popen, done, lines: list[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer exited {proc.wait()} early:\n" + "\n".join(lines[-40:]))
        lines.append(line.rstrip())
        if done(lines):
            return
    raise AssertionError("writer too slow:\n" + "\n".join(lines[-40:]))


def test_kill9_storm_of_sharded_saves_alternating_world_sizes(tmp_path: Path) -> None:
    kills = int(os.environ.get("LINNAEUS_STORM_KILLS", "20"))
    rng = random.Random(11)
    ckpts = tmp_path / "ckpts"
    sums: dict[int, float] = {}  # step -> sum of the weights saved at it (rank 0's print after the commit)
    newest = 0
    for launch in range(kills):
        nproc = 2 if launch % 2 == 0 else 1
        cmd = ([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(WRITER), str(ckpts)]
               if nproc == 2 else [sys.executable, str(WRITER), str(ckpts)])
        proc = subprocess.Popen(cmd, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []
        try:
            _read_until(proc, lambda ls: any(ln in ("fresh",) or ln.startswith("resumed step ") for ln in ls), lines)
            start = next(ln for ln in lines if ln == "fresh" or ln.startswith("resumed step "))
            assert start == (f"resumed step {newest}" if newest else "fresh"), (launch, start, newest)
            _read_until(proc, lambda ls: sum(ln.startswith("saved step ") for ln in ls) >= 1, lines)
            time.sleep(rng.uniform(0.0, 1.5))  # then kill in the middle of whatever save is running
        finally:
            _kill_job(proc)
        for ln in lines + proc.stdout.read().splitlines():  # type: ignore[union-attr]
            if ln.startswith("saved step "):
                _, _, step, _, total = ln.split()
                sums[int(step)] = float(total)
        finals = sorted(p for p in ckpts.iterdir() if is_checkpoint_name(p.name) and p.is_dir())
        assert finals, f"launch {launch}: no checkpoint after the kill"
        for path in finals:
            result = verify_checkpoint(path)
            assert result.ok, f"launch {launch}: {path.name} does not verify after kill -9: {result.reason}"
        newest = max(int(p.name.rsplit("_", 1)[1]) for p in finals)
        model, _ = consolidate_model(ckpts / f"ckpt_step_{newest:06d}")
        if newest in sums:  # the print may have been killed; the commit then came before it
            assert abs(sum(float(v.double().sum()) for v in model.values()) - sums[newest]) < 1e-9
    assert len(sums) > kills  # saves went on between kills
