"""Where training stands (:class:`Progress`, saved in every checkpoint) and how many optimizer steps an
epoch makes (:func:`steps_per_epoch`, the one definition the LR schedule and the trainer share)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint as plain ints.

    epoch: epochs completed. step: optimizer steps in total. epoch_step: optimizer steps
    within the current (incomplete) epoch. samples: global training samples seen.
    """

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    samples: int = 0

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Progress":
        names = [f.name for f in fields(cls)]
        missing = [k for k in names if k not in d]
        bad = {k: d[k] for k in names if k in d and (not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] < 0)}
        if missing or bad:
            raise ValueError(f"progress state: expected non-negative ints for {names}; "
                             f"missing {missing}, invalid {bad} (got {dict(d)}).")
        return cls(**{k: int(d[k]) for k in names})

    # The checkpoint library restores attached objects in place through the state_dict protocol.
    def state_dict(self) -> dict[str, int]:
        return self.to_dict()

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        restored = Progress.from_dict(d)
        for f in fields(self):
            setattr(self, f.name, getattr(restored, f.name))


def steps_per_epoch(num_batches: int, accum_steps: int = 1, max_steps_per_epoch: int = 0) -> int:
    """Optimizer steps :class:`Trainer` makes in an epoch of ``num_batches`` micro-batches (per rank).

    The one definition: the runner sizes the LR schedule with it and the trainer its progress
    bar, so the schedule ends at the epoch's last step. A trailing group of fewer than
    ``accum_steps`` micro-batches still makes a step (as in timm's train script: no data is
    skipped), hence the ceiling; capped by ``max_steps_per_epoch`` (0 = no cap).
    """
    steps = math.ceil(num_batches / accum_steps)
    return min(steps, max_steps_per_epoch) if max_steps_per_epoch > 0 else steps


__all__ = ["Progress", "steps_per_epoch"]
