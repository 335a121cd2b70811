"""Distributed helpers: torchrun's environment, the process group, rank queries, barriers.

Works unchanged for one process (``python tools/train.py``), one node
(``torchrun --nproc_per_node=N``) and many nodes (torchrun rendezvous): everything
comes from the env vars torchrun sets.
"""

from __future__ import annotations

import datetime
import gc
import os
import traceback
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def is_local_main_process() -> bool:
    return get_local_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def select_device() -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(get_local_rank())
        return torch.device("cuda", get_local_rank())
    return torch.device("cpu")


# The process group's timeout when the caller gives none: how long one collective may wait for
# a peer. The runner passes TRAIN.COLLECTIVE_TIMEOUT_S (same default).
DEFAULT_TIMEOUT_S = 600
_timeout_s: float | None = None  # of the group this process initialised


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1).

    nccl on CUDA, gloo on CPU. Returns whether a group was created. ``timeout_s`` bounds every
    collective: a rank whose peer can no longer answer (its node is gone, it is stuck) raises
    after that long instead of waiting for the backend's default (30 minutes for gloo).
    """
    global _timeout_s
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_dist():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _timeout_s = timeout_s
    return True


def collective_timeout() -> datetime.timedelta | None:
    """The timeout :func:`init_distributed` gave the default group (None if this process did not
    initialise it), for the other groups a process creates: each must give up on a lost peer as soon."""
    return None if _timeout_s is None else datetime.timedelta(seconds=_timeout_s)


def destroy_distributed() -> None:
    if is_dist():
        dist.destroy_process_group()


@contextmanager
def distributed_session(timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Process group for the duration of the block, always torn down (also on error).

    Objects the block created and no longer references are freed before the group is destroyed:
    an FSDP2 model holds the group in reference cycles, and left to interpreter teardown its
    last reference goes during finalisation, where gloo's destructor can abort the process
    ("terminate called without an active exception") after a run that succeeded. Keep the
    block's objects in a function called inside it, so that they are unreferenced here.
    """
    init_distributed(timeout_s)
    try:
        yield
    except BaseException as e:
        # The failed call's frames (its model among their locals) live on in the traceback.
        traceback.clear_frames(e.__traceback__)
        raise
    finally:
        gc.collect()
        destroy_distributed()


def broadcast_object(obj: Any, src: int = 0, group: Any = None) -> Any:
    """Send a picklable object from (global) rank ``src`` to every rank of ``group`` (the default one;
    identity when not distributed)."""
    if not is_dist():
        return obj
    holder = [obj if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src, group=group)
    return holder[0]


def all_gather_object(obj: Any, group: Any = None) -> list[Any]:
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def any_rank_true(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (a collective: call it on all ranks)."""
    return agree(flag, 0)[0]


def agree(flag: bool, value: int, means: torch.Tensor | None = None) -> tuple[bool, int, list[float]]:
    """(``flag`` true on any rank, rank 0's ``value``, the ranks' mean of each element of ``means``) on
    every rank, in one collective: how the ranks agree at a step boundary on a stop, on rank 0's clock
    and on the step's loss. ``value``: an int in [0, 2**53). ``means`` may hold non-finite values: they
    stay in their own elements (a NaN anywhere makes that mean NaN)."""
    extra = None if means is None else means.detach().flatten().double()
    if not is_dist():
        return flag, value, [] if extra is None else extra.tolist()
    device = torch.device("cuda") if dist.get_backend() == "nccl" else \
        (extra.device if extra is not None else torch.device("cpu"))
    head = torch.tensor([1.0 if flag else 0.0, float(value) if get_rank() == 0 else 0.0], dtype=torch.float64,
                        device=device)
    t = head if extra is None else torch.cat([head, extra.to(device)])
    dist.all_reduce(t, op=dist.ReduceOp.SUM)  # the other ranks send 0 for the value: the sum is rank 0's
    values = t.tolist()
    return values[0] > 0, int(values[1]), [v / get_world_size() for v in values[2:]]


# How gloo and NCCL word a collective that failed because a peer left or did not answer (lower case).
_LOST_PEER_MARKS = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout",
                    "timing out", "remote process exited", "communicator was aborted")


def lost_peer_message(error: BaseException) -> str | None:
    """One line naming the cause when ``error`` is a collective that failed because another rank
    left or stopped answering (None otherwise): the backend's own message does not say so."""
    if _timeout_s is None or isinstance(error, PeerRankError):
        return None
    text = str(error)
    distributed = isinstance(error, dist.DistError) or "gloo" in text or "NCCL" in text or "ProcessGroup" in text
    if not distributed or not any(mark in text.lower() for mark in _LOST_PEER_MARKS):
        return None
    return (f"rank {get_rank()}: a collective with the other ranks failed ({text.splitlines()[0][:300]}): another "
            f"rank's process died, its node is unreachable, or it stopped answering for longer than the process "
            f"group's timeout (TRAIN.COLLECTIVE_TIMEOUT_S = {_timeout_s:g} s). That rank's own log says why; this "
            "rank stops here. Relaunch to resume from the last committed checkpoint.")


class PeerRankError(RuntimeError):
    """Raised on the ranks that did not fail when another rank did (see :func:`raise_on_all_ranks`)."""


def raise_on_all_ranks(error: BaseException | None, what: str,
                       peer_error: Callable[[str], BaseException] = PeerRankError, group: Any = None) -> None:
    """Raise on every rank when ``error`` is set on any (a collective: call it on all ranks).

    A rank that raised alone would leave the others waiting in their next collective until the
    process group times out (many minutes). Here the failed ranks raise their own error and the
    others raise ``peer_error`` naming each failed rank and its cause, so every process exits
    within one collective's time. Any exception type takes this path: the decision to fail
    must not depend on which kinds of error a caller thought of. ``group``: another process group
    than the default one (a background job's), whose one all-gather both decides and names.
    """
    message = None if error is None else f"{type(error).__name__}: {error}"
    if group is None:
        if not any_rank_true(error is not None):  # one 4-byte all-reduce when nothing failed
            return
        messages = all_gather_object(message)
    else:
        messages = all_gather_object(message, group)
        if all(m is None for m in messages):
            return
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    detail = "\n".join(f"  rank {r}: {m}" for r, m in failed)
    raise peer_error(f"{what} failed on rank {', '.join(str(r) for r, _ in failed)}:\n{detail}")


def run_on_all_ranks(fn: Callable[[], T], what: str,
                     peer_error: Callable[[str], BaseException] = PeerRankError, group: Any = None) -> T:
    """``fn()`` on this rank; if it raises here or on any other rank, raise on every rank.

    ``fn`` must not itself run collectives (a rank that fails before one would leave the others
    inside it). Its result is returned where every rank succeeded.
    """
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, on this rank and as peer_error on the others
        error = e
    raise_on_all_ranks(error, what, peer_error, group)
    return result  # type: ignore[return-value]
