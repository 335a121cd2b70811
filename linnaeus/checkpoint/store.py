"""On-disk layout of a checkpoint directory: transactional writes, listing, verification, retention.

The commit protocol (a checkpoint exists under its final name only when complete)::

    .<name>.tmp-<pid>-<rand>   torch.save through a sha256-hashing writer, fsync
    <name>.sha256              sha256sum line, written atomically (temp + rename), dir fsync
    <name>                     rename of the data temp file, dir fsync      <- commit point
    latest                     file name of the newest full checkpoint (temp + rename + dir fsync)

A crash leaves at worst a hidden temp file (never matches a checkpoint name) or a
sidecar without data; :func:`cleanup_stale` removes both. Retention is decided from
what is on disk, so it survives restarts.

Overwriting a committed file (a fixed name such as ``last.pth``, or an epoch trained again)
must not pass through a state where ``<name>`` holds the old data and ``<name>.sha256`` the
new hash, so the new hash goes to a pending sidecar first::

    .<name>.tmp-<pid>-<rand>            data, fsynced (as above)
    .<name>.sha256.pending-<pid>        new sidecar, written atomically, dir fsync
    <name>                              rename of the data, dir fsync   <- commit point
    <name>.sha256                       rename of the pending sidecar, dir fsync

At every instant ``<name>`` verifies against ``<name>.sha256`` or a pending sidecar, i.e. it
is the complete old or the complete new checkpoint. :func:`cleanup_stale` finishes (data
matches the pending sidecar) or drops (it does not) the pending sidecar of a dead writer.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import torch

from .durability import BackgroundFlush
from .errors import CheckpointCorruptError, CheckpointNotFoundError
from .hashing import (
    SIDECAR_SUFFIX,
    HashingWriter,
    format_sidecar,
    read_sidecar_digest,
    read_sidecar_file,
    read_sidecar_file_digest,
    sha256_file_async,
    sidecar_path,
)
from .state import FORMAT_VERSION, newer_format_error, newer_format_version, validate_structure

logger = logging.getLogger("linnaeus.checkpoint")

LATEST = "latest"
_TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+$")
_PENDING_RE = re.compile(r"^\.(.+)" + re.escape(SIDECAR_SUFFIX) + r"\.pending-(\d+)$")

# ----------------------------------------------------------------------------- test hook
# Fault-injection tests stop a save between its steps to kill the process there. Phases:
# open, write (with bytes so far), written, fsynced, then for a new name sidecar-temp,
# sidecar, renamed, dir-synced, and for an overwrite of a committed file pending-temp,
# pending, renamed, dir-synced, sidecar-replaced, sidecar-synced; then latest-temp, latest;
# deleted-data in retention. LINNAEUS_TEST_SAVE_DELAY=<seconds> makes
# every phase print "linnaeus-test-phase <phase> <bytes>" to stderr and sleep.
PhaseHook = Callable[[str, int], None]
_phase_hook: PhaseHook | None = None
_WRITE_PHASE_EVERY = 256 << 10


def set_test_phase_hook(hook: PhaseHook | None) -> None:
    """Test-only: call ``hook(phase, bytes_written)`` at each step of every save."""
    global _phase_hook
    _phase_hook = hook


def _env_delay_hook(delay: float) -> PhaseHook:
    def hook(phase: str, nbytes: int) -> None:
        print(f"linnaeus-test-phase {phase} {nbytes}", file=sys.stderr, flush=True)
        time.sleep(delay)

    return hook


if os.environ.get("LINNAEUS_TEST_SAVE_DELAY"):
    _phase_hook = _env_delay_hook(float(os.environ["LINNAEUS_TEST_SAVE_DELAY"]))


def _phase(name: str, nbytes: int = 0) -> None:
    if _phase_hook is not None:
        _phase_hook(name, nbytes)


# ----------------------------------------------------------------------------- names
def temp_name(final_name: str) -> str:
    """Hidden, never ends like a checkpoint; pid lets cleanup tell a dead writer's leftovers."""
    return f".{final_name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def is_temp_name(name: str) -> bool:
    return _TEMP_RE.match(name) is not None


def pending_sidecar_name(final_name: str) -> str:
    """Hidden name of the new sidecar while a committed file is overwritten; pid as in temp names."""
    return f".{final_name}{SIDECAR_SUFFIX}.pending-{os.getpid()}"


def is_pending_sidecar_name(name: str) -> bool:
    return _PENDING_RE.match(name) is not None


