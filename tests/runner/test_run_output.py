"""What a run sizes and prints: an LR schedule over exactly the optimizer steps taken, and
console output a person can read on a terminal and in a file."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import torch

from linnaeus.config import load_config
from linnaeus.data.build import build_data
from linnaeus.engine.progress_bar import LineProgress
from linnaeus.main import run
from tests.conftest import REPO, TINY_CFG, tiny_args


def _tiny_cfg(out_dir: Path, toy_root: Path, *opts: str):
    return load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(out_dir), "DATA.ROOT", str(toy_root),
                                       "ENV.INPUT.CACHE_DIR", str(out_dir / "cache"), *opts])


def _lr_curve(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/lr")]


def test_lr_schedule_spans_every_optimizer_step_with_accumulation_and_a_remainder(
        tmp_path, toy_root, restore_linnaeus_logger):
    epochs, accum = 2, 4
    cfg = _tiny_cfg(tmp_path, toy_root, "TRAIN.EPOCHS", str(epochs), "TRAIN.ACCUM_STEPS", str(accum),
                    "TRAIN.SCHEDULER.WARMUP_EPOCHS", "0.5")
    batches = len(build_data(cfg).train_loader)
    assert batches % accum != 0, "the test needs a short trailing accumulation group"
    run(cfg)

    run_dir = tmp_path / "tiny"
    state = torch.load(run_dir / "checkpoints" / f"checkpoint_epoch_{epochs}.pth", weights_only=True)
    steps_taken = state["progress"]["step"]
    # The trainer steps on the short trailing group too: ceil(batches / accum) steps an epoch.
    assert steps_taken == epochs * -(-batches // accum)
    # The schedule is sized for exactly those steps: it ends at the last step, not before it.
    assert state["scheduler"]["updates_per_epoch"] * epochs == steps_taken
    assert state["scheduler"]["timm_state"]["t_initial"] == steps_taken
    lrs = _lr_curve(run_dir)
    assert [s for s, _ in lrs] == list(range(1, steps_taken + 1))  # LOG_INTERVAL 1: every step's LR
    warmup = state["scheduler"]["timm_state"]["warmup_t"]
    decay = [lr for s, lr in lrs if s > warmup]
    assert all(a > b for a, b in zip(decay, decay[1:])), f"LR stopped decaying before the last step: {lrs}"
    min_lr = cfg.TRAIN.SCHEDULER.MIN_LR
    assert decay[-1] > min_lr  # the last step still ran on the cosine, not at its floor
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(min_lr)  # and the schedule ends there


# ----------------------------------------------------------------------------- console output
LOG_PREFIX = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d linnaeus[\w.]* [A-Z]+\] ")
STEPS = 8
CONSOLE_OPTS = ("TRAIN.PROGRESS_BAR", "True", "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", str(STEPS),
                "TRAIN.LOG_INTERVAL", "1")


def _train_on_console(tmp_path: Path, toy_root: Path, *, stdout_tty: bool, stderr_tty: bool) -> tuple[str, str]:
    """Run tools/train.py with stdout and stderr each a terminal (one pty, as in a shell) or one
    file (as ``> file 2>&1``); returns (stdout, stderr) as received, "" for a shared stream's second."""
    master = slave = None
    if stdout_tty or stderr_tty:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    log = open(tmp_path / "console.txt", "wb+")
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), *tiny_args(tmp_path, toy_root, *CONSOLE_OPTS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONUNBUFFERED", None)  # a file gets Python's default block buffering, as under CI
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=slave if stdout_tty else log, stderr=slave if stderr_tty else log)
        if slave is not None:
            os.close(slave)
        received = bytearray()
        while master is not None:  # drain the pty while the run writes (its buffer is small)
            if select.select([master], [], [], 300)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    chunk = b""
                if not chunk:
                    break
                received += chunk
            else:
                proc.kill()
                break
        assert proc.wait(timeout=300) == 0, (received + open(tmp_path / "console.txt", "rb").read()).decode()
    finally:
        if master is not None:
            os.close(master)
        log.close()
    tty_text = received.decode(errors="replace").replace("\r\n", "\n")  # the pty's newline translation
    file_text = (tmp_path / "console.txt").read_text()
    if stdout_tty and stderr_tty:
        return tty_text, ""
    return (tty_text, file_text) if stdout_tty else (file_text, tty_text)


