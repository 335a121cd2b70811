"""Download one object into a local file so that the final name only ever holds a complete,
verified file — whatever processes are racing or dying around it.

The sequence for ``download(source, dest)``:

1. ``dest`` exists → done (no lock, O(1)).
2. Take a cross-process :class:`filelock.FileLock` (``.<name>.lock`` next to ``dest``) and
   check again: of N processes asking for the same missing file, one transfers, the others
   wait on the lock (no torch.distributed collective is involved, so waiting ranks cannot
   trip a collective timeout) and then find the file in place.
3. Remove stale temp files (their writer's pid is dead on this host, or older than
   ``stale_temp_hours``).
4. Per attempt: stream the object into a unique hidden temp file
   ``.<name>.<host>.<pid>.<rand>.partial`` in the same directory (never matching the final
   name or a checkpoint pattern), sha256-hashing behind the writes (a thread reads what has
   reached the file, so the transfer never waits for the hash). Beside the transfer: stat
   the object (absent → :class:`CheckpointNotFoundError`, not retried) and get the expected
   digest, preferring the ``<object>.sha256`` sidecar that linnaeus uploads, else a hash the
   remote reports (sha256/sha1/md5). Then check size and digest; fsync; write
   ``<dest>.sha256``; ``os.replace`` into place; fsync the directory.
5. Transient failures (connection refused/reset, truncated stream, digest mismatch) are
   retried with exponential backoff; the last failure raises an error naming the source,
   the number of attempts and the last cause. Access/config errors are not retried.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import secrets
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from tqdm import tqdm

from ..disk import (
    SIDECAR_SUFFIX,
    BackgroundFlush,
    FileDigest,
    FileTailHasher,
    SidecarError,
    format_sidecar,
    fsync_dir,
    parse_sidecar,
    pid_alive,
    sidecar_path,
    sidecar_progress,
    write_durably,
)
from ..errors import CheckpointCorruptError, CheckpointError, CheckpointNotFoundError
from .base import Source, TransientSourceError

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".partial"
_HASH_PREFERENCE = ("sha256", "sha1", "md5")  # remote hashes we can recompute with hashlib
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]{8})" + re.escape(TEMP_SUFFIX) + "$")


@dataclass(frozen=True)
class DownloadOptions:
    """How :func:`download` behaves; the defaults suit a training job."""

    retries: int = 3  # attempts in total (>= 1)
    backoff_s: float = 1.0  # wait before the 2nd attempt; doubles each time
    max_backoff_s: float = 30.0
    progress: bool | None = None  # None: a tqdm bar on local rank 0 for files >= progress_min_bytes
    progress_min_bytes: int = 32 << 20
    local_rank: int | None = None  # None: $LOCAL_RANK (torchrun), else 0
    lock_timeout_s: float = -1  # -1: wait as long as another process keeps downloading
    stale_temp_hours: float = 6.0

    def show_progress(self, size: int | None) -> bool:
        if self.progress is not None:
            return self.progress
        rank = self.local_rank if self.local_rank is not None else int(os.environ.get("LOCAL_RANK", "0"))
        return rank == 0 and (size or 0) >= self.progress_min_bytes


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _cut(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` of UTF-8 (NAME_MAX counts bytes, not characters)."""
    return name.encode("utf-8", "surrogateescape")[:max_bytes].decode("utf-8", "ignore")


