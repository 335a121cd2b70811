"""Samplers whose position can be saved in a checkpoint and restored exactly.

``ResumableDistributedSampler`` orders one epoch as a single global permutation (from
``seed + epoch``) and deals it out round-robin: rank ``r`` of ``W`` takes global positions
``consumed + r, consumed + r + W, ...``. ``consumed`` counts *global* samples the training
loop has actually used (reported through ``advance``), not what DataLoader workers have
prefetched, so the saved position is exact however many workers run ahead.

Because the position is global, a run may resume on a different number of ranks
(elastic): the remainder of the interrupted epoch is the same set of samples, dealt out
over the new ranks.

Samples can be left out for the rest of a run (:meth:`ResumableDistributedSampler.skip`: the
runner's self-healing skips those that led to a diverged step). An index skipped from epoch
``e`` drops out of the orders of epochs ``e`` and later, so positions already consumed keep their
samples; the skip list is part of the saved state.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch.utils.data import Sampler

STATE_KEYS = ("epoch", "consumed", "seed", "num_replicas")


class ResumableDistributedSampler(Sampler[tuple[int, int]]):
    """Distributed, resumable training sampler yielding ``(epoch, index)`` keys.

    Args:
        num_samples: dataset length.
        num_replicas: number of ranks (W).
        rank: this process's rank in ``[0, W)``.
        seed: base seed; epoch ``e`` is ordered by a generator seeded with ``seed + e``.
        shuffle: permute each epoch (False: dataset order).
        drop_last: True drops the tail of the epoch so every rank gets the same number of
            samples; False pads by repeating the epoch's first samples instead.
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}.")
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.consumed = 0  # global samples used so far in self.epoch
        self.skipped: dict[int, int] = {}  # dataset index -> the first epoch without it (skip())
        # epoch of a loaded state whose position set_epoch must keep (until training moves on)
        self._restored_epoch: int | None = None

    # ---------------------------------------------------------------- ordering
    def global_order(self, epoch: int) -> list[int]:
        """The epoch's order of dataset indices (identical on every rank): a permutation of the
        dataset, less the indices skipped by then."""
        if not self.shuffle:
            order = list(range(self.num_samples))
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        if any(first <= epoch for first in self.skipped.values()):
            order = [i for i in order if self.skipped.get(i, epoch + 1) > epoch]
        return order

    def epoch_length(self, epoch: int) -> int:
        """Samples in ``epoch``'s order (the dataset less the indices skipped by then)."""
        return self.num_samples - sum(1 for first in self.skipped.values() if first <= epoch)

    def _per_rank(self) -> int:
        remaining = max(self.epoch_length(self.epoch) - self.consumed, 0)
        if self.drop_last:
            return remaining // self.num_replicas
        return math.ceil(remaining / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # Computed eagerly: the position must be the one at iter() time, even if advance()
        # runs while the DataLoader is still drawing indices.
        order = self.global_order(self.epoch)
        start = self.consumed + self.rank
        positions = range(start, start + self._per_rank() * self.num_replicas, self.num_replicas)
        # padding (drop_last=False) wraps around to the start of the epoch's order
        return iter([(self.epoch, order[p % len(order)]) for p in positions])

    def indices_between(self, epoch: int, start: int, end: int) -> list[int]:
        """The dataset indices at global positions ``[start, end)`` of ``epoch``'s order: the samples
        that all ranks together consumed there (the same list on every rank)."""
        order = self.global_order(epoch)
        return [order[p % len(order)] for p in range(start, end)]

    def skip(self, indices: Iterable[int], from_epoch: int) -> None:
        """Leave ``indices`` out of the orders of ``from_epoch`` and every later epoch.

        Skip only samples that sit at or after the position ``from_epoch`` continues from (a
        rollback skips steps after the checkpoint it returns to): the positions before it then
        keep their samples, and the saved position stays exact."""
        for i in indices:
            i = int(i)
            if not 0 <= i < self.num_samples:
                raise ValueError(f"skip(): index {i} is outside the dataset of {self.num_samples} samples.")
            self.skipped[i] = min(self.skipped.get(i, from_epoch), int(from_epoch))
        if self.epoch_length(from_epoch) < 1:
            raise ValueError(f"skip(): every sample of the dataset ({self.num_samples}) would be skipped.")

    def __len__(self) -> int:
        """Samples this rank still yields in the current epoch."""
        return self._per_rank()

    # ---------------------------------------------------------------- position
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless a loaded state is positioned inside it.

        The loaded position survives any number of ``set_epoch`` calls for its epoch until
        ``advance`` is called (or another epoch is set), so a second, redundant call on the
        resume path cannot silently rewind the epoch.
        """
        if epoch != self._restored_epoch:
            self._restored_epoch = None
            self.consumed = 0
        self.epoch = int(epoch)

    def advance(self, n_per_rank: int) -> None:
        """Record that every rank consumed ``n_per_rank`` more samples (one micro-batch each)."""
        if n_per_rank < 0:
            raise ValueError(f"advance() expects a non-negative count, got {n_per_rank}.")
        self._restored_epoch = None
        self.consumed += int(n_per_rank) * self.num_replicas

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, int]:
        """Plain ints only, so the state loads under ``torch.load(weights_only=True)``."""
        return {
            "epoch": int(self.epoch),
            "consumed": int(self.consumed),
            "seed": int(self.seed),
            "num_replicas": int(self.num_replicas),
            "num_samples": int(self.num_samples),
            "skip": [[index, first] for index, first in sorted(self.skipped.items())],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position.

        The saved ``seed`` is adopted, since the interrupted epoch's order depends on it. If
        ``num_replicas`` differs from the saved one, the run continues from the same *global*
        position: the unconsumed rest of the epoch is dealt out over the new ranks.
        """
        if "num_replicas" not in state and "world_size" in state:
            state = {**state, "num_replicas": state["world_size"]}
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(
                f"sampler state lacks {missing}; expected keys {list(STATE_KEYS)}, got {sorted(state)}. "
                "The checkpoint was not written by ResumableDistributedSampler.state_dict()."
            )
        bad = {k: state[k] for k in STATE_KEYS if not isinstance(state[k], int) or isinstance(state[k], bool)}
        if bad:
            raise ValueError(f"sampler state values must be ints, got {bad}.")
        saved_n = state.get("num_samples")
        if saved_n is not None and int(saved_n) != self.num_samples:
            raise ValueError(
                f"sampler state is for a dataset of {saved_n} samples but this dataset has "
                f"{self.num_samples}; the epoch order cannot be continued. Resume with the same "
                "dataset, or load weights only (MODEL.PRETRAINED) to start a fresh schedule."
            )
        if state["consumed"] < 0 or state["epoch"] < 0:
            raise ValueError(f"sampler state has a negative position: {dict(state)}.")
        skip = state.get("skip", [])  # absent: saved before samples could be skipped
        if not isinstance(skip, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p)
                for p in skip):
            raise ValueError(f"sampler state: 'skip' must be a list of [index, first epoch] int pairs, got {skip!r}.")
        self.skipped = {}
        for index, first in skip:
            self.skip([index], first)
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._restored_epoch = self.epoch


class ShardedEvalSampler(Sampler[int]):
    """Rank ``r`` of ``W`` evaluates indices ``r, r + W, ...``: no padding, no duplicates.

    Ranks may get one sample (and so one batch) more than others; sum counts with an
    all-reduce after the loop, not inside it, so exact metrics need no padding.
    """

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas {num_replicas}.")
        self.num_samples = int(num_samples)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.num_replicas))
