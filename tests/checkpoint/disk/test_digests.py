"""Per-chunk digests in the sidecar: verification on every core, never weaker than the whole-file hash.

The chunk size is shrunk to 64 KiB so that small files span many chunks (the real one is 32 MiB).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import torch
import xxhash

from linnaeus.checkpoint import CheckpointCorruptError, load_verified, verify_checkpoint
from linnaeus.checkpoint.disk import HashingWriter, digests, hashing, read_sidecar_digest, sidecar_path
from linnaeus.checkpoint.formats import commit_file
from linnaeus.checkpoint.sources import RcloneSource, download
from linnaeus.checkpoint.state import make_meta
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, rclone_isolated, s3_server, settle  # noqa: F401

CHUNK = 64 << 10


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "CHUNK_SIZE", CHUNK)


@pytest.fixture
def whole_file_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every sequential whole-file hash (the slow path the chunks exist to avoid)."""
    calls: list[str] = []
    real = digests.sha256_file

    def spy(path: str | Path) -> str:
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(digests, "sha256_file", spy)
    return calls


def _state(numel: int = 300_000) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {"w": torch.randn(numel, generator=g)},
        "progress": {"epoch": 1, "step": 10, "epoch_step": 0, "samples": 0},
        "meta": make_meta(kind="full", saver="checkpoint", file="c.pth", run_id="r", epoch=1, step=10, metrics={}),
    }


def _commit(directory: Path, name: str = "c.pth") -> Path:
    return commit_file(directory, name, _state(), update_latest=True).path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _xxh(data: bytes) -> str:
    return xxhash.xxh3_128(data).hexdigest()


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_sidecar_of_a_large_file_lists_each_chunk_and_sha256sum_still_accepts_it(tmp_path: Path) -> None:
    path = _commit(tmp_path)
    data = path.read_bytes()
    assert len(data) > 10 * CHUNK and len(data) % CHUNK, "the file must span many chunks and end in a partial one"
    lines = sidecar_path(path).read_text().splitlines()
    assert lines[0] == f"{_sha(data)}  c.pth"
    assert lines[1] == f"# linnaeus-chunks v2 sha256={_sha(data)} size={len(data)} chunk={CHUNK} digest=xxh3_128"
    assert lines[2:-1] == [f"# {_xxh(data[i:i + CHUNK])}" for i in range(0, len(data), CHUNK)]
    assert lines[-1].startswith("# linnaeus-progress v1 step=")
    # The sidecar is still a sha256sum file: the real tool checks it and skips the comment lines.
    check = subprocess.run(["sha256sum", "-c", "--strict", sidecar_path(path).name], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.strip() == "c.pth: OK", check.stdout + check.stderr


def test_a_file_within_one_chunk_keeps_the_one_line_sidecar(tmp_path: Path) -> None:
    result = commit_file(tmp_path, "s.pth", {"model": {"w": torch.zeros(10)}}, update_latest=False)
    assert sidecar_path(result.path).read_text() == f"{result.sha256}  s.pth\n"


def test_intact_file_verifies_by_chunks_without_a_sequential_hash(tmp_path: Path, whole_file_hashes: list[str]) -> None:
    path = _commit(tmp_path)
    state = load_verified(path)
    assert torch.equal(state["model"]["w"], _state()["model"]["w"])
    assert verify_checkpoint(path).ok
    assert whole_file_hashes == []


@pytest.mark.parametrize("where", ["first byte", "middle chunk", "last byte"])
def test_damage_in_any_chunk_is_caught_and_reported_with_the_actual_digest(tmp_path: Path, where: str) -> None:
    path = _commit(tmp_path)
    expected = _sha(path.read_bytes())
    size = path.stat().st_size
    _flip(path, {"first byte": 0, "middle chunk": 5 * CHUNK + 123, "last byte": size - 1}[where])
    actual = _sha(path.read_bytes())
    with pytest.raises(CheckpointCorruptError) as err:
        load_verified(path)
    assert str(path) in str(err.value)
    assert (err.value.expected_sha256, err.value.actual_sha256) == (expected, actual)
    result = verify_checkpoint(path)
    assert not result.ok and (result.expected_sha256, result.actual_sha256) == (expected, actual)


@pytest.mark.parametrize("change", ["truncated by one byte", "one byte appended"])
def test_a_file_of_another_length_fails(tmp_path: Path, change: str) -> None:
    path = _commit(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-1] if change == "truncated by one byte" else data + b"\0")
    with pytest.raises(CheckpointCorruptError, match="does not match"):
        load_verified(path)
    assert not verify_checkpoint(path).ok


