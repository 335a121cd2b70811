"""Copies of each committed checkpoint on other nodes, for runs whose checkpoint directory is node-local.

Rank 0 writes a run's single-file checkpoints into its own node's directory. When that node is lost
(a preempted machine, replaced by a fresh one), so is every checkpoint that was only there. The
replicator sends each checkpoint, right after its commit, to the next ``replicas`` nodes in rank
order (the ring of :func:`ring_partners`), whose lowest rank commits it into its own directory,
verified (:class:`~.incoming.IncomingFile`). A relaunch then finds the newest checkpoint on any
surviving node, and :mod:`linnaeus.checkpoint.resume.peers` sends it to the nodes without it.

The transfers run on threads (a sender on rank 0, a receiver on each partner node's lowest rank)
over a gloo group of their own, so training's collectives never wait for them, and a save's
blocked time is unchanged. Rank 0 sends a header, the file in 64 MiB chunks (:func:`~linnaeus.checkpoint.disk.move_chunks`) and a trailer
(``ok`` false when it could not read the file to the end: the partner drops the copy); when idle it
sends a ping, so no receiver waits longer than the group's timeout. A failure on either side is
kept and raised on every rank by the next :meth:`Replicator.poll` (a collective, like the
manager's), so a run never goes on believing it has copies it lacks.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist

from linnaeus.dist import collective_timeout, get_rank, raise_on_all_ranks

from ..disk import move_chunks, read_exactly, sidecar_path
from ..errors import CheckpointError
from ..store import DirectorySharing
from .incoming import IncomingFile

logger = logging.getLogger("linnaeus.checkpoint")

# How long close_after_error's abandon() waits for the copy in flight and the threads' end.
ABANDON_WAIT_S = 60.0


def ring_partners(groups: tuple[tuple[int, ...], ...], replicas: int) -> tuple[int, ...]:
    """The ranks that store copies of rank 0's checkpoints: the lowest rank of each of the next
    ``replicas`` directory groups after rank 0's (fewer when there are fewer other nodes)."""
    return tuple(group[0] for group in groups[1:1 + max(replicas, 0)])


@dataclass(frozen=True)
class _Item:
    path: Path
    saver: str
    update_latest: bool


_END: _Item | None = None
_PING = _Item(Path(), "", False)


