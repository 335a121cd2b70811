"""Shared fixtures: the tiny test config, a toy dataset generated once per session, run helpers."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_CFG = REPO / "tests" / "configs" / "tiny.yaml"
VENV_BIN = Path(sys.executable).parent
E = TypeVar("E", bound=BaseException)


def pytest_configure(config: pytest.Config) -> None:
    # Tests run many small processes side by side on 2 cores: one thread each avoids oversubscription.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def restore_linnaeus_logger() -> Iterator[None]:
    """Runs and ``setup_logging`` reconfigure the process-wide "linnaeus" logger: put it back for
    the tests that follow."""
    logger = logging.getLogger("linnaeus")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for h in logger.handlers:
        if h not in saved[0]:
            h.close()
    logger.handlers, logger.level, logger.propagate = saved


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Callable[[int], dict]:
    """``reference(nproc)``: the final checkpoint of an uninterrupted tiny run on ``nproc`` processes
    (step checkpoints every 5 steps), trained once per session. Every interrupted-and-relaunched
    run must end identical to it: how often or how (sync, async) a run saves changes nothing in its
    training, so the fault tests of several files share it."""
    from tests.runner.test_resume_exact import STEP_OPTS, _final_state

    cache: dict[int, dict] = {}

    def get(nproc: int) -> dict:
        if nproc not in cache:
            out = tmp_path_factory.mktemp(f"ref{nproc}")
            run_train(out, toy_root, *STEP_OPTS, nproc=nproc)
            cache[nproc] = _final_state(out / "tiny")
        return cache[nproc]

    return get


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config's toy dataset, generated once for the whole session."""
    from linnaeus.data.toy import ensure_toy_dataset

    root = tmp_path_factory.mktemp("toy") / "toy"
    ensure_toy_dataset(root, num_samples=240, img_size=64, seed=0)
    return root


# The shared trained run (trained_demo): the demo config (its model, optimizer, schedule and
# checkpoint policy, what `make demo` trains) trained briefly: 2 epochs of the session's 240 toy
# images, with an EMA to evaluate. Its run dir is <base>/demo.
DEMO_CFG = REPO / "configs" / "demo.yaml"
TRAINED_NAME = "demo"
TRAINED_OPTS = ("DATA.TOY_NUM_SAMPLES", "240", "TRAIN.EPOCHS", "2", "DATA.NUM_WORKERS", "0",
                "TRAIN.PROGRESS_BAR", "False", "TRAIN.EMA.ENABLED", "True")


def trained_args(out_dir: Path, toy_root: Path, *opts: str) -> list[str]:
    """``--cfg`` and ``--opts`` of the shared trained run (more ``opts`` after its own)."""
    return ["--cfg", str(DEMO_CFG), "--opts", "ENV.OUTPUT.BASE_DIR", str(out_dir), "EXPERIMENT.NAME", TRAINED_NAME,
            "DATA.ROOT", str(toy_root), "ENV.INPUT.CACHE_DIR", str(out_dir / "cache"), *TRAINED_OPTS, *opts]


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory: pytest.TempPathFactory, toy_root: Path) -> Path:
    """ENV.OUTPUT.BASE_DIR of one finished brief run of the demo config (TRAINED_OPTS), trained once per
    test process, for the commands that use a trained model (eval, predict, the report, --eval-only,
    --dry-run). They may add files under its run dir (eval/), never change its checkpoints."""
    out = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(train_cmd() + trained_args(out, toy_root), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"training exited {proc.returncode}\n{proc.stderr[-6000:]}"
    return out


def train_cmd(nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(REPO / "tools" / "train.py")]
    return [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", str(REPO / "tools" / "train.py")]


def tiny_args(out_dir: Path, toy_root: Path, *opts: str, name: str = "tiny") -> list[str]:
    return ["--cfg", str(TINY_CFG), "--opts", "ENV.OUTPUT.BASE_DIR", str(out_dir), "EXPERIMENT.NAME", name,
            "DATA.ROOT", str(toy_root), "ENV.INPUT.CACHE_DIR", str(out_dir / "cache"), *opts]


def run_train(out_dir: Path, toy_root: Path, *opts: str, nproc: int = 1, name: str = "tiny",
              timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(train_cmd(nproc) + tiny_args(out_dir, toy_root, *opts, name=name), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"training exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-6000:]}\n"
                             f"STDERR:\n{proc.stderr[-6000:]}")
    return proc


def poll_until_raises(poll: Callable[[], None], error: type[E], timeout: float = 30.0) -> E:
    """Call ``poll`` (a training loop's per-step check) until it raises ``error``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            poll()
        except error as e:
            return e
        time.sleep(0.01)
    raise AssertionError(f"{getattr(poll, '__qualname__', poll)} did not raise {error.__name__} within {timeout} s")


def process_running(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie has ended (its parent, or init, reaps it later)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its parent (init, or this test for the launcher) reaps it


def wait_for_line(pattern: str, log: Path, procs: list[subprocess.Popen], timeout: float = 90) -> re.Match[str]:
    """The first match of ``pattern`` in the log file ``log`` of running processes; fails when one of
    ``procs`` exits first or ``timeout`` passes, with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        exited = [p for p in procs if p.poll() is not None]
        assert not exited, f"{exited[0].args[0]} exited {exited[0].returncode}:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-4000:]}")


def committed_by_step(directory: Path) -> dict[int, Path]:
    """Every single-file checkpoint under a final name in ``directory``, by the step it holds; each must
    verify (what a kill storm checks after every kill)."""
    import torch

    from linnaeus.checkpoint import verify_checkpoint
    from linnaeus.checkpoint.formats import is_checkpoint_name

    found = {}
    for path in sorted(p for p in directory.iterdir() if is_checkpoint_name(p.name)):
        result = verify_checkpoint(path)
        assert result.ok, f"{path} does not verify after a kill: {result.reason}"
        found[torch.load(path, weights_only=True)["meta"]["step"]] = path
    return found

