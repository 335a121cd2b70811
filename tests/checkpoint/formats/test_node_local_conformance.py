"""The format conformance suite's cases for sharded checkpoints on node-local directories: two ranks,
each its own directory (tests/helpers/node_local_conformance.py, under torchrun), through the library's
API alone. What the one-directory suite checks in one process (tests/checkpoint/formats/
test_conformance.py) holds here too: save, list, verify, resume; retention and the lineage digest;
upload of each node's part with the manifest last, and fetch whole; a damaged shard on one node
refused there, the resume falling back on every rank; delete."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO, VENV_BIN

CASES = ("save", "retention", "upload", "damaged", "delete")


def test_the_conformance_cases_hold_for_sharded_checkpoints_on_node_local_directories(tmp_path: Path) -> None:
    proc = subprocess.run([str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "helpers" / "node_local_conformance.py"), str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for rank in (0, 1):
        for case in CASES:
            assert f"rank {rank} {case}: ok" in proc.stdout, proc.stdout + proc.stderr[-3000:]
