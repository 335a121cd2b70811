"""Every rank's random number generators in a checkpoint: collected at a save, restored at a
resume, so that an interrupted run continues the streams an uninterrupted one would have drawn.

NumPy's state is stored as a tensor so that ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from linnaeus.dist import all_gather_object, get_rank, get_world_size

logger = logging.getLogger("linnaeus.checkpoint")


def collect_rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, current CUDA device)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda: list[torch.Tensor] = []
    # Only when this process already uses CUDA: querying would otherwise create a context.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [torch.cuda.get_rng_state(torch.cuda.current_device())]
    return {
        "python": (version, tuple(internal), gauss),
        "numpy": {
            "bit_generator": str(name),
            "state": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`collect_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["bit_generator"],
            npst["state"].numpy().astype(np.uint32),
            int(npst["pos"]),
            int(npst["has_gauss"]),
            float(npst["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda"):
        if torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"][0], torch.cuda.current_device())
        else:
            logger.warning("Checkpoint holds a CUDA RNG state but CUDA is not available; it is not restored.")


def gather_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG state, indexed by rank. A collective: call it on all ranks."""
    return all_gather_object(collect_rng_state())


def restore_rank_rng_state(states: Sequence[Mapping[str, Any]]) -> bool:
    """Restore this rank's entry of a gathered list; False (with a warning) if it has none."""
    rank, world = get_rank(), get_world_size()
    if len(states) != world:
        logger.warning(
            "Checkpoint RNG states were saved by %d rank(s), this run has %d: random streams "
            "continue from the checkpoint only for ranks present in both, so results will "
            "differ from an uninterrupted run.",
            len(states),
            world,
        )
    if rank >= len(states):
        return False
    restore_rng_state(states[rank])
    return True


__all__ = ["collect_rng_state", "gather_rng_states", "restore_rank_rng_state", "restore_rng_state"]
