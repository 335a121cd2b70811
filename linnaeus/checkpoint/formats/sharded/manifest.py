"""The manifest of a sharded checkpoint directory, and everything that reads one without DCP.

A sharded checkpoint is a directory (``checkpoint_epoch_3/``) holding DCP's per-rank files
(``__<rank>_<n>.distcp``), DCP's ``.metadata``, ``state.pt`` (rank 0: the anatomy's entries that
are not model/optimizer tensors, loaded with ``weights_only=True``) and ``manifest.json``, written
last: the size, sha256 and xxh3-128 of every other file, the progress, lineage, config and meta.
The manifest is the directory's sidecar: a final-named directory with a manifest is committed.

DCP stores no checksums and unpickles ``.metadata`` with plain ``pickle``; here no byte of a
directory is used before its digest matched the manifest (``.metadata`` included, so the
unpickling only ever sees bytes this library wrote).

Two digests, one read pass at save (:mod:`linnaeus.checkpoint.disk.digests`): loads check
xxh3-128, so a verified load of a large checkpoint costs little more than DCP's own read;
sha256 is what ``sha256sum`` and other tools can compare, and ``linnaeus-ckpt verify`` checks
both. A manifest without xxh3-128 (written before it was added) is checked by sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping

from ...disk import FAST_DIGEST, SHA256, cache_both_digests, cached_digest
from ...errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointIncompatibleError,
    CheckpointNotFoundError,
    CheckpointUnreadableError,
)
from ..base import CheckpointInfo, fill_progress

MANIFEST = "manifest.json"
DCP_METADATA = ".metadata"
STATE_FILE = "state.pt"
SHARDED_FORMAT = "linnaeus-sharded"
SHARDED_FORMAT_VERSION = 1
# On node-local directories: the ranks whose shard files each node's directory holds, one list per node.
PARTS = "parts"


def sharded_dirname(filename: str) -> str:
    """``checkpoint_epoch_3.pth`` -> ``checkpoint_epoch_3``: the directory a sharded save of that name writes."""
    stem, dot, suffix = filename.rpartition(".")
    return stem if dot and stem and "/" not in suffix else filename


def is_sharded_checkpoint(path: str | Path) -> bool:
    """A directory that looks like a sharded checkpoint (holds a manifest or DCP metadata)."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).exists() or (path / DCP_METADATA).exists())


def is_node_local(manifest: Mapping[str, Any]) -> bool:
    """Written on node-local directories: each node's directory holds its own ranks' shard files."""
    parts = manifest.get(PARTS)
    return isinstance(parts, list) and len(parts) > 1


def held_files(path: Path, manifest: Mapping[str, Any]) -> list[str]:
    """The listed files this directory must hold: all of them, or on node-local directories the shared
    ones and the shard files that are here (the others are on other nodes, fetched when a load reads
    them: :mod:`.exchange`)."""
    names = sorted(manifest["files"])
    if not is_node_local(manifest):
        return names
    return [n for n in names if not n.endswith(".distcp") or (path / n).exists()]


def node_parts(path: Path) -> list[dict[str, Any]]:
    """On node-local directories, each node's part of the checkpoint ``path`` (the ranks it saved) and how
    much of it this directory holds: ``"all"`` (its own part, or a copy of another node's), ``"some"``,
    ``"none"`` (on other nodes only). [] for a checkpoint every rank saved into one directory, or
    none that can be read."""
    try:
        manifest, _ = read_manifest(path)
    except CheckpointError:
        return []
    if not is_node_local(manifest):
        return []
    _, held = held_ranks(path, manifest)
    out = []
    for group in manifest[PARTS]:
        here = [r for r in group if r in held]
        out.append({"ranks": list(group), "here": "all" if len(here) == len(group) else "some" if here else "none"})
    return out