def temp_path_for(dest: Path) -> Path:
    """A fresh temp name in ``dest``'s directory: hidden, unique, ends in ``.partial``."""
    stem = _cut(dest.name, 120)
    return dest.with_name(f".{stem}.{_host_tag()}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def lock_path_for(dest: Path) -> Path:
    return dest.with_name(f".{_cut(dest.name, 200)}.lock")


def cleanup_stale_temps(directory: str | os.PathLike, max_age_hours: float = 6.0) -> list[Path]:
    """Delete download temp files left by killed processes; return what was removed.

    A temp file is stale when its writer (host + pid encoded in its name) is this host and
    that pid is gone, or when it has not been written to for ``max_age_hours`` (covers other
    hosts sharing the directory and recycled pids). Only names matching our temp pattern are
    touched.
    """
    removed: list[Path] = []
    host, now = _host_tag(), time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        try:
            age_h = (now - entry.stat(follow_symlinks=False).st_mtime) / 3600
        except FileNotFoundError:
            continue  # its writer finished (renamed it) meanwhile
        dead = m["host"] == host and not pid_alive(int(m["pid"]))
        if dead or age_h > max_age_hours:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
            logger.info("Removed stale download temp file %s", entry.path)
    return removed


def parse_remote_sidecar(data: bytes, where: str, file_name: str) -> FileDigest:
    """What a remote ``<object>.sha256`` records for ``file_name`` (see
    :func:`linnaeus.checkpoint.disk.sidecar.parse_sidecar`), as a :class:`CheckpointCorruptError`
    naming ``where`` when it verifies nothing."""
    try:
        return parse_sidecar(data, file_name, where)
    except SidecarError as e:
        hint = "; re-upload the checkpoint together with its .sha256 sidecar" if e.malformed else ""
        raise CheckpointCorruptError(where, f"the sidecar {e.reason}{hint}") from None


def write_sidecar(dest: Path, digest: str | FileDigest, progress: dict[str, int] | None = None) -> Path:
    """Write ``<dest>.sha256`` durably; its temp file is a download temp (cleaned like one)."""
    sidecar = sidecar_path(dest)
    return write_durably(sidecar, format_sidecar(digest, dest.name, progress), temp=temp_path_for(sidecar))


@dataclass(frozen=True)
class _Expected:
    size: int | None
    algorithm: str | None
    digest: str | None
    origin: str  # where the digest came from, for messages
    # The remote sidecar's chunk digests (bound to ``digest``), copied into the local sidecar
    # so later loads verify on every core without hashing the download again.
    sidecar: FileDigest | None = None
    progress: dict[str, int] | None = None  # the remote sidecar's progress line, kept in the local one


def _expected(source: Source, pool: ThreadPoolExecutor) -> _Expected:
    """Size and expected digest: the sidecar read and the stat run side by side."""
    sidecar = source.sibling(SIDECAR_SUFFIX)
    data_f = pool.submit(sidecar.read_small)
    info = source.stat()
    if info is None:
        raise CheckpointNotFoundError(f"{source.display}: no such object.")
    data = data_f.result()
    if data is not None:
        recorded = parse_remote_sidecar(data, sidecar.display, source.name)
        return _Expected(info.size, "sha256", recorded.sha256, sidecar.display, recorded, sidecar_progress(data))
    # No sidecar: ask for the remote's hashes (free on object stores; some backends read the file).
    info = source.stat(with_hashes=True) or info
    algo = next((a for a in _HASH_PREFERENCE if info.hashes.get(a)), None)
    return _Expected(info.size, algo, info.hashes[algo].lower() if algo else None, f"the {source.kind} {algo} hash")


_FLUSH_EVERY = 8 << 20  # bytes written between background flushes while a download streams in


def _transfer(source: Source, tmp: Path, expected: "Future[_Expected]",
              options: DownloadOptions) -> tuple[int, FileDigest]:
    """Stream ``source`` into ``tmp`` (which must not exist), hashing what reaches the file; fsync it.

    The expected size arrives while bytes flow; the progress bar starts once it is known.
    """
    received = 0
    bar: tqdm | None = None
    try:
        with open(tmp, "xb", buffering=0) as f, source.open_stream() as chunks:
            # Unbuffered: every chunk is in the file once write returns, so the hasher may read it.
            hasher = FileTailHasher(tmp)
            flusher = BackgroundFlush(f.fileno())
            try:
                try:
                    flushed = 0
                    for chunk in chunks:
                        _write_all(f, chunk)
                        received += len(chunk)
                        hasher.advance(received)
                        if received - flushed >= _FLUSH_EVERY:
                            flusher.kick()
                            flushed = received
                        if bar is not None:
                            bar.update(len(chunk))
                        elif expected.done() and expected.exception() is None and options.show_progress(expected.result().size):
                            bar = tqdm(total=expected.result().size, initial=received, unit="B", unit_scale=True,
                                       unit_divisor=1024, desc=source.name)
                finally:
                    flusher.close()
                os.fsync(f.fileno())  # the disk flushes the tail while the hasher catches up
                digest = hasher.finish(received)
            except BaseException:
                hasher.abort()
                raise
    finally:
        if bar is not None:
            bar.close()
    return received, digest


def _write_all(f: "io.FileIO", data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view):]


