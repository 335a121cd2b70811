"""A file received from another node is committed exactly as a save commits it, or not at all."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from linnaeus.checkpoint import verify_checkpoint
from linnaeus.checkpoint.disk import StreamDigest, format_sidecar
from linnaeus.checkpoint.errors import CheckpointCorruptError
from linnaeus.checkpoint.formats import read_latest
from linnaeus.checkpoint.replicas import IncomingFile, ring_partners
from linnaeus.checkpoint.store import cleanup_stale


def _receive(dest: Path, data: bytes, sidecar: bytes, **commit: bool) -> None:
    incoming = IncomingFile(dest, sidecar, "rank 0 on a test host")
    for start in range(0, len(data), 7):  # in chunks, as they come over the wire
        incoming.write(memoryview(data[start:start + 7]))
    incoming.commit(**commit)


def _sidecar(data: bytes, name: str) -> bytes:
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()


def _saved(tmp_path: Path) -> tuple[bytes, bytes]:
    """A real checkpoint's bytes and sidecar, as rank 0 commits them."""
    import torch

    from linnaeus.checkpoint import CheckpointManager

    with CheckpointManager(tmp_path / "sender") as manager:
        path = manager.save(epoch=1, step=3, model=torch.nn.Linear(3, 2))
    return path.read_bytes(), Path(f"{path}.sha256").read_bytes()


def test_a_received_checkpoint_is_committed_verified_with_the_senders_sidecar(tmp_path: Path) -> None:
    data, sidecar = _saved(tmp_path)
    dest = tmp_path / "node_b" / "checkpoint_epoch_1.pth"
    _receive(dest, data, sidecar, update_latest=True)
    assert dest.read_bytes() == data and Path(f"{dest}.sha256").read_bytes() == sidecar
    assert verify_checkpoint(dest).ok
    assert read_latest(dest.parent) == dest.name
    assert [p.name for p in dest.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_copy_that_does_not_match_its_sidecar_leaves_nothing_and_names_both_digests(tmp_path: Path) -> None:
    data, sidecar = _saved(tmp_path)
    dest = tmp_path / "node_b" / "checkpoint_epoch_1.pth"
    damaged = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    with pytest.raises(CheckpointCorruptError, match="received from rank 0 on a test host has sha256 "
                                                     f"{hashlib.sha256(damaged).hexdigest()}, its sidecar says"):
        _receive(dest, damaged, sidecar)
    assert list(dest.parent.iterdir()) == []


def _chunked_sidecar(data: bytes, name: str, chunk: int = 1024) -> bytes:
    """A sidecar as a save writes for a file of several chunks: its sha256 and an xxh3-128 per chunk."""
    digest = StreamDigest(chunk)
    digest.update(data)
    return format_sidecar(digest.digest(), name).encode()


def test_a_copy_is_checked_by_its_chunk_digests_and_a_damaged_chunk_is_named(tmp_path: Path) -> None:
    data = random.Random(0).randbytes(10240)  # 10 chunks of 1024 bytes
    sidecar = _chunked_sidecar(data, "c.pth")
    assert b"# linnaeus-chunks" in sidecar, sidecar[:200]
    _receive(tmp_path / "good" / "c.pth", data, sidecar)
    assert (tmp_path / "good" / "c.pth").read_bytes() == data
    assert (tmp_path / "good" / "c.pth.sha256").read_bytes() == sidecar

    damaged = data[:2500] + bytes([data[2500] ^ 1]) + data[2501:]
    with pytest.raises(CheckpointCorruptError, match=f"has sha256 {hashlib.sha256(damaged).hexdigest()}, its sidecar "
                                                     rf"says {hashlib.sha256(data).hexdigest()} \(chunk 3 of 10 differs, "
                                                     r"bytes 2048-3071\)"):
        _receive(tmp_path / "bad" / "c.pth", damaged, sidecar)
    assert list((tmp_path / "bad").iterdir()) == []

    with pytest.raises(CheckpointCorruptError, match=r"\(9000 bytes arrived, the sidecar lists 10240\)"):
        _receive(tmp_path / "short" / "c.pth", data[:9000], sidecar)
    assert list((tmp_path / "short").iterdir()) == []


def test_chunk_digests_that_do_not_match_right_bytes_defer_to_the_sha256_as_a_load_does(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(10240)
    lines = _chunked_sidecar(data, "c.pth").decode().splitlines()
    wrong = "\n".join(lines[:2] + ["# " + "0" * 32] + lines[3:]) + "\n"  # the first chunk's digest is wrong
    assert wrong != _chunked_sidecar(data, "c.pth").decode()
    _receive(tmp_path / "c.pth", data, wrong.encode())
    assert (tmp_path / "c.pth").read_bytes() == data


def test_a_copy_over_a_committed_file_of_its_name_replaces_it_whole(tmp_path: Path) -> None:
    dest = tmp_path / "node_b" / "last.pth"
    old, new = b"old bytes" * 10, b"new bytes!" * 10
    _receive(dest, old, _sidecar(old, "last.pth"))
    _receive(dest, new, _sidecar(new, "last.pth"))
    assert dest.read_bytes() == new and Path(f"{dest}.sha256").read_bytes() == _sidecar(new, "last.pth")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["last.pth", "last.pth.sha256"]


def test_a_copy_cut_short_is_a_leftover_the_next_start_removes(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    # A receiving process killed mid-copy: its temp file stays, named for a writer that is gone.
    directory = tmp_path / "node_b"
    code = ("import sys, os; from pathlib import Path; from linnaeus.checkpoint.replicas import IncomingFile;"
            "f = IncomingFile(Path(sys.argv[1]) / 'c.pth', b'', 'test'); f.write(memoryview(b'x' * 10));"
            "f._out.flush(); os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code, str(directory)]).returncode == 9
    left = [p.name for p in directory.iterdir()]
    assert len(left) == 1 and left[0].startswith(".c.pth.tmp-"), left
    assert [p.name for p in cleanup_stale(directory)] == left
    assert [n for n in os.listdir(directory) if n != ".lock"] == []  # the lock is the cleanup's own


def test_the_copies_go_to_the_next_nodes_in_rank_order() -> None:
    groups = ((0, 1), (2, 3), (4, 5))
    assert ring_partners(groups, 1) == (2,)
    assert ring_partners(groups, 2) == (2, 4)
    assert ring_partners(groups, 5) == (2, 4)  # no more than there are other nodes
    assert ring_partners(groups, 0) == ()
    assert ring_partners(((0, 1),), 1) == ()
