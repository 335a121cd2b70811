"""Asynchronous sharded saves: ``dcp.async_save`` with the commit of :mod:`.save` kept.

The caller's thread (every rank, a collective) only stages: DCP's :class:`DefaultStager` copies
every tensor of this rank's state into CPU memory it keeps (pinned and shared on CUDA), CPU
tensors included, so training may change the live tensors as soon as the call returns; rank 0's
``state.pt`` part is deep-copied the same way. Then, in the background on every rank:

    DCP writes this rank's shards (rank 0: ``.metadata``)               DCP's writer thread
    each rank fsyncs and hashes its own shards; all ranks gather       our job thread
      (digests, error); rank 0 fsyncs ``.metadata`` in the commit
    rank 0: state.pt, manifest, one rename, ``latest``, hook, retention  only if no rank failed
    rank 0 broadcasts the outcome

so a final name still always means complete. Every collective of a save in the background runs on
one dedicated gloo process group, created once by every rank at its first asynchronous save, so
the background never interleaves with the training's collectives on the default group. One save
is in flight at a time: the next save waits for the previous one's commit first. Its outcome is
known to rank 0 at the end of the job and raised on every rank by the manager's next ``poll``.

With an :class:`~linnaeus.checkpoint.disk.Overlap` (``CheckpointPolicy.overlap_snapshot``), the tensors
it does not defer are cloned on the caller's thread, and DCP's stager copies the rest on its own thread
(``use_async_staging``) while training goes on, the gate closed until that copy is done.

Host memory: the stager keeps one CPU copy of this rank's state, keyed by the live storages and
reused by every later save (copied into, not reallocated), and the only references to a staged
state end with its job, so resident memory does not grow with the number of saves.
"""

from __future__ import annotations

import atexit
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict_saver import AsyncSaveResponse

from linnaeus.dist import collective_timeout, get_rank, is_dist, raise_on_all_ranks

from ... import testing
from ...disk import AsyncWriter, Overlap, remove_tree, snapshot, storage_key
from ...errors import CheckpointError
from ..base import OnCommitted, SaveResult
from .parts import leader_of
from .save import Staged, commit, commit_on_nodes, digest_own_shards, follow_on_nodes
from .state_dicts import first_failure, shard_writer, single_process_is_intended

_GROUP: dist.ProcessGroup | None = None


def background_group() -> dist.ProcessGroup | None:
    """The gloo group of background saves (a collective the first time; None without a process group)."""
    global _GROUP
    if not is_dist():
        return None
    if _GROUP is None:
        # The default group's timeout (TRAIN.COLLECTIVE_TIMEOUT_S), not gloo's 30 minutes: a rank whose
        # peer died mid-save must give up on the background collectives as soon as on the training's.
        _GROUP = dist.new_group(backend="gloo", timeout=collective_timeout())
        # Held here, the group would outlive destroy_process_group() and be destroyed during
        # interpreter teardown, where gloo's destructor can abort the process ("terminate called
        # without an active exception"): drop it while the interpreter is still whole.
        atexit.register(_forget_group)
    return _GROUP


def _forget_group() -> None:
    global _GROUP
    _GROUP = None


class ShardedBackground:
    """One manager's asynchronous sharded saves: its stager (the kept CPU copy) and its job thread."""

    def __init__(self, name: str) -> None:
        self.writer = AsyncWriter(name)
        self._cuda = torch.cuda.is_available()
        # Synchronous staging: the copy is complete when the save call returns (the snapshot promise).
        self.stager = DefaultStager(StagingOptions(use_pinned_memory=self._cuda, use_shared_memory=self._cuda,
                                                   use_async_staging=False, use_non_blocking_copy=False))
        self._overlapping: DefaultStager | None = None  # the stager of overlapped saves, made at the first

    def start(self, staged: Staged, on_committed: OnCommitted, overlap: Overlap | None = None) -> None:
        """Stage ``staged``'s tensors (every rank) and ``state.pt`` entries (rank 0) now (with ``overlap``:
        all but its deferred tensors, which DCP's stager copies behind the gate); write and commit in the
        background. The caller has already waited for the previous save and raised its error."""
        group = background_group()
        frozen_rest = snapshot(staged.rest)
        writer = shard_writer(staged.tmp)
        stager = self.stager
        if overlap is not None:
            staged.tensors = _clone_unless(staged.tensors, overlap.deferred)
            if self._overlapping is None:
                self._overlapping = _OverlappingStager(StagingOptions(
                    use_pinned_memory=self._cuda, use_shared_memory=self._cuda, use_async_staging=True,
                    use_non_blocking_copy=self._cuda))
            stager = self._overlapping
            if self._cuda:
                # DCP stages on a side stream that does not wait for this stream's queued kernels (the
                # last optimizer step's): let them finish first, or the copy could read older weights.
                torch.cuda.current_stream().synchronize()
            overlap.gate.close()
        response: Any = None
        try:
            with single_process_is_intended():
                response = dcp.async_save(staged.tensors, storage_writer=writer, process_group=group,
                                          async_stager=stager, no_dist=group is None)
            pending: Future = response.upload_completion if isinstance(response, AsyncSaveResponse) else response
        except Exception as e:  # noqa: BLE001 - staging failed on this rank: the job reports it with the others'
            pending = Future()
            pending.set_exception(e)
        finally:
            if overlap is not None:
                if isinstance(response, AsyncSaveResponse):  # opens once staged, or once staging failed
                    response.staging_completion.add_done_callback(lambda _: overlap.gate.open())
                else:
                    overlap.gate.open()  # nothing stages behind it
        staged.tensors, staged.rest = {}, {}  # staged now: nothing of the live state is held past this call

        def job() -> None:
            _finish(pending, staged, group, frozen_rest, on_committed, writer)

        self.writer.submit(job, f"save of {staged.final}")

    def wait_idle(self) -> None:
        self.writer.wait_idle()

    def take_error(self) -> BaseException | None:
        return self.writer.take_error()

    def release_buffers(self) -> None:
        self.writer.release_buffers()
        self.stager.close()
        if self._overlapping is not None:
            self._overlapping.close()
            self._overlapping = None


