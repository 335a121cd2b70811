"""Writes into the page cache in pieces of at most 1 MiB.

Linux (6.x, ext4 and xfs with large folios) sizes the page-cache folios a ``write`` allocates by
the length of that write, up to 2 MiB. On a virtual machine whose balloon driver reports free
memory to the host (virtio-balloon free page reporting, in blocks of 2 MiB and more), free blocks
of that size are the ones the host has taken back, and the first touch of each one traps into
the host. On the 2-core VM this project is measured on, 100 MB written to a new file in 4 MiB
writes took 250 ms of kernel time, in 1 MiB writes 17–22 ms; a checkpoint save, which hands the
kernel each tensor in one write, stalled that way in a fifth to a half of its saves. A hundred
system calls per 100 MB cost nothing measurable where large folios are cheap.

Used for single-file checkpoints only. DCP's shard files written this way loaded 1.6-2x slower
from a cold page cache in the sharded benchmark (a cost on every relaunch, against a stall of some
saves), so they keep DCP's own writes.
"""

from __future__ import annotations

from typing import Any, Callable

PIECE = 1 << 20


def write_in_pieces(write: Callable[[memoryview], int | None], data: Any) -> int:
    """All of ``data`` (a bytes-like object) written through ``write`` (a file's ``write``, which may
    write less than it is given, as unbuffered files do), at most :data:`PIECE` bytes per call.
    Returns the number of bytes written."""
    view = memoryview(data).cast("B")
    done = 0
    while done < view.nbytes:
        piece = view[done:done + PIECE]
        n = write(piece)
        if n == 0:
            raise OSError(f"a write of {piece.nbytes} bytes wrote none, {view.nbytes - done} bytes still to write")
        done += piece.nbytes if n is None else n  # None: a stream that does not count (it wrote all)
    return view.nbytes


__all__ = ["PIECE", "write_in_pieces"]
