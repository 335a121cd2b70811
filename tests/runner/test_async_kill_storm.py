"""Kill -9 storm against a real runner that saves every step asynchronously with EMA on (issue 10).

After every kill each file under a final checkpoint name verifies, and the relaunch resumes
from the newest of them, in the same lineage (run id).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import torch

from tests.conftest import REPO, committed_by_step, tiny_args, train_cmd, wait_for_line

KILLS = 8
OPTS = ("CHECKPOINT.ASYNC", "True", "TRAIN.EMA.ENABLED", "True", "CHECKPOINT.INTERVAL", "1st",
        "CHECKPOINT.FILENAME", "step_{step}.pth", "CHECKPOINT.KEEP_LAST_N", "3", "TRAIN.EPOCHS", "100")


def test_kill9_storm_on_async_saves_every_step(tmp_path: Path, toy_root: Path) -> None:
    rng = random.Random(10)
    ckpts = tmp_path / "tiny" / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run_ids: set[str] = set()
    newest: Path | None = None
    for launch in range(KILLS + 1):
        log = tmp_path / f"launch{launch}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(train_cmd() + tiny_args(tmp_path, toy_root, *OPTS), cwd=REPO, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            if newest is None:
                wait_for_line(r"starting fresh", log, [proc], timeout=60)
            else:
                m = wait_for_line(r"Resumed from (\S+) \(epoch \d+, step (\d+)\)", log, [proc], timeout=60)
                assert Path(m.group(1)).name == newest.name, f"launch {launch} resumed from {m.group(1)}, newest is {newest}"
            if launch == KILLS:
                break
            # This launch is saving: kill somewhere in its saves.
            wait_for_line(r"Saved checkpoint", log, [proc], timeout=60)
            time.sleep(rng.uniform(0, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        committed = committed_by_step(ckpts)
        assert committed, f"no checkpoint after kill {launch + 1}"
        newest = committed[max(committed)]
        run_ids |= {torch.load(p, weights_only=True)["meta"]["run_id"] for p in committed.values()}
    assert len(run_ids) == 1, f"one run's relaunches wrote several lineages: {run_ids}"
