"""Kill -9 storm against a loop of the library's own with a tied-weight model, an EMA copy and an
async save after every step (issue 10, "Done means"): after every kill each file under a final
name verifies, holds the model's tied weights (not the EMA's), and the relaunch resumes the newest
one and continues its lineage (one run id; each launch's saves name the file it resumed from)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from linnaeus.checkpoint import verify_checkpoint
from linnaeus.checkpoint.formats import is_checkpoint_name
from tests.conftest import REPO

KILLS = 8
WRITER = REPO / "tests" / "helpers" / "tied_storm_writer.py"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lines_until(proc: subprocess.Popen, prefix: str, seen: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"writer exited {proc.wait()} before printing {prefix!r}")
        seen.append(line.strip())
        if line.startswith(prefix):
            return line.strip()
    raise AssertionError(f"no {prefix!r} within {timeout} s")


def _saved_sums(lines: list[str]) -> dict[int, tuple[float, float]]:
    """step -> (model sum, EMA sum) as the writer printed them at each save."""
    out = {}
    for line in lines:
        if line.startswith("saved step "):
            _, _, step, _, model, _, ema = line.split()
            out[int(step)] = (float(model), float(ema))
    return out


def _check_files(ckpts: Path) -> dict[int, Path]:
    found = {}
    for path in sorted(p for p in ckpts.iterdir() if is_checkpoint_name(p.name)):
        result = verify_checkpoint(path)
        assert result.ok, f"{path.name} does not verify after a kill: {result.reason}"
        state = torch.load(path, weights_only=True)
        model, ema = state["model"], state["ema"]
        assert torch.equal(model["embed.weight"], model["head.weight"]), f"{path.name}: tied weights differ"
        # The EMA lags the model from the first step on: equal weights mean the EMA's were saved as the model's.
        assert not torch.equal(model["embed.weight"], ema["module.embed.weight"]), f"{path.name}: model == EMA"
        found[state["meta"]["step"]] = path
    return found


def test_kill9_storm_tied_weights_ema_async_every_step(tmp_path: Path) -> None:
    rng = random.Random(10)
    ckpts = tmp_path / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run_ids: set[str] = set()
    newest: Path | None = None
    for launch in range(KILLS + 1):
        proc = subprocess.Popen([sys.executable, str(WRITER), str(ckpts)], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        parent, resumed_step, lines = "", 0, []
        try:
            first = _lines_until(proc, "resumed" if newest else "fresh", lines)
            if newest is not None:
                resumed_from, resumed_step = Path(first.split()[1]), int(first.split()[-1])
                assert resumed_from.name == newest.name, f"launch {launch} resumed {resumed_from}, newest {newest}"
                parent = _sha(resumed_from)
            if launch == KILLS:
                break
            _lines_until(proc, "saved step", lines)
            time.sleep(rng.uniform(0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        lines += proc.stdout.read().splitlines()
        sums = _saved_sums(lines)
        found = _check_files(ckpts)
        assert found, f"no checkpoint after kill {launch + 1}"
        for step, path in found.items():
            if step > resumed_step:  # written by this launch
                state = torch.load(path, weights_only=True)
                # Its lineage names the file it resumed from...
                assert state["meta"]["parent_sha256"] == parent, path.name
                # ...and it holds the model's and the EMA's weights of that step, each its own.
                held = (state["model"]["embed.weight"].double().sum().item(),
                        state["ema"]["module.embed.weight"].double().sum().item())
                assert held == sums[step], f"{path.name}: holds {held}, the loop had {sums[step]} at step {step}"
        newest = found[max(found)]
        run_ids |= {torch.load(p, weights_only=True)["meta"]["run_id"] for p in found.values()}
    assert len(run_ids) == 1, f"one run's relaunches wrote several lineages: {run_ids}"