def _assert_whole_log_lines(text: str) -> list[str]:
    """Every log record starts its line; returns the log lines."""
    lines = text.splitlines()
    for line in lines:
        m = LOG_PREFIX.search(line)
        assert m is None or m.start() == 0, f"a log line was spliced into other output: {line!r}"
    logged = [line for line in lines if LOG_PREFIX.match(line)]
    for step in range(1, STEPS + 1):
        assert any(f"epoch 0 step {step} (epoch step {step}) loss" in line for line in logged), (step, text)
    return logged


def _rendered(text: str) -> list[str]:
    """What a terminal shows for each line: a carriage return goes back to column 0, later text overwrites."""
    shown = []
    for line in text.split("\n"):
        cells: list[str] = []
        for segment in line.split("\r"):
            cells[:len(segment)] = segment
        shown.append("".join(cells).rstrip())
    return shown


def test_console_in_a_file_has_whole_lines_and_no_bar_frames(tmp_path, toy_root):
    out, _ = _train_on_console(tmp_path, toy_root, stdout_tty=False, stderr_tty=False)  # > file 2>&1
    assert "\r" not in out, "carriage-return bar frames in a file"
    _assert_whole_log_lines(out)
    # The bar's fields still arrive, as a whole line at the end of the epoch.
    assert re.search(rf"^epoch 0: 100% {STEPS}/{STEPS} \[.*step/s, loss=.*, lr=.*\]$", out, re.MULTILINE), out
    log_txt = (tmp_path / "tiny" / "log.txt").read_text()
    assert "\r" not in log_txt and "epoch 0: 100%" not in log_txt  # the log file holds log lines only
    _assert_whole_log_lines(log_txt)


def test_console_piped_to_tee_draws_no_bar_on_the_terminal(tmp_path, toy_root):
    # `make demo | tee out.log`: the log lines reach the terminal through another process, which
    # cannot be ordered with a bar redrawn in place, so stderr gets plain lines too.
    out, err = _train_on_console(tmp_path, toy_root, stdout_tty=False, stderr_tty=True)
    assert "\r" not in out + err
    _assert_whole_log_lines(out)
    assert re.search(rf"^epoch 0: 100% {STEPS}/{STEPS} \[", err, re.MULTILINE), err


def test_console_on_a_terminal_writes_log_lines_above_the_bar(tmp_path, toy_root):
    out, _ = _train_on_console(tmp_path, toy_root, stdout_tty=True, stderr_tty=True)
    assert re.search(r"\repoch 0: +\d+%\|", out), "no bar was drawn"  # the bar path ran
    shown = _rendered(out)
    _assert_whole_log_lines("\n".join(shown))
    assert not any(line.startswith("epoch 0:") and LOG_PREFIX.search(line) for line in shown)


def test_line_progress_writes_whole_lines_at_its_interval_and_at_close():
    stream = io.StringIO()
    display = LineProgress(total=4, initial=1, desc="epoch 2", stream=stream, interval_s=0.0)
    display.set_postfix(loss="1.0000", lr="1.00e-03", refresh=False)
    display.update(1)
    display.update(1)
    display.close()
    display.close()
    lines = stream.getvalue().split("\n")
    assert lines[-1] == "" and "\r" not in stream.getvalue()
    assert [line.split(" [")[0] for line in lines[:-1]] == ["epoch 2:  50% 2/4", "epoch 2:  75% 3/4"]
    assert lines[0].endswith(", loss=1.0000, lr=1.00e-03]")
    quiet = io.StringIO()
    display = LineProgress(total=None, initial=0, desc="epoch 0", stream=quiet, interval_s=3600.0)
    display.update(5)
    assert quiet.getvalue() == ""  # nothing before the interval
    display.close()
    assert quiet.getvalue().startswith("epoch 0: 5step [")  # no total: count and rate
