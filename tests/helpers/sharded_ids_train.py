#!/usr/bin/env python
"""``tools/train.py`` with two test instruments around the real sampler (nothing else changes):

- every (epoch, index) key the training loop consumes (the sampler's ``advance``) is appended to
  ``$LINNAEUS_TEST_IDS.rank<r>``, in order, so a test can check an epoch across relaunches;
- with ``LINNAEUS_TEST_SIGTERM_AT=K``, rank 0 sends itself a real SIGTERM after its K-th consumed
  micro-batch (the runner's preemption path then saves on every rank and exits 0);
- with ``LINNAEUS_TEST_ALIVE=PREFIX``, after the run returns each rank writes to ``PREFIX.rank<r>``
  how many FSDP2 modules are still alive, before any garbage collection of its own: they hold the
  process group, and one freed during interpreter teardown can abort a finished run;
- with ``LINNAEUS_TEST_CLOCK=S0,S1,...``, the training clock of rank r reads ``Sr`` seconds per consumed
  micro-batch (a clock of its own per rank, deterministic), instead of the wall clock;
- with ``LINNAEUS_TEST_PAUSE_AT=K`` and ``LINNAEUS_TEST_PAUSE=PATH``, rank 0 stops after its K-th consumed
  micro-batch, once per PATH: it creates PATH and waits (up to 120 s) until the test removes it, so that
  the test can signal it at a known step;
- with ``LINNAEUS_TEST_SAVES=PREFIX``, each rank appends to ``PREFIX.rank<r>`` the step of every save
  of the main saver it takes part in.
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from linnaeus.cli.commands import exit_process, pause_gc, resume_gc  # noqa: E402

pause_gc()  # the imports below as tools/train.py makes them
from linnaeus.data.sampler import ResumableDistributedSampler  # noqa: E402
from linnaeus.main import cli  # noqa: E402
resume_gc()
from tests.helpers.group_session import report_alive  # noqa: E402

_OUT = os.environ["LINNAEUS_TEST_IDS"]
_RANK = int(os.environ.get("RANK", "0"))
_SIGTERM_AT = int(os.environ.get("LINNAEUS_TEST_SIGTERM_AT", "0"))
_iter, _advance = ResumableDistributedSampler.__iter__, ResumableDistributedSampler.advance
_consumed_batches = [0]


def _recording_iter(self):  # type: ignore[no-untyped-def]
    self._test_pending = list(_iter(self))
    return iter(self._test_pending)


def _recording_advance(self, n_per_rank: int) -> None:  # type: ignore[no-untyped-def]
    taken, self._test_pending = self._test_pending[:n_per_rank], self._test_pending[n_per_rank:]
    with open(f"{_OUT}.rank{_RANK}", "a") as f:
        f.writelines(f"{epoch} {index}\n" for epoch, index in taken)
    _advance(self, n_per_rank)
    _consumed_batches[0] += 1
    if _RANK == 0 and _consumed_batches[0] == _SIGTERM_AT:
        os.kill(os.getpid(), signal.SIGTERM)
    if _RANK == 0 and _consumed_batches[0] == int(os.environ.get("LINNAEUS_TEST_PAUSE_AT", "0")):
        _pause(os.environ["LINNAEUS_TEST_PAUSE"])


def _pause(path: str) -> None:
    if os.path.exists(path + ".used"):
        return
    open(path + ".used", "w").close()
    open(path, "w").close()
    for _ in range(1200):
        if not os.path.exists(path):
            return
        time.sleep(0.1)


ResumableDistributedSampler.__iter__ = _recording_iter
ResumableDistributedSampler.advance = _recording_advance

if os.environ.get("LINNAEUS_TEST_CLOCK"):
    from linnaeus.runner.clock import TrainingClock

    _rate = float(os.environ["LINNAEUS_TEST_CLOCK"].split(",")[_RANK])
    TrainingClock.source = staticmethod(lambda: _consumed_batches[0] * _rate)

if os.environ.get("LINNAEUS_TEST_SAVES"):
    from linnaeus.runner.checkpoints import RunCheckpoints

    _save = RunCheckpoints._save

    def _recording_save(self, manager, **kwargs):  # type: ignore[no-untyped-def]
        if manager is self.main:
            with open(f"{os.environ['LINNAEUS_TEST_SAVES']}.rank{_RANK}", "a") as f:
                f.write(f"{self.progress.step}\n")
        _save(self, manager, **kwargs)

    RunCheckpoints._save = _recording_save

if __name__ == "__main__":
    code = cli()
    if os.environ.get("LINNAEUS_TEST_ALIVE"):
        report_alive(os.environ["LINNAEUS_TEST_ALIVE"])
    exit_process(code)  # as tools/train.py ends