def pending_sidecars(path: str | Path) -> list[Path]:
    """Pending sidecars of ``path`` left by overwrites in progress or interrupted."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return sorted(path.parent / n for n in names if (m := _PENDING_RE.match(n)) and m.group(1) == path.name)


def is_checkpoint_name(name: str) -> bool:
    """Could ``name`` be a checkpoint file (as opposed to a temp, sidecar or pointer)?"""
    return not (name.startswith(".") or name.endswith(SIDECAR_SUFFIX) or name == LATEST)


_dir_locks: dict[str, threading.Lock] = {}
_dir_locks_guard = threading.Lock()


@contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Serialise commits and cleanups within a process (two savers may share one dir)."""
    key = str(directory.resolve())
    with _dir_locks_guard:
        lock = _dir_locks.setdefault(key, threading.Lock())
    with lock:
        yield


def _reset_locks_after_fork() -> None:
    # Locks held by another thread at fork time would stay locked forever in the child.
    global _dir_locks, _dir_locks_guard
    _dir_locks = {}
    _dir_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str, phase: str) -> None:
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _phase(f"{phase}-temp")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    _phase(phase)


# ----------------------------------------------------------------------------- write
_FLUSH_EVERY = 32 << 20  # bytes serialised between background flushes (see durability.py)


@dataclass(frozen=True)
class SaveResult:
    path: Path
    sha256: str
    size: int
    seconds: float


def commit_file(
    directory: str | Path,
    filename: str,
    state: Any,
    *,
    update_latest: bool,
    serialize: Callable[[Any, BinaryIO], None] = torch.save,
) -> SaveResult:
    """Write ``state`` to ``directory/filename`` transactionally (see module docstring).

    ``serialize(state, fileobj)`` writes the bytes (``torch.save`` by default; the CLI's
    safetensors export passes its own).
    """
    start = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / filename
    tmp = directory / temp_name(filename)
    last_reported = [0]
    flushed = [0]

    def on_write(total: int) -> None:
        if total - flushed[0] >= _FLUSH_EVERY:
            # Let the disk work while we go on serialising and hashing, instead of
            # leaving all of it to the final fsync.
            raw.flush()
            flusher.kick()
            flushed[0] = total
        if total - last_reported[0] >= _WRITE_PHASE_EVERY:
            last_reported[0] = total
            _phase("write", total)

    sidecar_written = False
    try:
        with open(tmp, "xb") as raw:
            _phase("open")
            writer = HashingWriter(raw, on_write=on_write)
            flusher = BackgroundFlush(raw.fileno())
            try:
                serialize(state, writer)
            finally:
                flusher.close()
            raw.flush()
            _phase("written", writer.bytes_written)
            os.fsync(raw.fileno())
            _phase("fsynced", writer.bytes_written)
        digest = writer.digest()
        with _dir_lock(directory):
            side = sidecar_path(final)
            if final.exists() and side.exists():
                _overwrite_committed(tmp, final, format_sidecar(digest, filename), writer.bytes_written)
            else:
                # Sidecar first: once the data file has its final name it is fully committed.
                sidecar_written = True
                _atomic_write_text(side, format_sidecar(digest, filename), "sidecar")
                os.replace(tmp, final)
                _phase("renamed", writer.bytes_written)
                fsync_dir(directory)
                _phase("dir-synced", writer.bytes_written)
            if update_latest:
                write_latest(directory, filename)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if sidecar_written and not final.exists():
            sidecar_path(final).unlink(missing_ok=True)
        raise
    return SaveResult(final, digest.sha256, writer.bytes_written, time.perf_counter() - start)


def _overwrite_committed(tmp: Path, final: Path, sidecar_text: str, nbytes: int) -> None:
    """Replace committed ``final`` by the fsynced ``tmp`` so that ``final`` always verifies.

    Replacing the sidecar first (as for a new name) would leave the old data with the new
    hash if the process died before the data rename: the only copy of that checkpoint would
    then read as corrupt. The new hash waits in a pending sidecar, which verification also
    accepts, until the data has its name. Caller holds the directory lock.
    """
    pending = final.with_name(pending_sidecar_name(final.name))
    try:
        _atomic_write_text(pending, sidecar_text, "pending")
        os.replace(tmp, final)
    except BaseException:
        if tmp.exists():  # the data was not renamed: the old file and sidecar still match
            pending.unlink(missing_ok=True)
        raise
    _phase("renamed", nbytes)
    fsync_dir(final.parent)
    _phase("dir-synced", nbytes)
    # From here the pending sidecar is the truth; an error leaves it for cleanup_stale to finish.
    os.replace(pending, sidecar_path(final))
    _phase("sidecar-replaced", nbytes)
    fsync_dir(final.parent)
    _phase("sidecar-synced", nbytes)


