"""A committed single-file checkpoint arriving from another node: written to a temp file beside its
final name as the bytes come, hashed on the way, fsynced, checked against the sender's sidecar and
committed the way a save commits (:func:`~linnaeus.checkpoint.formats.commit_written`: a new name
or an overwrite, ``latest`` moved when asked). A node killed in between leaves a temp file of a
dead writer, which the next start's cleanup removes, and no checkpoint.

The same receipt serves a resume's peer copy (:mod:`linnaeus.checkpoint.resume.peers`) and the
replicas sent after each commit (:mod:`.replicator`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..disk import parse_sidecar, temp_name
from ..errors import CheckpointCorruptError
from ..formats import commit_written


class IncomingFile:
    """``dest``'s bytes as they arrive from ``source`` (words for messages), with ``sidecar`` (the
    sender's, bytes): :meth:`write` each chunk in order, then :meth:`commit` or :meth:`discard`.
    A write error is kept and raised by :meth:`commit`, so the sender's chunks are still taken."""

    def __init__(self, dest: Path, sidecar: bytes, source: str) -> None:
        self.dest, self.sidecar, self.source = dest, sidecar, source
        self.tmp = dest.with_name(temp_name(dest.name))
        self.digest = hashlib.sha256()
        self.nbytes = 0
        self.failure: OSError | None = None
        self._out = None
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.tmp, "xb")
        except OSError as e:
            self.failure = e

    def write(self, data: memoryview) -> None:
        self.digest.update(data)
        self.nbytes += len(data)
        if self._out is not None and self.failure is None:
            try:
                self._out.write(data)
            except OSError as e:
                self.failure = e

    def commit(self, *, update_latest: bool = False) -> None:
        """Fsync, check against the sidecar, commit; on any failure nothing is left under ``dest``'s name."""
        try:
            if self.failure is None and self._out is not None:
                try:
                    self._out.flush()
                    os.fsync(self._out.fileno())
                except OSError as e:
                    self.failure = e
            self._close()
            if self.failure is not None:
                raise self.failure
            expected = parse_sidecar(self.sidecar, self.dest.name, f"{self.dest.name}.sha256 from {self.source}").sha256
            if self.digest.hexdigest() != expected:
                raise CheckpointCorruptError(self.dest, f"the copy received from {self.source} has sha256 "
                                                        f"{self.digest.hexdigest()}, its sidecar says {expected}")
            commit_written(self.tmp, self.dest, self.sidecar.decode("utf-8"), self.nbytes, update_latest=update_latest)
        finally:
            self.tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        self._close()
        self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()


__all__ = ["IncomingFile"]
