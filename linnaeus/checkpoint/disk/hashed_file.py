"""Serialise a state into a new file while hashing it: the part of a save that costs the time.

``write_hashed`` streams the serialiser's bytes through a :class:`~.hashing.HashingWriter`
into a file it creates, hashes them from the file behind the writes (:class:`~.hashing.FileTailHasher`),
lets the disk flush behind the writes, and fsyncs. What it returns
(the digests, the size) is all a commit needs; the commit itself (sidecar, rename, ``latest``)
belongs to the format. It runs on the writer thread of a background save, or in the writer
process (:mod:`.process_writer`): the same bytes either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from ..testing import WRITE_PHASE_EVERY, phase
from .durable import BackgroundFlush
from .hashing import FileDigest, FileTailHasher, HashingWriter

_FLUSH_EVERY = 32 << 20  # bytes serialised between background flushes (see durable.BackgroundFlush)

Serializer = Callable[[Any, BinaryIO], None]


@dataclass(frozen=True)
class Written:
    """A file written and fsynced by :func:`write_hashed`, not yet committed."""

    digest: FileDigest
    nbytes: int


def write_hashed(path: Path, state: Any, serialize: Serializer = torch.save) -> Written:
    """Create ``path`` (it must not exist), write ``serialize(state, f)`` into it, fsync.

    Reports the phases ``open``, ``write`` (every 256 KiB), ``written``, ``fsynced``. On an
    error the partial file stays for the caller to remove (it knows whether the name is its own).
    """
    last_reported = [0]
    flushed = [0]
    with open(path, "xb") as raw:
        phase("open")

        def on_write(total: int) -> None:
            if total - flushed[0] >= _FLUSH_EVERY:
                # Let the disk work while we go on serialising and hashing, instead of
                # leaving all of it to the final fsync.
                raw.flush()
                flusher.kick()
                flushed[0] = total
            if total - last_reported[0] >= WRITE_PHASE_EVERY:
                last_reported[0] = total
                phase("write", total)

        tail = FileTailHasher(path)
        writer = HashingWriter(raw, tail, on_write=on_write)
        flusher = BackgroundFlush(raw.fileno())
        try:
            try:
                serialize(state, writer)
            except Exception as e:
                # torch.save reports a failed write of its own as a position mismatch
                # ("unexpected pos ..."); the OSError (ENOSPC, EFBIG, EIO) is the cause.
                if writer.error is not None and writer.error is not e:
                    raise writer.error from e
                raise
            finally:
                flusher.close()
            writer.flush()
            phase("written", writer.bytes_written)
            # The disk flushes the tail while the tail hasher catches up (it reads the page cache).
            os.fsync(raw.fileno())
            phase("fsynced", writer.bytes_written)
            digest = writer.digest()
        except BaseException:
            tail.abort()
            raise
    return Written(digest, writer.bytes_written)


__all__ = ["Serializer", "Written", "write_hashed"]