def write_latest(directory: str | Path, filename: str) -> None:
    _atomic_write_text(Path(directory) / LATEST, filename + "\n", "latest")


def read_latest(directory: str | Path) -> str | None:
    """File name recorded in ``latest``, or None if there is none (or it is unusable)."""
    path = Path(directory) / LATEST
    try:
        name = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not name or "/" in name or not is_checkpoint_name(name):
        logger.warning("Ignoring %s: expected a checkpoint file name, found %r.", path, name[:80])
        return None
    return name


# ----------------------------------------------------------------------------- listing
@dataclass
class CheckpointInfo:
    """What retention, resume and ``linnaeus-ckpt ls`` need to know about one file."""

    path: Path
    size: int
    committed: bool  # has its .sha256 sidecar
    kind: str = "unknown"  # full | weights | foreign | unknown
    saver: str = ""
    epoch: int = -1
    step: int = -1
    epoch_step: int = 0
    created: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why it could not be read
    format_version: int | None = None  # meta.format_version, when it is an int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def too_new(self) -> bool:
        """Written by a newer linnaeus: intact but unreadable here, so never skipped or deleted."""
        return self.format_version is not None and self.format_version > FORMAT_VERSION

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def order_key(self) -> tuple[int, int, int, str]:
        """Newer sorts later: by training progress stored in the file, never by mtime."""
        return (self.step, self.epoch, self.epoch_step, self.created)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else value


_info_cache: dict[str, tuple[tuple[int, int, int], CheckpointInfo]] = {}
_info_cache_lock = threading.Lock()


def _reset_cache_lock_after_fork() -> None:
    global _info_cache_lock
    _info_cache_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_cache_lock_after_fork)


def read_info(path: str | Path) -> CheckpointInfo:
    """Progress/metrics/meta of one file without reading its tensor data.

    ``torch.load(mmap=True, weights_only=True)`` maps tensors lazily, so this costs the
    unpickling of the structure only; results are cached by (inode, size, mtime).
    """
    path = Path(path)
    st = path.stat()
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    committed = sidecar_path(path).exists()
    with _info_cache_lock:
        hit = _info_cache.get(str(path))
    if hit is not None and hit[0] == key:
        info = hit[1]
    else:
        info = _read_info_uncached(path, st.st_size)
        with _info_cache_lock:
            _info_cache[str(path)] = (key, info)
    info.committed = committed
    return info