@pytest.mark.parametrize("damage", ["a wrong chunk line", "a chunk line missing", "header for another digest",
                                    "garbled header", "unknown chunk digest"])
def test_damaged_chunk_lines_fall_back_to_the_whole_file_digest(tmp_path: Path, damage: str,
                                                                 whole_file_hashes: list[str]) -> None:
    """Only the first line is the contract; a bad chunk block can cost time, never a good checkpoint."""
    path = _commit(tmp_path)
    side = sidecar_path(path)
    lines = side.read_text().splitlines()
    if damage == "a wrong chunk line":
        lines[4] = "# " + "0" * 32
    elif damage == "a chunk line missing":
        del lines[4]
    elif damage == "header for another digest":
        lines[1] = re.sub(r"sha256=[0-9a-f]{64}", "sha256=" + "f" * 64, lines[1])
    elif damage == "unknown chunk digest":
        lines[1] = lines[1].replace("digest=xxh3_128", "digest=md5")
    else:
        lines[1] = "# linnaeus-chunks v9 whatever"
    side.write_text("\n".join(lines) + "\n")
    assert load_verified(path)["progress"]["step"] == 10
    assert verify_checkpoint(path).ok
    assert whole_file_hashes, "the whole file must have been hashed instead"


def test_chunk_block_of_an_older_save_is_not_trusted_for_new_data(tmp_path: Path) -> None:
    """A sidecar whose first line was rewritten for new data but kept the old chunk lines."""
    path = _commit(tmp_path)
    old_lines = sidecar_path(path).read_text().splitlines()
    _flip(path, 3 * CHUNK)
    sidecar_path(path).write_text("\n".join([f"{_sha(path.read_bytes())}  c.pth", *old_lines[1:]]) + "\n")
    assert read_sidecar_digest(path).chunks == ()  # bound to the old digest: ignored
    assert verify_checkpoint(path).ok  # the first line alone decides, and it matches the data


def _as_v1(path: Path) -> None:
    """Rewrite ``path``'s sidecar as a save before xxh3 chunks wrote it: block v1, one sha256 per chunk."""
    data = path.read_bytes()
    lines = sidecar_path(path).read_text().splitlines()
    old = [lines[0], f"# linnaeus-chunks v1 sha256={_sha(data)} size={len(data)} chunk={CHUNK}",
           *[f"# {_sha(data[i:i + CHUNK])}" for i in range(0, len(data), CHUNK)], lines[-1]]
    sidecar_path(path).write_text("\n".join(old) + "\n")


def test_sidecar_of_an_older_save_with_sha256_chunks_still_verifies_by_chunks(tmp_path: Path,
                                                                              whole_file_hashes: list[str]) -> None:
    path = _commit(tmp_path)
    _as_v1(path)
    digest = read_sidecar_digest(path)
    assert digest.chunk_algorithm == "sha256" and len(digest.chunks) > 10
    assert load_verified(path)["progress"]["step"] == 10 and verify_checkpoint(path).ok
    assert whole_file_hashes == []
    _flip(path, 5 * CHUNK + 7)
    with pytest.raises(CheckpointCorruptError):
        load_verified(path)


