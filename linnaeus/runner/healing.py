"""Self-healing: a step whose loss or gradient norm is non-finite, or whose loss spikes, is rolled back.

At every step boundary the ranks agree on the step's mean loss and gradient norm (the all-reduce
that already agrees on a stop and on the clock, :meth:`RunCheckpoints.step_boundary`), so every
rank finds the same step bad. That step is never saved. The run then

1. rolls back to its newest committed checkpoint (verified, as at a resume);
2. skips, for the rest of the run, the samples of the bad step and of up to ``TRAIN.SPIKE.SKIP_STEPS``
   - 1 steps before it (those after the checkpoint, in the bad step's epoch): the sampler's order
   leaves them out from that epoch on;
3. optionally scales the learning rate (``TRAIN.SPIKE.LR_SCALE`` per rollback), and goes on.

What a relaunch needs to do the same is in the checkpoint: the skipped samples (the sampler's
state), the rollbacks and the losses the spike test compares against (this component,
``healing``). So a run resumed from any of its checkpoints makes the same decisions, and a
recovered run relaunched from a checkpoint after its rollback ends bit-identical.

After ``TRAIN.SPIKE.MAX_ROLLBACKS`` rollbacks (or with no checkpoint to go back to) the next bad step
stops the run with :class:`TrainingDivergedError`, naming the steps and the samples: a run never
ends with exit 0 holding non-finite weights.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

logger = logging.getLogger("linnaeus")

# Sample indices named in a log line or an error (all of them are in the checkpoint).
_SHOWN = 8


class TrainingDivergedError(RuntimeError):
    """A bad step the run cannot heal: the rollbacks are used up, or there is no checkpoint to go back to."""


@dataclass
class BadStep:
    """A step found bad, with the global sample positions of the steps whose samples get skipped."""

    step: int
    epoch: int
    reason: str
    windows: list[tuple[int, int, int, int]]  # (step, epoch, start, end), oldest first


class SelfHealing:
    """Judges every step (:meth:`judge`) and does a rollback's bookkeeping; the checkpoint component
    ``healing``: ``{"events": [...], "losses": [...]}``.

    Args:
        factor: a loss above ``factor`` × the median of the last ``window`` good losses is a spike
            (0: only non-finite values are bad).
        window: good steps the running median spans; spikes are judged once it is full.
        max_rollbacks: rollbacks a run may make; the next bad step stops it.
        lr_scale: the LR is multiplied by ``lr_scale ** rollbacks`` (1: unchanged).
        skip_steps: steps whose samples a rollback skips, the bad one included.
        sampler: the run's ``ResumableDistributedSampler`` (``skip``, ``indices_between``).
        scheduler: the run's ``StepwiseScheduler`` (``lr_scale``), or None for a constant LR.
        describe: a sample index -> how the log and the error name it (e.g. its file).
    """

    def __init__(self, *, factor: float, window: int, max_rollbacks: int, lr_scale: float, skip_steps: int,
                 sampler: Any, scheduler: Any = None, describe: Callable[[int], str] = str) -> None:
        self.factor, self.window, self.max_rollbacks = factor, window, max_rollbacks
        self.lr_scale, self.skip_steps = lr_scale, skip_steps
        self.sampler, self.scheduler, self.describe = sampler, scheduler, describe
        self.losses: deque[float] = deque(maxlen=window)
        self.events: list[dict[str, Any]] = []
        self._recent: deque[tuple[int, int, int, int]] = deque(maxlen=skip_steps)
        self.pending: BadStep | None = None
        self._carried: tuple[list[dict[str, Any]], list[tuple[int, list[int]]]] = ([], [])

    # ------------------------------------------------------------------ every step
    def judge(self, step: int, health: list[float], data: tuple[int, int, int] | None) -> bool:
        """Whether the step that just ended is bad (the same answer on every rank: ``health`` is the
        ranks' agreed mean of (loss, gradient norm)). A bad step is left in :attr:`pending`."""
        if data is not None:
            self._recent.append((step, *data))
        loss, grad_norm = health
        reason = ""
        if not math.isfinite(loss):
            reason = f"non-finite loss ({loss})"
        elif not math.isfinite(grad_norm):
            reason = f"non-finite gradient norm ({grad_norm})"
        elif self.factor > 0 and len(self.losses) == self.window:
            median = statistics.median(self.losses)
            if loss > self.factor * median:
                reason = (f"loss spike: {loss:.4g} > TRAIN.SPIKE.FACTOR {self.factor:g} x {median:.4g}, the median of "
                          f"the last {self.window} steps")
        if not reason:
            self.losses.append(loss)
            return False
        epoch = data[0] if data is not None else -1
        self.pending = BadStep(step, epoch, reason, [w for w in self._recent if w[1] == epoch])
        return True

    # ------------------------------------------------------------------ the rollback
    def begin_rollback(self) -> None:
        """Before the checkpoint is restored: raise :class:`TrainingDivergedError` when no rollback is
        left; else read the bad steps' samples while the sampler's order is still the one they came from."""
        bad = self._pending()
        if len(self.events) >= self.max_rollbacks:
            raise TrainingDivergedError(self._stop_message(
                bad, f"TRAIN.SPIKE.MAX_ROLLBACKS is {self.max_rollbacks} and the run has rolled back "
                     f"{len(self.events)} time(s)"))
        logger.warning("Step %d (epoch %d): %s. Rolling back to the newest checkpoint (rollback %d of "
                       "TRAIN.SPIKE.MAX_ROLLBACKS %d)", bad.step, bad.epoch, bad.reason, len(self.events) + 1,
                       self.max_rollbacks)
        self._carried = ([dict(e) for e in self.events],
                         [(step, self.sampler.indices_between(epoch, start, end)) for step, epoch, start, end in bad.windows])

    def no_checkpoint(self) -> TrainingDivergedError:
        return TrainingDivergedError(self._stop_message(
            self._pending(), "this run has no committed checkpoint to roll back to yet"))

    def rolled_back(self, to_step: int) -> None:
        """After the rollback restored the checkpoint of ``to_step`` (and with it the sampler and this
        component as they were then): record the event, skip its samples, scale the LR."""
        bad = self._pending()
        events, windows = self._carried
        # Only the steps after the checkpoint: a relaunch from it never saw the earlier ones here.
        skipped = [(step, indices) for step, indices in windows if step > to_step]
        samples = sorted({i for _, indices in skipped for i in indices})
        self.events = [*events, {"step": bad.step, "epoch": bad.epoch, "reason": bad.reason, "to_step": int(to_step),
                                 "samples": samples}]
        self._apply()
        self.pending = None
        self._recent.clear()
        steps = [step for step, _ in skipped] or [bad.step]
        which = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}..{steps[-1]}"
        scale = f"; the LR is scaled by {self.current_lr_scale():g} from here" if self.lr_scale != 1 else ""
        logger.warning("Skipping the %d sample(s) of %s (epoch %d) for the rest of the run: %s%s", len(samples), which,
                       bad.epoch, self._shown(samples), scale)

    def current_lr_scale(self) -> float:
        return self.lr_scale ** len(self.events)

    def _pending(self) -> BadStep:
        assert self.pending is not None, "no bad step to act on"
        return self.pending

    def _apply(self) -> None:
        for event in self.events:
            if event["samples"]:
                self.sampler.skip(event["samples"], event["epoch"])
        if self.scheduler is not None:
            self.scheduler.lr_scale = self.current_lr_scale()

    def _shown(self, samples: list[int]) -> str:
        shown = ", ".join(f"{i} ({self.describe(i)})" for i in samples[:_SHOWN])
        return shown + (f" and {len(samples) - _SHOWN} more (all in the checkpoint's sampler state)"
                        if len(samples) > _SHOWN else "")

    def _stop_message(self, bad: BadStep, why: str) -> str:
        past = "; ".join(f"step {e['step']}: {e['reason']} (skipped {len(e['samples'])} sample(s): "
                         f"{self._shown(e['samples'])})" for e in self.events) or "none"
        window = sorted({i for _, epoch, start, end in bad.windows
                         for i in self.sampler.indices_between(epoch, start, end)})
        return (f"Training diverged at step {bad.step} (epoch {bad.epoch}): {bad.reason}. The run stops here, without "
                f"saving this step, because {why}. The step's samples: {self._shown(window) or 'unknown'}. Earlier "
                f"rollbacks: {past}. What to do: look at those samples; lower TRAIN.OPTIMIZER.LR or set TRAIN.CLIP_GRAD "
                "(and TRAIN.SPIKE.LR_SCALE below 1); raise TRAIN.SPIKE.MAX_ROLLBACKS, so that a relaunch (which resumes "
                "from the newest checkpoint and meets the same samples) rolls back and skips them.")

    # ------------------------------------------------------------------ the checkpoint component
    def state_dict(self) -> dict[str, Any]:
        return {"events": [dict(e) for e in self.events], "losses": [float(v) for v in self.losses]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        events, losses = state.get("events"), state.get("losses")
        if not isinstance(events, list) or not isinstance(losses, list) or not all(
                isinstance(e, Mapping) and {"step", "epoch", "reason", "samples"} <= e.keys() for e in events):
            raise ValueError("healing state: expected {'events': [{'step', 'epoch', 'reason', 'samples', ...}], "
                             f"'losses': [float]}}, got {state!r}.")
        self.events = [dict(e) for e in events]
        self.losses = deque((float(v) for v in losses), maxlen=self.window)
        self._apply()


def build_healing(spike: Any, sampler: Any, scheduler: Any, dataset: Any = None) -> SelfHealing:
    """``TRAIN.SPIKE.*`` → :class:`SelfHealing`; samples are named by their file where the dataset knows it."""
    path = getattr(dataset, "path", None)
    return SelfHealing(factor=spike.FACTOR, window=spike.WINDOW, max_rollbacks=spike.MAX_ROLLBACKS,
                       lr_scale=spike.LR_SCALE, skip_steps=spike.SKIP_STEPS, sampler=sampler, scheduler=scheduler,
                       describe=path if callable(path) else str)


__all__ = ["BadStep", "SelfHealing", "TrainingDivergedError", "build_healing"]
