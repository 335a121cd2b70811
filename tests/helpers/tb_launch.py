"""Train (tools/train.py arguments), optionally signalling this process at an optimizer step, and
print, in order, each flush of the TensorBoard writer and each checkpoint save.

Usage: python tb_launch.py {none|kill|term} <step> <tools/train.py args...>

At the start of ``on_step_end`` for ``<step>`` (its scalars are logged, no save has run for it):
``kill`` flushes the writer (as it does by itself whenever its queue fills or ``flush_secs``
pass, so events logged after the last checkpoint are on disk) and sends SIGKILL; ``term`` sends
SIGTERM (a preemption notice: the run saves and exits 0). Output lines: ``tb flush`` and
``save step <N>``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from linnaeus.cli.commands import exit_process, pause_gc, resume_gc  # noqa: E402

pause_gc()  # the imports below as tools/train.py makes them
from linnaeus.checkpoint import CheckpointManager  # noqa: E402
from linnaeus.engine.run_log import RunEventWriter  # noqa: E402
from linnaeus.main import cli  # noqa: E402
from linnaeus.runner.checkpoints import RunCheckpoints  # noqa: E402
resume_gc()

_poll, _flush, _save = RunCheckpoints.poll, RunEventWriter.flush, CheckpointManager.save


def _flush_logged(self: RunEventWriter) -> None:
    print("tb flush", flush=True)
    _flush(self)


def _save_logged(self: CheckpointManager, **kwargs: Any) -> Any:
    print(f"save step {kwargs['step']}", flush=True)
    return _save(self, **kwargs)


def _signal_at(step: int, action: str):  # type: ignore[no-untyped-def]
    def poll(self: RunCheckpoints) -> None:  # on_step_end's first call, every step
        if self.progress.step == step:
            if action == "kill":
                for hook in self.before_save:  # main.py registers the TensorBoard writer's flush
                    hook()
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "term":
                os.kill(os.getpid(), signal.SIGTERM)
        _poll(self)

    return poll


if __name__ == "__main__":
    action, step, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    if action not in ("none", "kill", "term"):
        raise SystemExit(f"action must be none, kill or term, got {action!r}")
    RunEventWriter.flush = _flush_logged  # type: ignore[method-assign]
    CheckpointManager.save = _save_logged  # type: ignore[method-assign]
    RunCheckpoints.poll = _signal_at(step, action)  # type: ignore[method-assign]
    exit_process(cli(argv))  # as tools/train.py ends
