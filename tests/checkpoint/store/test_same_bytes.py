"""Every rank of a DDP resume loads the same bytes: rank 0 broadcasts the sha256 of the file it
chose with its path, and a rank whose file under that path hashes differently (node-local
directories holding a same-named other checkpoint) fails the resume on every rank."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import CheckpointManager
from linnaeus.checkpoint.disk import read_sidecar_digest
from tests.conftest import REPO, VENV_BIN


def _node_dirs(root: Path) -> list[str]:
    digests = []
    for rank, value in ((0, 1.0), (1, 2.0)):
        model = torch.nn.Linear(4, 4)
        with torch.no_grad():
            model.weight.fill_(value)
        manager = CheckpointManager(root / f"node{rank}" / "checkpoints")
        path = manager.save(epoch=1, step=10, model=model, filename="ckpt.pth")
        digests.append(read_sidecar_digest(path).sha256)
    assert digests[0] != digests[1]
    return digests


@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_a_rank_whose_file_differs_from_rank0s_fails_the_resume_on_every_rank(tmp_path: Path, mode: str) -> None:
    digests = _node_dirs(tmp_path)
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "helpers" / "ddp_node_local.py"), str(tmp_path), mode]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert "loaded" not in proc.stdout, out[-4000:]
    # Both ranks stop, each with the two digests and the two ranks named.
    for r in (0, 1):
        lines = [ln for ln in out.splitlines() if ln.startswith(f"[rank{r}]:") and digests[0] in ln
                 and digests[1] in ln]
        assert lines, f"rank {r} did not name both digests:\n{out[-4000:]}"
    assert "rank 0" in out and "rank 1" in out and "same bytes" in out, out[-4000:]
