"""A single-file checkpoint's bytes reach the kernel in writes of at most 1 MiB.

One large write makes the kernel allocate page-cache folios of up to 2 MiB, which on VMs with free
page reporting trap into the host at first touch (linnaeus/checkpoint/disk/pages.py): a 100 MB
save that handed over each tensor in one write stalled for 100-200 ms in a fifth to a half of its
saves here. The kernel counts the write system calls of each thread (/proc/thread-self/io), and
the writes in question run on the calling thread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint.disk import StreamDigest, format_sidecar, write_hashed
from linnaeus.checkpoint.disk.pages import PIECE, write_in_pieces
from linnaeus.checkpoint.replicas import IncomingFile

MIB16 = 16 * PIECE


def _write_syscalls() -> int:
    """This thread's write system calls so far, as the kernel counts them."""
    for line in Path("/proc/thread-self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("/proc/thread-self/io has no syscw line")


def test_a_save_writes_a_large_tensor_in_pieces(tmp_path: Path) -> None:
    state = {"w": torch.randn(MIB16 // 4)}  # one 16 MiB tensor: a single write unless split
    path = tmp_path / "ckpt.pth"
    before = _write_syscalls()
    written = write_hashed(path, state)
    writes = _write_syscalls() - before
    assert writes >= MIB16 // PIECE, f"{written.nbytes} bytes in {writes} writes: some were over {PIECE} bytes"
    assert written.digest.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])


def test_a_copy_from_another_node_is_written_in_pieces(tmp_path: Path) -> None:
    data = torch.randn(MIB16 // 4).numpy().tobytes()
    digest = StreamDigest(4 * PIECE)  # a sidecar with chunk digests, as every save this large has
    digest.update(data)
    sidecar = format_sidecar(digest.digest(), "c.pth").encode()
    incoming = IncomingFile(tmp_path / "c.pth", sidecar, "rank 0 on a test host")
    before = _write_syscalls()
    incoming.write(memoryview(data))  # one chunk as it comes over the wire, larger than a piece
    writes = _write_syscalls() - before
    incoming.commit()
    assert writes >= MIB16 // PIECE, f"{len(data)} bytes in {writes} writes"
    assert (tmp_path / "c.pth").read_bytes() == data


def test_short_writes_are_continued_until_every_byte_is_in_the_file(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 9000
    sizes: list[int] = []
    with open(tmp_path / "f", "xb", buffering=0) as raw:
        def write_at_most_100k(piece: memoryview) -> int | None:  # as an unbuffered file may
            sizes.append(piece.nbytes)
            return raw.write(piece[:100_000])

        assert write_in_pieces(write_at_most_100k, payload) == len(payload)
    assert (tmp_path / "f").read_bytes() == payload
    assert len(sizes) == -(-len(payload) // 100_000)


def test_a_write_that_writes_nothing_is_an_error_not_a_loop() -> None:
    with pytest.raises(OSError, match="wrote none, 2000 bytes still to write"):
        write_in_pieces(lambda piece: 0, b"x" * 2000)