def _file_digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def _attempt(source: Source, dest: Path, options: DownloadOptions) -> Path:
    """One try. The transfer starts at once; the sidecar/stat look-ups run beside it (they
    cost a few rclone start-ups, which would otherwise add to every download)."""
    tmp = temp_path_for(dest)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="linnaeus-dl-meta") as pool:
        # Two workers: _expected itself, and the sidecar read it starts beside its stat.
        expected_f = pool.submit(_expected, source, pool)
        try:
            try:
                received, digest = _transfer(source, tmp, expected_f, options)
            except CheckpointError:
                expected_f.result()  # "no such object" explains a failed stream better than the stream error
                raise
            expected = expected_f.result()
            if expected.size is not None and received != expected.size:
                raise TransientSourceError(
                    f"{source.display}: received {received} bytes, expected {expected.size} (transfer cut short?)."
                )
            # Without a sidecar the remote's md5/sha1 is checked in a second pass: only for files
            # not uploaded by linnaeus, which always come with a sidecar.
            actual = digest.sha256 if expected.algorithm == "sha256" else (
                _file_digest(tmp, expected.algorithm) if expected.algorithm else None)
            if expected.digest is not None and actual != expected.digest:
                raise CheckpointCorruptError(
                    source.display,
                    f"the downloaded bytes' {expected.algorithm} is {actual}, {expected.origin} says {expected.digest}",
                )
            # The remote sidecar's chunk lines when it has them (the same text as the bucket's), else ours.
            recorded = expected.sidecar if expected.sidecar is not None and expected.sidecar.chunked else digest
            write_sidecar(dest, recorded, expected.progress)
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)
    how = f"verified {expected.algorithm} from {expected.origin}" if expected.digest else "size verified; no remote hash"
    logger.info("Downloaded %s -> %s (%.1f MB in %.1f s, %s)", source.display, dest, received / 1e6,
                time.monotonic() - started, how)
    return dest


def download(source: Source, dest: str | os.PathLike, options: DownloadOptions = DownloadOptions()) -> Path:
    """Make ``dest`` a complete, verified copy of ``source`` (see the module docstring)."""
    dest = Path(dest)
    if dest.exists():
        return dest
    if options.retries < 1:
        raise ValueError(f"DownloadOptions.retries must be >= 1, got {options.retries}.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path_for(dest), timeout=options.lock_timeout_s)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("Waiting for another process to finish downloading %s (lock %s)", dest, lock.lock_file)
        try:
            lock.acquire()
        except Timeout:
            raise CheckpointError(
                f"timed out after {options.lock_timeout_s:.0f} s waiting for the download lock {lock.lock_file} "
                f"for {dest}. If no process is downloading it, remove the lock file and retry."
            ) from None
    try:
        if dest.exists():  # someone else finished while we waited
            return dest
        cleanup_stale_temps(dest.parent, options.stale_temp_hours)
        return _with_retries(source, dest, options)
    finally:
        lock.release()


def _with_retries(source: Source, dest: Path, options: DownloadOptions) -> Path:
    last: CheckpointError | None = None
    for attempt in range(1, options.retries + 1):
        try:
            return _attempt(source, dest, options)
        except (TransientSourceError, CheckpointCorruptError) as e:
            last = e
            if attempt == options.retries:
                break
            wait = min(options.backoff_s * 2 ** (attempt - 1), options.max_backoff_s)
            logger.warning(
                "Download of %s failed (attempt %d/%d): %s; retrying in %.1f s",
                source.display, attempt, options.retries, e, wait,
            )
            time.sleep(wait)
    if isinstance(last, CheckpointCorruptError):
        raise CheckpointCorruptError(
            source.display, f"{options.retries} download attempt(s) gave bytes that fail verification; last: {last}"
        ) from last
    raise CheckpointError(
        f"Downloading {source.display} to {dest} failed after {options.retries} attempt(s). Last error: {last} "
        "Nothing was written under the final name. Check that the remote is reachable and retry."
    ) from last
