"""One writer per bucket folder: a lease object that a live run renews and a dead run's lets lapse.

The local writer lock (:mod:`linnaeus.checkpoint.disk.writer_lock`) covers one filesystem. Two
launches with one ``EXPERIMENT.NAME`` in two run dirs (a requeue on another node while the first
still runs) share the run's bucket folder, and each would upload its checkpoints over the other's.
So the run that writes a bucket folder holds :data:`LEASE` in it: its launch id, run id, host,
pid, run dir and the time of its last heartbeat, renewed every ``ttl_s / 6`` by a thread.

A launch that finds another's lease:

- takes it over at once when the holder ran on this host and its pid is gone (a relaunch after a
  crash on the same machine);
- refuses, naming the holder, when the holder's heartbeat moves while it watches (a live run);
- otherwise waits until the lease is ``ttl_s`` old without a heartbeat, then takes it over. Every
  takeover is logged with the previous holder.

An object store gives rclone no atomic create, so two launches starting in the same second could
both write a lease: each reads it back after writing and before every upload
(:meth:`BucketLease.check`), and the one whose lease was overwritten stops before it replaces
anything. The last guard is the upload itself, which never replaces a committed checkpoint of
another identity (:func:`linnaeus.checkpoint.formats.transfer.upload_entry`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..disk import pid_alive
from ..errors import BucketConflictError, CheckpointError
from ..formats import RemoteFolder
from ..sources import delete_within, rcat
from .move import finish_moves

logger = logging.getLogger("linnaeus.checkpoint")

LEASE = ".writer-lease.json"
DEFAULT_TTL_S = 120.0


class BucketLease:
    """The writer lease of one bucket folder, for one launch (see the module docstring)."""

    def __init__(self, folder: RemoteFolder, *, ttl_s: float = DEFAULT_TTL_S, run_id: str = "",
                 run_dir: str = "") -> None:
        if ttl_s <= 0:
            raise ValueError(f"the lease's time-to-live must be > 0 s, got {ttl_s}.")
        self.folder, self.ttl_s = folder, float(ttl_s)
        self.record = {"launch": uuid.uuid4().hex, "run_id": run_id, "host": socket.gethostname(),
                       "pid": os.getpid(), "run_dir": run_dir, "ttl_s": self.ttl_s}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: CheckpointError | None = None

    @property
    def where(self) -> str:
        return f"{self.folder.display}{LEASE}"

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> "BucketLease":
        """Take the lease (waiting out a holder that stopped beating), or raise BucketConflictError."""
        holder = self._read()
        deadline = time.monotonic() + self._ttl_of(holder) + self._beat_s
        while holder is not None and holder.get("launch") != self.record["launch"] and not self._stale(holder):
            if time.monotonic() > deadline:
                break  # no heartbeat for a whole time-to-live: stale by our own clock too
            time.sleep(min(self._beat_s, 1.0))
            now = self._read()
            if now is None:
                holder = None  # given back meanwhile
            elif now.get("launch") and (now.get("launch"), now.get("heartbeat")) != \
                    (holder.get("launch"), holder.get("heartbeat")):
                raise BucketConflictError(self._held_message(now))  # it beats: a live run
        if holder is not None and holder.get("launch") != self.record["launch"]:
            logger.warning("Taking over the writer lease of the bucket folder %s from launch %s (run %s, host %s, pid "
                           "%s, run dir %s): %s", self.folder.display, holder.get("launch"), holder.get("run_id") or "?",
                           holder.get("host"), holder.get("pid"), holder.get("run_dir") or "?",
                           self._why_stale(holder))
        self._write()
        self._verify()  # a launch that wrote in the same moment: one of the two stops here
        self._thread = threading.Thread(target=self._beat, name="linnaeus-bucket-lease", daemon=True)
        self._thread.start()
        finish_moves(self.folder)  # the folder's writer finishes what a killed one began, before anything else
        return self

    @property
    def held(self) -> bool:
        return self._thread is not None

    def check(self) -> None:
        """Before a write into the folder: raise BucketConflictError unless the lease is still this
        launch's. A lease never taken (the folder was unreachable at the start) is taken now."""
        if self._error is not None:
            raise self._error
        if not self.held:
            self.acquire()
            return
        self._verify()

    def _verify(self) -> None:
        holder = self._read()
        if holder is None or holder.get("launch") != self.record["launch"]:
            raise BucketConflictError(
                f"lost the writer lease of the bucket folder {self.folder.display}: "
                + (f"{LEASE} is gone" if holder is None else f"launch {holder.get('launch')} on host "
                   f"{holder.get('host')} (pid {holder.get('pid')}, run dir {holder.get('run_dir') or '?'}) holds it")
                + ". This launch uploads nothing more, so neither replaces the other's checkpoints; its local "
                "checkpoints are kept. Stop one of the two runs (or give one its own EXPERIMENT.NAME), then relaunch.")

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this launch's."""
        self._stop.set()
        if self._thread is None:
            return  # never taken
        self._thread.join(timeout=10)
        holder = self._read()
        if holder is not None and holder.get("launch") == self.record["launch"]:
            delete_within(self.folder.folder + LEASE, env=self.folder.env)

    # ------------------------------------------------------------------ internals
    @property
    def _beat_s(self) -> float:
        return self.ttl_s / 6

    def _beat(self) -> None:
        while not self._stop.wait(self._beat_s):
            try:
                self._verify()
                self._write()
            except BucketConflictError as e:  # kept: every later check() (each upload) raises it
                self._error = e
                logger.error("%s", e)
                return
            except CheckpointError as e:  # a network hiccup: the next beat tries again
                logger.warning("Could not renew the writer lease %s (retrying): %s", self.where, e)

    def _read(self) -> dict[str, Any] | None:
        """The lease's record; None when there is none, {} when it stays unreadable (no holder
        anyone could name: stale at once). A read torn by the holder's rewrite is read again."""
        for attempt in range(5):
            data = self.folder.read(LEASE, 1 << 16)
            if data is None:
                return None
            try:
                record = json.loads(data)
                if isinstance(record, dict) and record.get("launch"):
                    return record
            except ValueError:
                pass
            time.sleep(0.2 * (attempt + 1))
        return {}

    def _write(self) -> None:
        record = {**self.record, "heartbeat": time.time(),
                  "heartbeat_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rcat(json.dumps(record).encode(), self.folder.folder + LEASE, env=self.folder.env)

    def _ttl_of(self, holder: dict[str, Any] | None) -> float:
        try:
            return float((holder or {}).get("ttl_s", self.ttl_s))
        except (TypeError, ValueError):
            return self.ttl_s

    def _stale(self, holder: dict[str, Any]) -> bool:
        return self._why_stale(holder) != ""

    def _why_stale(self, holder: dict[str, Any]) -> str:
        if not holder.get("launch"):
            return "its lease names no launch"
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int) \
                and not pid_alive(holder["pid"]):
            return "it ran on this host and its process is gone"
        try:
            age = time.time() - float(holder.get("heartbeat", 0))
        except (TypeError, ValueError):
            return "its heartbeat is unreadable"
        if age > self._ttl_of(holder):
            return f"its last heartbeat was {age:.0f} s ago, past its {self._ttl_of(holder):.0f} s time-to-live"
        return ""

    def _held_message(self, holder: dict[str, Any]) -> str:
        return (f"the bucket folder {self.folder.display} is in use by launch {holder.get('launch')} of run "
                f"{holder.get('run_id') or '?'} on host {holder.get('host')} (pid {holder.get('pid')}, run dir "
                f"{holder.get('run_dir') or '?'}), whose heartbeat in {LEASE} is live: two runs writing one folder "
                "upload their checkpoints over each other's. If that run should go on, give this one its own "
                "EXPERIMENT.NAME (or ENV.OUTPUT.BUCKET.PATH_PREFIX); if it is an older copy of this job, stop it "
                f"first. A lease whose heartbeat stops is taken over {self._ttl_of(holder):.0f} s later "
                "(ENV.OUTPUT.BUCKET_LEASE_TTL_S), or at once on the same host once its process is gone.")


__all__ = ["DEFAULT_TTL_S", "LEASE", "BucketLease"]