class _OverlappingStager(DefaultStager):
    """DCP's stager, reporting the ``sharded-staging`` phase on its staging thread before it copies."""

    def _stage(self, state_dict: Any, **kwargs: Any) -> Any:  # DCP's staging-thread entry (torch pinned)
        testing.phase("sharded-staging")
        return super()._stage(state_dict, **kwargs)


def _clone_unless(tree: Any, deferred: frozenset[int]) -> Any:
    """``tree`` with every tensor whose storage is not deferred replaced by a clone made now: the
    deferred ones are staged after the call returns, and only they are guarded by the gate."""
    if isinstance(tree, torch.Tensor):
        return tree if storage_key(tree) in deferred else tree.detach().clone()
    if isinstance(tree, dict):
        return {k: _clone_unless(v, deferred) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_clone_unless(v, deferred) for v in tree)
    return tree


def _finish(pending: Future, staged: Staged, group: dist.ProcessGroup | None, rest: dict[str, Any],
            on_committed: OnCommitted, writer: Any) -> None:
    """The background half of one save, on every rank; raises (on rank 0) what failed on any rank."""
    rank = get_rank()
    own: dict[str, dict[str, Any]] = {}
    problem: str | None = None
    try:
        pending.result()
        testing.phase("sharded-written")  # the fault tests' seam: DCP's files are written, nothing hashed yet
        own = digest_own_shards(staged.tmp, rank)
    except BaseException as e:  # noqa: BLE001 - CheckpointException is a BaseException; gathered below
        problem = f"DCP: {first_failure(e, writer)}"
    parts: list[Any] = [(own, problem)]
    if group is not None:
        parts = [None] * dist.get_world_size(group)
        dist.all_gather_object(parts, (own, problem), group=group)
    failed = [(r, p) for r, (_, p) in enumerate(parts) if p is not None]
    if len(staged.groups) > 1:
        _finish_on_nodes(staged, group, parts, failed, rest, on_committed)
        return
    outcome: Any = None
    if rank == 0:
        try:
            size, digest = commit(staged, _gathered(staged, parts, failed), rest)
            on_committed(SaveResult(staged.final, digest, size, 0.0))
        except BaseException as e:  # noqa: BLE001 - raised below, after the other ranks have heard
            outcome = e
            remove_tree(staged.tmp)  # gone already if the rename happened
    if group is not None:  # the other ranks' jobs end with rank 0's, so no save outlives its commit
        box = [None if outcome is None else str(outcome)]
        dist.broadcast_object_list(box, src=0, group=group)
    # The error is kept until the next poll: its traceback must not keep DCP's failed frames (and
    # through them the process group) alive until interpreter exit, where destroying a gloo group
    # after destroy_process_group() aborts the process.
    pending = group = None  # type: ignore[assignment]
    if outcome is not None:
        raise outcome


def _gathered(staged: Staged, parts: list[Any], failed: list[Any]) -> dict[str, dict[str, Any]]:
    """Every rank's shard files (name -> digests), or the failure of any rank's write."""
    if failed:
        raise CheckpointError(f"save of {staged.final} failed, nothing was committed: " +
                              "; ".join(f"rank {r}: {p}" for r, p in failed))
    return {name: entry for part, _ in parts for name, entry in part.items()}


def _finish_on_nodes(staged: Staged, group: dist.ProcessGroup | None, parts: list[Any], failed: list[Any],
                     rest: dict[str, Any], on_committed: OnCommitted) -> None:
    """:func:`_finish` on node-local directories: the two-phase commit across the nodes
    (:func:`~.save.commit_on_nodes`) in ``group``; every rank raises what failed on any."""
    rank = get_rank()
    try:
        files = _gathered(staged, parts, failed)
        size, digest = commit_on_nodes(staged, files, rest, group)
    except BaseException:
        if rank == leader_of(staged.groups, rank):
            remove_tree(staged.tmp)  # gone already where the rename happened
        raise
    outcome: BaseException | None = None
    if rank == 0:
        try:
            on_committed(SaveResult(staged.final, digest, size, 0.0))
        except BaseException as e:  # noqa: BLE001 - raised on every rank below
            outcome = e
    raise_on_all_ranks(outcome, f"save of {staged.final}", CheckpointError, group)
    follow_on_nodes(staged, files, group)


__all__ = ["ShardedBackground", "background_group"]
