"""Every write of checkpoint bytes reaches the kernel in pieces of at most 1 MiB.

One large write makes the kernel allocate page-cache folios of up to 2 MiB, which on VMs with free
page reporting fault into the host at first touch (linnaeus/checkpoint/disk/pages.py): a 100 MB
save that hands over each tensor in one write stalled for 100-200 ms in a fifth to a half of its
saves here. These tests watch the writes a real file receives.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from linnaeus.checkpoint.disk import FileTailHasher, HashingWriter
from linnaeus.checkpoint.disk.pages import PIECE, write_in_pieces


class WriteSizes:
    """A real file that records the size of every write it is given."""

    def __init__(self, raw: Any, most: int | None = None) -> None:
        self._raw = raw
        self._most = most  # write at most this many bytes per call, as an unbuffered file may
        self.sizes: list[int] = []

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.sizes.append(view.nbytes)
        return self._raw.write(view if self._most is None else view[:self._most])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def test_a_save_hands_the_file_no_write_over_a_piece(tmp_path: Path) -> None:
    state = {"w": torch.randn(3 * PIECE // 4 * 5)}  # one 3.75 MiB tensor: one write unless split
    path = tmp_path / "ckpt.pth"
    with open(path, "xb") as raw:
        recorded = WriteSizes(raw)
        tail = FileTailHasher(path)
        writer = HashingWriter(recorded, tail)
        torch.save(state, writer)
        digest = writer.digest()
    data = path.read_bytes()
    assert max(recorded.sizes) <= PIECE, f"writes of {sorted(recorded.sizes)[-3:]} bytes"
    assert digest.sha256 == hashlib.sha256(data).hexdigest()
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])


def test_short_writes_are_continued_until_every_byte_is_in_the_file(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 9000
    with open(tmp_path / "f", "xb", buffering=0) as raw:
        recorded = WriteSizes(raw, most=100_000)
        assert write_in_pieces(recorded.write, payload) == len(payload)
    assert (tmp_path / "f").read_bytes() == payload
    assert len(recorded.sizes) == -(-len(payload) // 100_000)


def test_a_write_that_writes_nothing_is_an_error_not_a_loop(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="wrote none, 2000 bytes still to write"):
        write_in_pieces(lambda piece: 0, b"x" * 2000)
