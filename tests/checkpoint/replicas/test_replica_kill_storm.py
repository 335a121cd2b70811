"""Kill -9 storm against a two-node job (two torchrun launchers on 127.0.0.1, each its own
CHECKPOINT.LOCAL_DIR) that saves every step asynchronously and copies each checkpoint to the other
node: the whole job at once, or the copying node first. After every kill, each file under a final
checkpoint name on either node verifies; the relaunch resumes from the newest step any node holds
committed, never from a copy cut short."""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.conftest import committed_by_step, wait_for_line
from tests.nodes import await_resume, kill_nodes, node_commands, start_nodes

KILLS = 4
OPTS = ("CHECKPOINT.ASYNC", "True", "CHECKPOINT.INTERVAL", "1st", "CHECKPOINT.FILENAME", "step_{step}.pth",
        "CHECKPOINT.KEEP_LAST_N", "3", "TRAIN.EPOCHS", "100")


def test_kill9_storm_on_a_job_that_copies_every_step_to_the_other_node(tmp_path: Path, toy_root: Path) -> None:
    rng = random.Random(24)
    runs = [tmp_path / "node_a", tmp_path / "node_b"]
    local = [tmp_path / "disk_a", tmp_path / "disk_b"]
    node_opts = [("CHECKPOINT.LOCAL_DIR", str(d)) for d in local]
    newest = -1
    for launch in range(KILLS + 1):
        logs = [tmp_path / f"launch{launch}-node{n}.log" for n in range(2)]
        procs = start_nodes(node_commands(runs, toy_root, *OPTS, node_opts=node_opts), logs)
        try:
            await_resume(logs[0], procs, newest)
            if launch == KILLS:
                break
            wait_for_line(r"Copied step_\d+\.pth", logs[0], procs)  # copies are flowing: kill somewhere in them
            time.sleep(rng.uniform(0, 0.5))
            if rng.random() < 0.5:  # the receiving node first; the other then fails on its own
                kill_nodes(procs[1:])
                time.sleep(rng.uniform(0, 0.3))
        finally:
            kill_nodes(procs)
        held = [committed_by_step(d) for d in local]
        assert held[0], f"no checkpoint on rank 0's node after kill {launch + 1}"
        newest = max(step for h in held for step in h)