def test_concurrent_hashing_writers_each_get_their_own_digests(tmp_path: Path) -> None:
    """Three saves at once (e.g. an async writer and a sync weights-only save), each hashed behind its writes."""
    payloads = [os.urandom(3 << 20) for _ in range(4)]
    results: dict[int, hashing.FileDigest] = {}

    def save(i: int) -> None:
        path = tmp_path / f"f{i}"
        with open(path, "xb") as raw:
            writer = HashingWriter(raw, hashing.FileTailHasher(path))
            for p in payloads:
                writer.write(memoryview(p))
            results[i] = writer.digest()

    threads = [threading.Thread(target=save, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "hashing writers deadlocked"
    data = b"".join(payloads)
    want = tuple(_xxh(data[i:i + CHUNK]) for i in range(0, len(data), CHUNK))
    assert all(r.sha256 == _sha(data) and r.chunks == want and r.size == len(data) for r in results.values())


def test_download_keeps_the_remote_chunk_digests(tmp_path: Path, s3_server: RcloneServer,
                                                 whole_file_hashes: list[str]) -> None:
    """A checkpoint fetched from the bucket verifies on every core later, without a second hash pass."""
    src = _commit(tmp_path / "run")
    (s3_server.root / BUCKET).mkdir(parents=True, exist_ok=True)
    shutil.copy(src, s3_server.root / BUCKET / "c.pth")
    shutil.copy(sidecar_path(src), s3_server.root / BUCKET / "c.pth.sha256")
    settle()
    out = download(RcloneSource(f"{REMOTE}:{BUCKET}/c.pth"), tmp_path / "cache" / "c.pth")
    assert sidecar_path(out).read_text() == sidecar_path(src).read_text()
    assert load_verified(out)["progress"]["step"] == 10
    assert whole_file_hashes == []


def test_digest_file_of_a_foreign_file_matches_what_a_save_records(tmp_path: Path) -> None:
    """`linnaeus-ckpt upload --write-sidecar` hashes files saved elsewhere the same way."""
    path = _commit(tmp_path)
    assert digests.digest_file(path) == read_sidecar_digest(path)


def test_download_without_remote_chunk_lines_gets_its_own(tmp_path: Path, s3_server: RcloneServer,
                                                         whole_file_hashes: list[str]) -> None:
    """A bucket object with a plain sha256sum sidecar: the hash taken while downloading gives the
    local sidecar chunk digests, so the next load verifies on every core without another pass."""
    src = _commit(tmp_path / "run")
    (s3_server.root / BUCKET).mkdir(parents=True, exist_ok=True)
    shutil.copy(src, s3_server.root / BUCKET / "c.pth")
    (s3_server.root / BUCKET / "c.pth.sha256").write_text(f"{_sha(src.read_bytes())}  c.pth\n")
    settle()
    out = download(RcloneSource(f"{REMOTE}:{BUCKET}/c.pth"), tmp_path / "cache" / "c.pth")
    assert read_sidecar_digest(out) == read_sidecar_digest(src)
    assert load_verified(out)["progress"]["step"] == 10
    assert whole_file_hashes == []


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_tail_hasher_hashes_what_the_file_holds_as_it_grows(tmp_path: Path) -> None:
    pieces = [os.urandom(n) for n in (1, 70_000, 3 << 20, 5, CHUNK, 200_001)]
    path = tmp_path / "f"
    before = _open_fds()
    with open(path, "xb", buffering=0) as f:
        tail = hashing.FileTailHasher(path)
        written = 0
        for p in pieces:
            f.write(p)
            written += len(p)
            tail.advance(written)
        got = tail.finish(written)
    data = b"".join(pieces)
    assert got == digests.digest_file(path) and got.sha256 == _sha(data)
    assert _open_fds() == before, "the hasher's read handle must be closed"


def test_tail_hasher_reports_a_file_cut_short_behind_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "f"
    before = _open_fds()
    with open(path, "xb", buffering=0) as f:
        tail = hashing.FileTailHasher(path)
        f.write(os.urandom(4 << 20))
        os.truncate(path, 1 << 20)  # another process cuts the file before the hasher read it all
        with pytest.raises(OSError, match=f"{re.escape(str(path))} ends at .* while {4 << 20} were written"):
            tail.finish(4 << 20)
        tail.abort()  # what the writer's cleanup does after a failure: harmless once stopped
    assert _open_fds() == before


def test_saves_and_downloads_hash_inline_where_no_thread_can_start(tmp_path: Path, s3_server: RcloneServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """At interpreter exit (an async save finishing) Python refuses new threads: the tail hasher's
    thread then cannot start, and the bytes are hashed beside the writes instead, never lost."""
    class NoTailThread(threading.Thread):
        def start(self) -> None:
            if self.name == "linnaeus-sha256-tail":
                raise RuntimeError("can't create new thread at interpreter shutdown")
            super().start()

    monkeypatch.setattr(hashing.threading, "Thread", NoTailThread)
    path = _commit(tmp_path / "run")
    data = path.read_bytes()
    assert read_sidecar_digest(path).sha256 == _sha(data) and verify_checkpoint(path).ok
    (s3_server.root / BUCKET).mkdir(parents=True, exist_ok=True)
    shutil.copy(path, s3_server.root / BUCKET / "c.pth")
    (s3_server.root / BUCKET / "c.pth.sha256").write_text(f"{_sha(data)}  c.pth\n")
    settle()
    out = download(RcloneSource(f"{REMOTE}:{BUCKET}/c.pth"), tmp_path / "cache" / "c.pth")
    assert out.read_bytes() == data and read_sidecar_digest(out) == read_sidecar_digest(path)
