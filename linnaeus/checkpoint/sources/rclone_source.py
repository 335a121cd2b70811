"""An object on any rclone remote as a :class:`~.base.Source`: ``remote:bucket/key`` or
``:backend,opts:bucket/key``, read through the one place that runs rclone (:mod:`.rclone`)."""

from __future__ import annotations

import fcntl
import json
import os
import queue
import select
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator, Mapping

from .base import CHUNK_SIZE, RemoteObject, Source, TransientSourceError, redact
from .identifiers import check_remote, check_text
from .rclone import (
    NOT_FOUND,
    child_env,
    classify_failure,
    rclone_args,
    run_rclone,
    run_rclone_bytes,
    spawn_rclone,
    split_remote,
)

_F_SETPIPE_SZ = 1031  # Linux fcntl: grow the pipe so rclone is not throttled by a 64 KiB buffer


class RcloneSource(Source):
    """An object on any rclone remote.

    ``env`` holds ``RCLONE_*`` defaults for the child (the user's own variables win);
    ``forced_env`` holds settings that define which object this is and always apply.
    """

    kind = "rclone"

    def __init__(
        self,
        path: str,
        *,
        env: Mapping[str, str] | None = None,
        forced_env: Mapping[str, str] | None = None,
        display: str | None = None,
    ) -> None:
        self.path = path
        self.env = child_env(env, forced_env)
        self._display = display if display is not None else redact(path)
        check_text(path, "rclone path")
        remote, key = split_remote(path)
        check_remote(remote, f"rclone path {self._display}")
        if not key.strip("/"):
            raise ValueError(f"{self._display}: names a bucket/remote root, not a file.")

    @property
    def display(self) -> str:
        return self._display

    @property
    def name(self) -> str:
        return split_remote(self.path)[1].rstrip("/").rsplit("/", 1)[-1]

    def sibling(self, suffix: str) -> "RcloneSource":
        return RcloneSource(self.path + suffix, forced_env=self.env, display=self.display + suffix)

    def _lsjson_stat(self, with_hash: bool) -> dict | None:
        args = rclone_args("lsjson", "--stat", *(["--hash"] if with_hash else []), paths=[self.path])
        try:
            out = run_rclone(args, env=self.env, what=f"looking up {self.display}")
        except TransientSourceError as e:
            # rclone exits 3/4 with "not found" for backends that have real directories.
            if NOT_FOUND.search(str(e)):
                return None
            raise
        entry = json.loads(out)
        # Bucket-based remotes report a missing key as an (implicit, empty) directory.
        return None if entry.get("IsDir") else entry

    def stat(self, with_hashes: bool = False) -> RemoteObject | None:
        entry = self._lsjson_stat(with_hash=with_hashes)
        if entry is None:
            return None
        size = entry.get("Size")
        hashes = {k.lower(): v for k, v in (entry.get("Hashes") or {}).items() if v}
        return RemoteObject(self.display, size if isinstance(size, int) and size >= 0 else None, hashes)

    def read_small(self, max_bytes: int = 1 << 16) -> bytes | None:
        # One `rclone cat --count` instead of stat + cat: this runs before every download.
        # Bucket remotes print nothing for a missing key, other backends fail with "not found";
        # a sidecar or marker is never legitimately empty, so empty means absent.
        try:
            out = run_rclone_bytes(
                rclone_args("cat", "--count", str(max_bytes + 1), paths=[self.path]), env=self.env,
                what=f"reading {self.display}",
            )
        except TransientSourceError as e:
            if NOT_FOUND.search(str(e)):
                return None
            raise
        return out if 0 < len(out) <= max_bytes else None

    @contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Stream the object through ``rclone cat``.

        A reader thread drains the pipe into a small queue so that rclone keeps transferring
        while the consumer hashes and writes (hashlib and file writes release the GIL); reading
        and hashing in one thread measurably serialises the two on loopback.
        """
        env = self.env
        with tempfile.TemporaryFile() as errf:
            proc = spawn_rclone(rclone_args("cat", paths=[self.path]), env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=errf)
            try:
                fcntl.fcntl(proc.stdout.fileno(), _F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass  # only a throughput hint; an unchangeable pipe size is still correct
            chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=16)
            stop = threading.Event()

            def pump() -> None:
                # End of stream is rclone's exit with the pipe drained, not the pipe's EOF alone:
                # a process forked while Popen held the write end (a DataLoader worker) keeps it
                # open for its whole life (see _run_captured).
                fd = proc.stdout.fileno()
                exited = False
                try:
                    while not stop.is_set():
                        readable, _, _ = select.select([fd], [], [], 0 if exited else 0.2)
                        if readable:
                            block = os.read(fd, CHUNK_SIZE)
                        elif exited:
                            block = b""
                        else:
                            # Everything rclone wrote is in the pipe before it exits: once it
                            # has, one more empty select means the stream is complete.
                            exited = proc.poll() is not None
                            continue
                        chunks.put(block)
                        if not block:
                            return
                except BaseException as e:  # handed to the consumer, which re-raises it
                    chunks.put(e)

            reader = threading.Thread(target=pump, name="rclone-cat-reader", daemon=True)
            reader.start()

            def iterate() -> Iterator[bytes]:
                while True:
                    item = chunks.get()
                    if isinstance(item, BaseException):
                        raise item
                    if not item:
                        break
                    yield item
                rc = proc.wait()
                if rc != 0:
                    errf.seek(0)
                    raise classify_failure(rc, errf.read().decode("utf-8", "replace"), f"reading {self.display}", env)

            try:
                yield iterate()
            finally:
                stop.set()
                if proc.poll() is None:
                    proc.kill()  # our own child, by handle: the consumer gave up early
                # Unblock the pump if it is waiting on a full queue, then reap everything.
                while reader.is_alive():
                    try:
                        chunks.get(timeout=0.05)
                    except queue.Empty:
                        pass
                proc.stdout.close()
                proc.wait()


__all__ = ["RcloneSource"]