def _mmap_load(path: Path) -> tuple[Any, str | None]:
    """(object, None) or (None, why it cannot be loaded); tensors stay mapped, not read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True), None
    except Exception as e:  # noqa: BLE001 - any load failure means "unreadable", reported with its cause
        return None, f"cannot be loaded with weights_only=True: {type(e).__name__}: {_first_line(e)}"


def _read_info_uncached(path: Path, size: int, obj: Any = None) -> CheckpointInfo:
    info = CheckpointInfo(path=path, size=size, committed=False)
    if obj is None:
        obj, info.error = _mmap_load(path)
        if info.error:
            return info
    if not isinstance(obj, Mapping):
        info.error = f"top level is {type(obj).__name__}, not a dict"
        return info
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    progress = obj.get("progress") if isinstance(obj.get("progress"), Mapping) else {}
    version = meta.get("format_version")
    info.format_version = version if isinstance(version, int) and not isinstance(version, bool) else None
    try:
        # "foreign": no linnaeus meta at all (e.g. a timm state dict); structure is not checked.
        info.kind = str(meta.get("kind") or ("full" if progress else "unknown" if "meta" in obj else "foreign"))
        info.saver = str(meta.get("saver", ""))
        info.epoch = int(progress.get("epoch", meta.get("epoch", -1)))
        info.step = int(progress.get("step", meta.get("step", -1)))
        info.epoch_step = int(progress.get("epoch_step", 0))
        info.created = str(meta.get("created", ""))
        info.metrics = {str(k): float(v) for k, v in dict(meta.get("metrics", {})).items()}
    except (TypeError, ValueError) as e:
        # A newer format may lay out progress/meta differently; that is no damage. Its
        # progress stays unknown (-1), and resume stops at it instead of skipping it.
        if not info.too_new:
            info.error = f"malformed progress/meta: {e}"
    return info


def _first_line(e: BaseException) -> str:
    """The informative line of an exception message (torch's weights_only errors bury it)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("WeightsUnpickler error"):
            return ln[:300]
    return lines[0][:300] if lines else ""


def list_checkpoints(directory: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint-named file in ``directory``, oldest first (unreadable ones first)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    infos = []
    for entry in os.scandir(directory):
        if not entry.is_file() or not is_checkpoint_name(entry.name):
            continue
        try:
            infos.append(read_info(Path(entry.path)))
        except FileNotFoundError:  # deleted by a concurrent retention pass
            continue
    return sorted(infos, key=lambda i: (i.readable, i.order_key, i.name))


# ----------------------------------------------------------------------------- verify / load
@dataclass(frozen=True)
class VerifyResult:
    path: Path
    ok: bool
    reason: str = ""
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    kind: str = "unknown"
    # Intact, but written in a newer format than this linnaeus reads (reason says so): not
    # corrupt, so resume must stop at it rather than fall back to an older checkpoint.
    incompatible: bool = False

    def __bool__(self) -> bool:
        return self.ok


def _pending_hashes(path: Path) -> list[str]:
    """Hashes in ``path``'s pending sidecars (an overwrite renamed the data, not yet the sidecar)."""
    hashes = []
    for pending in pending_sidecars(path):
        try:
            hashes.append(read_sidecar_file(pending, path.name))
        except (OSError, ValueError):
            continue  # written atomically, so only a foreign file; it can only fail to match
    return hashes


def verify_checkpoint(path: str | Path, *, require_sidecar: bool = True) -> VerifyResult:
    """Full check of one file: sha256 against its sidecar, then a weights_only structure load.

    Never executes pickled code: the structure check uses torch's weights_only unpickler.
    """
    path = Path(path)
    if not path.is_file():
        return VerifyResult(path, False, "file does not exist")
    known = None
    try:
        known = read_sidecar_digest(path)
    except FileNotFoundError:
        if require_sidecar:
            return VerifyResult(path, False, f"no {SIDECAR_SUFFIX} sidecar (the save never committed)")
    except ValueError as e:
        return VerifyResult(path, False, str(e))
    expected = known.sha256 if known is not None else None
    actual = sha256_file_async(path, known).result()
    if expected is not None and actual != expected:
        if actual not in _pending_hashes(path):
            return VerifyResult(path, False, f"content does not match {sidecar_path(path).name}", expected, actual)
        expected = actual  # an interrupted overwrite: the new data and its pending sidecar agree
    obj, error = _mmap_load(path)
    if error:
        return VerifyResult(path, False, error, expected, actual)
    info = _read_info_uncached(path, path.stat().st_size, obj)
    if info.error:
        return VerifyResult(path, False, info.error, expected, actual)
    problems = validate_structure(obj) if info.kind != "foreign" else []
    if problems:
        incompatible = newer_format_version(obj) is not None
        return VerifyResult(path, False, "; ".join(problems), expected, actual, info.kind, incompatible)
    return VerifyResult(path, True, "", expected, actual, info.kind)


def load_verified(path: str | Path, *, map_location: Any = "cpu", require_sidecar: bool = True) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` while checking its sha256 in one pass.

    The hash runs on a helper thread beside ``torch.load`` (both read the same pages, so
    the file comes from disk once). Loading before the hash is known is safe: the
    weights_only unpickler never executes code; a mismatch discards the result.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(
            f"checkpoint {path} {what}. Expected a checkpoint file (e.g. checkpoint_epoch_3.pth); "
            f"check the path, or list what is there with `linnaeus-ckpt ls {path.parent}`."
        )
    known = None
    try:
        known = read_sidecar_digest(path)
    except FileNotFoundError:
        if require_sidecar:
            raise CheckpointCorruptError(path, f"it has no {SIDECAR_SUFFIX} sidecar, so it was never committed") from None
    except ValueError as e:
        raise CheckpointCorruptError(path, str(e)) from None
    expected = known.sha256 if known is not None else None
    hashing = sha256_file_async(path, known) if known is not None else None
    load_error: Exception | None = None
    state = None
    try:
        # mmap: tensors come straight from the pages the hash thread is reading anyway,
        # instead of a second copy of the whole file in memory (files are never modified
        # in place, only replaced by rename, so the mapping stays what was verified).
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - re-raised below as CheckpointCorruptError, after the hash verdict
        load_error = e
    if hashing is not None:
        actual = hashing.result()
        if actual != expected and actual not in _pending_hashes(path):
            raise CheckpointCorruptError(
                path, f"content does not match {sidecar_path(path).name}", expected_sha256=expected, actual_sha256=actual
            )
    if load_error is not None:
        raise CheckpointCorruptError(
            path, f"cannot be loaded with weights_only=True ({type(load_error).__name__}: {_first_line(load_error)})"
        ) from load_error
    newer = newer_format_version(state)
    if newer is not None:
        raise newer_format_error(path, newer)
    problems = validate_structure(state)
    if problems:
        raise CheckpointCorruptError(path, "not a linnaeus checkpoint: " + "; ".join(problems))
    return state


# ----------------------------------------------------------------------------- retention
def plan_retention(
    infos: Iterable[CheckpointInfo],
    *,
    keep_last_n: int,
    keep_best_n: int = 0,
    monitor: str = "",
    mode: str = "max",
    protect: Iterable[str] = (),
) -> list[CheckpointInfo]:
    """Which of ``infos`` (one saver's committed, readable files) to delete.

    Keeps the ``keep_last_n`` newest, the ``keep_best_n`` best by ``monitor``, the newest
    one in any case, and every protected file name. ``keep_last_n == 0`` keeps everything.
    """
    ordered = sorted(infos, key=lambda i: (i.order_key, i.name))
    if keep_last_n <= 0 or not ordered:
        return []
    keep = {i.name for i in ordered[-keep_last_n:]} | {ordered[-1].name} | set(protect)
    if keep_best_n > 0 and monitor:
        rated = [i for i in ordered if i.metric(monitor) is not None]
        rated.sort(key=lambda i: (i.metric(monitor), i.order_key), reverse=(mode == "max"))
        keep |= {i.name for i in rated[:keep_best_n]}
    return [i for i in ordered if i.name not in keep]


def delete_checkpoint(path: str | Path) -> None:
    """Data first, then sidecar: a crash in between leaves an orphan sidecar, which cleanup removes."""
    path = Path(path)
    with _dir_lock(path.parent):
        path.unlink(missing_ok=True)
        _phase("deleted-data")
        sidecar_path(path).unlink(missing_ok=True)
    with _info_cache_lock:
        _info_cache.pop(str(path), None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _finish_pending(pending: Path, data: Path) -> bool:
    """Settle a dead writer's pending sidecar; True if it became ``data``'s sidecar.

    The data was renamed (its hash is the pending one): the overwrite committed, so the
    pending sidecar replaces the old one. Otherwise the data is still the old file (or gone)
    and the pending sidecar is dropped.
    """
    try:
        new = read_sidecar_file_digest(pending, data.name)
    except ValueError:
        new = None
    if new is not None and data.is_file() and sha256_file_async(data, new).result() == new.sha256:
        os.replace(pending, sidecar_path(data))
        fsync_dir(data.parent)
        return True
    pending.unlink()
    return False


def cleanup_stale(directory: str | Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove leftovers of interrupted saves: temp files of dead writers, sidecars without data,
    and pending sidecars of interrupted overwrites (finished when the data already is the new file).

    ``min_age_s`` spares files younger than that (for tools run beside a live writer).
    Returns the paths removed (a finished pending sidecar counts: its name is gone).
    """
    directory = Path(directory)
    removed: list[Path] = []
    finished: list[Path] = []
    if not directory.is_dir():
        return removed
    now = time.time()
    with _dir_lock(directory):
        for entry in os.scandir(directory):
            if not entry.is_file():
                continue
            name = entry.name
            m = _TEMP_RE.match(name)
            pending = _PENDING_RE.match(name)
            if pending:
                # Written and renamed under the directory lock, so one with our own pid is
                # not in progress; another live process may be mid-overwrite.
                pid = int(pending.group(2))
                if (pid != os.getpid() and _pid_alive(pid)) or now - entry.stat().st_mtime < min_age_s:
                    continue
                try:
                    done = _finish_pending(Path(entry.path), directory / pending.group(1))
                except FileNotFoundError:
                    continue
                (finished if done else removed).append(Path(entry.path))
                continue
            if m:
                stale = int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
            elif name.endswith(SIDECAR_SUFFIX):
                stale = not (directory / name[: -len(SIDECAR_SUFFIX)]).exists()
            else:
                continue
            try:
                if stale and now - entry.stat().st_mtime >= min_age_s:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except FileNotFoundError:
                continue
    for path in removed:
        logger.info("Removed leftover of an interrupted save: %s", path)
    for path in finished:
        logger.info("Finished an interrupted overwrite: %s is now the sidecar of the new data", path)
    return removed + finished