class Replicator:
    """The copies of one run's checkpoints on other nodes (see the module docstring).

    Construct it on every rank with the same ``sharing`` and ``replicas`` (a collective: it creates
    a process group when there is a partner). ``retain`` maps a saver's name to its retention, run
    on a partner after each copy commits there, so that a partner keeps what the policy keeps. Each
    partner's directory is written by its lowest rank alone, which should hold it
    (:func:`~linnaeus.checkpoint.store.hold_node_directory`: the lock, and a copy cut short by a kill
    removed first)."""

    def __init__(self, sharing: DirectorySharing, directory: Path, replicas: int,
                 retain: Mapping[str, Callable[[], object]], *, ping_s: float = 60.0) -> None:
        self.directory = Path(directory)
        self.partners = () if sharing.shared else ring_partners(sharing.groups, replicas)
        self.hosts = sharing.hosts
        self.retain = dict(retain)
        self.ping_s = ping_s
        self.group: Any = None
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not self.partners:
            return
        self.group = dist.new_group(backend="gloo", timeout=collective_timeout())
        rank = get_rank()
        if rank == 0:
            self._thread = threading.Thread(target=self._send_loop, name="linnaeus-replica-sender", daemon=True)
        elif rank in self.partners:
            self._thread = threading.Thread(target=self._receive_loop, name="linnaeus-replica-receiver", daemon=True)
        if self._thread is not None:
            self._thread.start()

    @property
    def active(self) -> bool:
        return bool(self.partners)

    def describe(self) -> str:
        return ", ".join(f"rank {r} on {self.hosts[r]}" for r in self.partners)

    # ------------------------------------------------------------------ rank 0
    def on_commit(self, path: Path, *, saver: str, update_latest: bool) -> None:
        """Queue the committed ``path`` for the partners (rank 0; returns at once)."""
        if self.active and get_rank() == 0:
            self._queue.put(_Item(Path(path), saver, update_latest))

    def _send_loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.ping_s)
            except queue.Empty:
                item = _PING
            try:
                if item is _END:
                    self._send_header({"kind": "end"})
                    return
                if item is _PING:
                    self._send_header({"kind": "ping"})
                else:
                    self._send_file(item)
            except Exception as e:  # noqa: BLE001 - kept for poll(), which raises it on every rank
                self._error = self._error or CheckpointError(
                    f"sending checkpoint copies to {self.describe()} failed: {type(e).__name__}: {e}")
                return

    def _send_file(self, item: _Item) -> None:
        started = time.monotonic()
        try:
            f = open(item.path, "rb")
        except FileNotFoundError:
            return  # deleted by retention before its turn: a newer checkpoint is queued behind it
        with f:
            try:
                sidecar = sidecar_path(item.path).read_bytes()
                replaced = os.fstat(f.fileno()).st_ino != os.stat(item.path).st_ino
            except FileNotFoundError:
                return
            if replaced:  # overwritten since (a fixed name): the newer bytes are queued behind
                return
            size = os.fstat(f.fileno()).st_size
            self._send_header({"kind": "file", "name": item.path.name, "size": size, "saver": item.saver,
                               "sidecar": sidecar.decode("utf-8"), "update_latest": item.update_latest})
            failure = ""

            def read(view: memoryview) -> None:
                nonlocal failure
                if not failure:
                    try:
                        read_exactly(f, view)
                    except OSError as e:  # the promised bytes still go, then the trailer says to drop them
                        failure = f"rank 0 could not read {item.path}: {e}"

            def send(chunk: torch.Tensor) -> None:
                for partner in self.partners:
                    dist.send(chunk, dst=partner, group=self.group)

            move_chunks(size, send, read=read)
            self._send_header({"kind": "trailer", "ok": not failure})
        if failure:
            raise CheckpointError(failure)
        logger.info("Copied %s (%.1f MB) to the checkpoint directories of %s in %.1f s", item.path.name, size / 1e6,
                    self.describe(), time.monotonic() - started)

    def _send_header(self, header: dict[str, Any]) -> None:
        payload = torch.frombuffer(bytearray(json.dumps(header).encode("utf-8")), dtype=torch.uint8)
        for partner in self.partners:
            dist.send(torch.tensor([payload.numel()], dtype=torch.int64), dst=partner, group=self.group)
            dist.send(payload, dst=partner, group=self.group)

    # ------------------------------------------------------------------ partners
    def _receive_loop(self) -> None:
        source = f"rank 0 on {self.hosts[0]}"
        while True:
            try:
                header = self._receive_header()
                if header["kind"] == "end":
                    return
                if header["kind"] == "file":
                    self._receive_file(header, source)
            except Exception as e:  # noqa: BLE001 - the sender is gone or the group broke: nothing more comes
                self._keep(e, "receiving checkpoint copies")
                return

    def _receive_file(self, header: dict[str, Any], source: str) -> None:
        started, size = time.monotonic(), int(header["size"])
        incoming = IncomingFile(self.directory / header["name"], header["sidecar"].encode("utf-8"), source)
        move_chunks(size, lambda chunk: dist.recv(chunk, src=0, group=self.group), take=incoming.write)
        if not self._receive_header().get("ok"):
            incoming.discard()  # rank 0 keeps the reason
            return
        try:  # a failure here is kept, and the loop goes on taking what rank 0 sends
            incoming.commit(update_latest=bool(header["update_latest"]))
            retain = self.retain.get(header["saver"])
            if retain is not None:
                retain()
            logger.info("Stored a copy of %s from %s (%.1f MB, verified) in %s in %.1f s", header["name"], source,
                        size / 1e6, self.directory, time.monotonic() - started)
        except Exception as e:  # noqa: BLE001 - kept for poll()
            self._keep(e, f"storing the copy of {header['name']} in {self.directory}")

    def _receive_header(self) -> dict[str, Any]:
        length = torch.zeros(1, dtype=torch.int64)
        dist.recv(length, src=0, group=self.group)
        payload = torch.zeros(int(length.item()), dtype=torch.uint8)
        dist.recv(payload, src=0, group=self.group)
        return json.loads(payload.numpy().tobytes().decode("utf-8"))

    def _keep(self, e: BaseException, what: str) -> None:
        if self._error is None:
            self._error = CheckpointError(
                f"{what} on rank {get_rank()} ({socket.gethostname()}) failed: {type(e).__name__}: {e}. This node "
                "holds no verified copy of the run's newest checkpoint; free its disk (or set CHECKPOINT.REPLICAS 0 "
                "to keep checkpoints only on rank 0's node) and relaunch to resume.")

    # ------------------------------------------------------------------ every rank
    def poll(self) -> None:
        """Raise a failed copy on every rank (a collective: call it on every rank at the same points)."""
        if self.active:
            raise_on_all_ranks(self._error, "checkpoint copies on other nodes", CheckpointError)

    def close(self) -> None:
        """Send what is queued, end the threads, raise what failed on every rank (a collective)."""
        if not self.active:
            return
        if get_rank() == 0:
            self._queue.put(_END)
        if self._thread is not None:
            self._thread.join()
        self.poll()

    def abandon(self) -> None:
        """Stop without a collective, while the run unwinds an error (perhaps on this rank alone): rank 0
        sends what is queued and the end, for up to :data:`ABANDON_WAIT_S`; a partner waits as long for
        them. A copy cut short is dropped (its temp file goes at the partner's next start)."""
        if not self.active:
            return
        if get_rank() == 0:
            self._queue.put(_END)
        if self._thread is not None:
            self._thread.join(ABANDON_WAIT_S)
            if self._thread.is_alive():
                logger.warning("Checkpoint copies to other nodes did not finish within %.0f s; the last one may be "
                               "missing there.", ABANDON_WAIT_S)
        if self._error is not None:
            logger.error("%s", self._error)


__all__ = ["Replicator", "ring_partners"]