def held_ranks(path: Path, manifest: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """(every rank whose shard files the manifest lists, the ranks whose files are all in ``path`` at
    their recorded size): what a node-local directory holds of the checkpoint."""
    ranks: dict[int, bool] = {}
    for name, entry in manifest["files"].items():
        if isinstance(entry.get("rank"), int):
            try:
                here = os.stat(path / name).st_size == entry["size"]
            except FileNotFoundError:
                here = False
            ranks[entry["rank"]] = ranks.get(entry["rank"], True) and here
    return sorted(ranks), sorted(r for r, here in ranks.items() if here)


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")


def read_manifest(path: str | Path) -> tuple[dict[str, Any], str]:
    """(manifest, sha256 of its bytes) of the sharded checkpoint ``path``.

    Raises :class:`CheckpointNotFoundError` (no directory), :class:`CheckpointCorruptError` naming
    the manifest (missing: the directory never committed; unparsable; wrong layout) or
    :class:`CheckpointIncompatibleError` (a newer format: intact, do not delete).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"sharded checkpoint {path} does not exist (expected a directory).")
    mpath = path / MANIFEST
    try:
        raw = mpath.read_bytes()
    except PermissionError as e:  # an access problem, not damage
        raise CheckpointUnreadableError(mpath, e) from e
    except FileNotFoundError:
        raise CheckpointCorruptError(mpath, f"{MANIFEST} is missing: this directory's save never committed, or "
                                            "the file was deleted") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorruptError(mpath, f"{MANIFEST} is not valid JSON ({e})") from None
    problems = manifest_problems(manifest)
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and version > SHARDED_FORMAT_VERSION:
        raise CheckpointIncompatibleError(
            f"sharded checkpoint {path} has manifest format_version {version}; this linnaeus reads "
            f"<= {SHARDED_FORMAT_VERSION}. Upgrade linnaeus to read it. The checkpoint is intact; do not delete it.",
            path=path)
    if problems:
        raise CheckpointCorruptError(mpath, f"{MANIFEST}: " + "; ".join(problems))
    return manifest, hashlib.sha256(raw).hexdigest()


def manifest_problems(manifest: Any) -> list[str]:
    if not isinstance(manifest, dict):
        return [f"top level is {type(manifest).__name__}, expected an object"]
    problems = []
    if manifest.get("format") != SHARDED_FORMAT:
        problems.append(f"format is {manifest.get('format')!r}, expected {SHARDED_FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return problems + ["no 'files' table"]
    for name in (DCP_METADATA, STATE_FILE):
        if name not in files:
            problems.append(f"'files' does not list {name}")
    for name, entry in files.items():
        if ("/" in name or name in (".", "..", MANIFEST) or not isinstance(entry, dict)
                or not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get(FAST_DIGEST, ""), str)):
            problems.append(f"bad 'files' entry {name!r}")
    for key in ("progress", "meta"):
        if not isinstance(manifest.get(key), dict):
            problems.append(f"no '{key}' object")
    parts = manifest.get(PARTS)
    if parts is not None and not (isinstance(parts, list) and all(
            isinstance(g, list) and g and all(isinstance(r, int) for r in g) for g in parts)):
        problems.append(f"'{PARTS}' is not a list of lists of ranks")
    return problems


def check_file(path: Path, manifest: Mapping[str, Any], name: str, *, hash_bytes: bool = True,
               thorough: bool = False) -> None:
    """Raise :class:`CheckpointCorruptError` naming ``path/name`` unless its size and digest match:
    xxh3-128 when the manifest records it, sha256 otherwise; ``thorough`` checks both."""
    entry = manifest["files"].get(name)
    target = path / name
    if entry is None:
        raise CheckpointCorruptError(target, f"{name} is not listed in {MANIFEST}")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise CheckpointCorruptError(target, f"{name} is missing (listed in {MANIFEST} with {entry['size']} bytes)") from None
    if st.st_size != entry["size"]:
        raise CheckpointCorruptError(target, f"{name} has {st.st_size} bytes, {MANIFEST} records {entry['size']} "
                                             "(truncated or overwritten)")
    if not hash_bytes:
        return
    try:
        _check_digests(target, st, name, entry, thorough)
    except (FileNotFoundError, CheckpointCorruptError):
        raise
    except OSError as e:  # permissions, an I/O error: no verdict on the bytes
        raise CheckpointUnreadableError(target, e) from e


def _check_digests(target: Path, st: os.stat_result, name: str, entry: Mapping[str, Any], thorough: bool) -> None:
    if thorough:
        cache_both_digests(target, st)
    fast = entry.get(FAST_DIGEST)
    if isinstance(fast, str):
        actual = cached_digest(target, FAST_DIGEST, st)
        if actual != fast:
            raise CheckpointCorruptError(target, f"{name}: content does not match {MANIFEST} "
                                                 f"(expected xxh3-128 {fast}, actual {actual})")
        if not thorough:
            return
    actual = cached_digest(target, SHA256, st)
    if actual != entry["sha256"]:
        raise CheckpointCorruptError(target, f"{name}: content does not match {MANIFEST}",
                                     expected_sha256=entry["sha256"], actual_sha256=actual)


def check_present(path: Path, manifest: Mapping[str, Any]) -> None:
    """Every listed file exists with its recorded size and can be opened for reading (no bytes
    read): an unreadable shard stops a resume at the choice, not halfway through a restore."""
    for name in held_files(path, manifest):
        check_file(path, manifest, name, hash_bytes=False)
        try:
            os.close(os.open(path / name, os.O_RDONLY))
        except FileNotFoundError:
            raise CheckpointCorruptError(path / name, f"{name} is missing (deleted while it was checked)") from None
        except OSError as e:
            raise CheckpointUnreadableError(path / name, e) from e


def verify_all(path: Path, manifest: Mapping[str, Any], *, thorough: bool = False) -> None:
    """Every listed file present with its size and digest (both digests if ``thorough``); the
    first failure raised naming the file."""
    check_present(path, manifest)
    names = held_files(path, manifest)
    # hashlib releases the GIL on large buffers: one thread per core hashes the shard files side by side.
    with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
        for future in [pool.submit(check_file, path, manifest, name, thorough=thorough) for name in names]:
            future.result()  # the first damaged file (in name order) is the one reported


def read_dir_info(path: Path) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a sharded checkpoint directory, from its manifest alone.

    A final-named directory is renamed into place only after its manifest is written, so it
    counts as committed; without a readable manifest it is damaged (``error`` says why), which
    resume skips and retention never touches."""
    info = CheckpointInfo(path=path, size=0, committed=True)
    try:
        manifest, _ = read_manifest(path)
    except CheckpointIncompatibleError as e:
        info.format_version = SHARDED_FORMAT_VERSION + 1
        info.error = str(e)
        return info
    except CheckpointUnreadableError as e:
        info.error, info.unreadable = str(e), True
        return info
    except CheckpointError as e:
        info.size = directory_size(path)
        info.error = getattr(e, "reason", str(e))
        return info
    meta, progress = manifest["meta"], manifest["progress"]
    info.size = directory_size(path, manifest)
    info.format_version = int(meta.get("format_version", 1))
    try:
        info.kind = str(meta.get("kind", "full"))
        fill_progress(info, meta, progress)
    except (TypeError, ValueError) as e:
        info.error = f"{MANIFEST}: malformed progress/meta: {e}"
    return info


def directory_size(path: Path, manifest: Mapping[str, Any] | None = None) -> int:
    if manifest is not None:
        return sum(int(e["size"]) for e in manifest["files"].values())
    return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())


def manifest_of(path: Path) -> tuple[dict[str, Any], str]:
    """:func:`read_manifest`, then every listed file present with its size and digest (what an
    upload and a consolidation start from)."""
    manifest, digest = read_manifest(path)
    verify_all(path, manifest)
    return manifest, digest


__all__ = ["DCP_METADATA", "MANIFEST", "PARTS", "SHARDED_FORMAT", "SHARDED_FORMAT_VERSION", "STATE_FILE", "check_file",
           "check_present", "directory_size", "held_files", "held_ranks", "is_node_local", "is_sharded_checkpoint", "manifest_bytes", "manifest_of", "node_parts",
           "read_dir_info", "read_manifest", "sharded_dirname", "verify_all"]
