"""A committed single-file checkpoint arriving from another node: written to a temp file beside its
final name as the bytes come (flushed to disk behind the writes), hashed on the way, fsynced,
checked against the sender's sidecar and committed the way a save commits
(:func:`~linnaeus.checkpoint.formats.commit_written`: a new name or an overwrite, ``latest`` moved
when asked). A node killed in between leaves a temp file of a dead writer, which the next start's
cleanup removes, and no checkpoint.

The same receipt serves a resume's peer copy (:mod:`linnaeus.checkpoint.resume.peers`) and the
replicas sent after each commit (:mod:`.replicator`).

The hash on the way is the sidecar's xxh3-128 chunk digests when it lists them (every save larger
than one chunk), as a load verifies (:mod:`linnaeus.checkpoint.disk.hashing` says why they are as
trustworthy against corruption): sha256 runs at about a tenth of their speed and, on the receiving
node, beside its training. A chunk that does not match sends the file through sha256, compared
with the sidecar's first line, as a load does; a sidecar without chunk digests is checked with
sha256 from the start.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..disk import (CHUNK_DIGEST, BackgroundFlush, FileDigest, SidecarError, StreamDigest, parse_sidecar, sha256_file,
                    temp_name, write_in_pieces)
from ..errors import CheckpointCorruptError
from ..formats import commit_written

_FLUSH_EVERY = 64 << 20  # bytes written between background flushes: the final fsync waits for the tail only


class IncomingFile:
    """``dest``'s bytes as they arrive from ``source`` (words for messages), with ``sidecar`` (the
    sender's, bytes): :meth:`write` each chunk in order, then :meth:`commit` or :meth:`discard`.
    A write error is kept and raised by :meth:`commit`, so the sender's chunks are still taken."""

    def __init__(self, dest: Path, sidecar: bytes, source: str) -> None:
        self.dest, self.sidecar, self.source = dest, sidecar, source
        self.tmp = dest.with_name(temp_name(dest.name))
        self.nbytes = 0
        self.failure: OSError | None = None
        self._out = None
        self._flusher: BackgroundFlush | None = None
        self._flushed = 0
        try:
            recorded = parse_sidecar(sidecar, dest.name, self._where)
        except SidecarError:
            recorded = None  # commit() parses it again and says what is wrong with it
        # The chunk digests to match when the sidecar has them, else the file's sha256.
        self._chunks = StreamDigest(recorded.chunk_size) if recorded is not None and recorded.chunked \
            and recorded.chunk_algorithm == CHUNK_DIGEST else None
        self._sha256 = hashlib.sha256() if self._chunks is None else None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.tmp, "xb", buffering=0)
            self._flusher = BackgroundFlush(self._out.fileno())
        except OSError as e:
            self.failure = e

    @property
    def _where(self) -> str:
        return f"{self.dest.name}.sha256 from {self.source}"

    def write(self, data: memoryview) -> None:
        if self._chunks is not None:
            self._chunks.update_chunks(data)
        else:
            self._sha256.update(data)
        self.nbytes += len(data)
        if self._out is not None and self.failure is None:
            try:
                write_in_pieces(self._out.write, data)
                if self.nbytes - self._flushed >= _FLUSH_EVERY:
                    self._flusher.kick()
                    self._flushed = self.nbytes
            except OSError as e:
                self.failure = e

    def commit(self, *, update_latest: bool = False) -> None:
        """Fsync, check against the sidecar, commit; on any failure nothing is left under ``dest``'s name."""
        try:
            if self.failure is None and self._out is not None:
                try:
                    flusher, self._flusher = self._flusher, None
                    flusher.close()  # its error, if any, is this file's writeback error
                    os.fsync(self._out.fileno())
                except OSError as e:
                    self.failure = e
            self._close()
            if self.failure is not None:
                raise self.failure
            recorded = parse_sidecar(self.sidecar, self.dest.name, self._where)
            differs = self._differs(recorded)
            if differs is not None:
                actual = self._sha256.hexdigest() if self._sha256 is not None else sha256_file(self.tmp)
                if actual != recorded.sha256:
                    raise CheckpointCorruptError(self.dest, f"the copy received from {self.source} has sha256 "
                                                            f"{actual}, its sidecar says {recorded.sha256}{differs}")
            commit_written(self.tmp, self.dest, self.sidecar.decode("utf-8"), self.nbytes, update_latest=update_latest)
        finally:
            self.tmp.unlink(missing_ok=True)

    def _differs(self, recorded: FileDigest) -> str | None:
        """None when the bytes are the sidecar's by its chunk digests, else what differs ("" when
        only the sha256 can tell)."""
        if self._chunks is None:
            return None if self._sha256.hexdigest() == recorded.sha256 else ""
        if self.nbytes != recorded.size:
            return f" ({self.nbytes} bytes arrived, the sidecar lists {recorded.size})"
        got = self._chunks.chunk_digests()
        bad = next((i for i, (a, b) in enumerate(zip(got, recorded.chunks)) if a != b), None)
        if bad is None:
            return None
        start = bad * recorded.chunk_size
        return (f" (chunk {bad + 1} of {len(recorded.chunks)} differs, bytes {start}-"
                f"{min(start + recorded.chunk_size, self.nbytes) - 1})")

    def discard(self) -> None:
        self._close()
        self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._flusher is not None:
            flusher, self._flusher = self._flusher, None
            try:
                flusher.close()
            except OSError:
                pass  # a failed flush before a discard or a failed write: the file is dropped anyway
        if self._out is not None:
            out, self._out = self._out, None
            out.close()


__all__ = ["IncomingFile"]
