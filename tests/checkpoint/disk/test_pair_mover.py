"""Copies between nodes go point to point: only the sending and the receiving ranks take part in a
transfer (a broadcast would need every rank, and carry every byte to each)."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import REPO, VENV_BIN


def test_a_file_moves_between_two_ranks_while_a_third_takes_no_part() -> None:
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=3",
                           str(REPO / "tests" / "helpers" / "pair_mover_three_ranks.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "rank 2 received whole: True" in proc.stdout
