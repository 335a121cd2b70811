"""Writing a sharded checkpoint: every rank its own shards, in parallel, then one commit.

The commit (a collective; a final name always means complete) when every rank sees one directory::

    .<name>.tmp-<writer>-<rand>/     rank 0 creates it; its name never matches a checkpoint
        __<r>_<n>.distcp             every rank: DCP writes its shards; the rank fsyncs and hashes them
        .metadata                    DCP (rank 0); rank 0 fsyncs it
        state.pt                     rank 0, fsynced
        manifest.json                rank 0, last: size, sha256, xxh3-128 of every file above; dir fsync
    <name>/                          one rename of the temp directory, parent fsync  <- commit point
    latest                           written durably (full checkpoints)

Overwriting a committed directory of the same name moves it aside to a hidden temp name first
and removes it after the rename; a crash in between leaves the older checkpoints to resume from.
No DCP "bytes" entry is ever written, because DCP loads those with ``weights_only=False``.

When the ranks do not all see one directory (node-local disks), every node's directory holds its own
ranks' shard files and the commit is two-phase across the nodes (:mod:`.parts`).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from linnaeus.dist import (
    all_gather_object,
    broadcast_object,
    get_rank,
    is_dist,
    is_main_process,
    raise_on_all_ranks,
    run_on_all_ranks,
)

from ...disk import ErrorRecordingStream, digests_of, dir_lock, fsync_dir, fsync_file, remove_tree, temp_name, write_durably
from ...errors import CheckpointError, InvalidOperationError, LatestUpdateError
from ...state import materialize, model_state_dict
from ...testing import phase
from ..base import OnCommitted, SaveResult
from ..directory import write_latest
from .exchange import copy_parts
from .manifest import DCP_METADATA, MANIFEST, PARTS, SHARDED_FORMAT, SHARDED_FORMAT_VERSION, STATE_FILE, manifest_bytes
from .parts import follow_retention, leader_of, shared_bytes, sharded_entries, sharing_of, write_shared
from .state_dicts import (
    MODEL,
    OPTIM,
    OPTIM_REST,
    first_failure,
    is_live_optimizer,
    live_state,
    shard_writer,
    single_process_is_intended,
    split_tensors,
)


@dataclass
class Staged:
    """One save's parts: this rank's tensors for DCP, rank 0's ``state.pt`` entries, the manifest's
    extra fields, and where it is written."""

    tensors: dict[str, Any]
    rest: dict[str, Any]
    manifest_extra: dict[str, Any]
    directory: Path
    name: str
    tmp: Path
    update_latest: bool
    # Which ranks see one directory (:func:`~linnaeus.checkpoint.disk.probe_sharing`): one group, or one per node.
    groups: tuple[tuple[int, ...], ...] = ((0,),)
    copies: int = 0  # node-local: how many other nodes get a copy of each node's part (exchange.copy_parts)

    @property
    def final(self) -> Path:
        return self.directory / self.name


def stage(directory: Path, name: str, contents: Mapping[str, Any], *, update_latest: bool,
          copies: int = 0) -> Staged:
    """Split ``contents`` between DCP and ``state.pt`` and make the temp directory (a collective)."""
    final = directory / name
    model, optimizer = contents["model"], contents.get("optimizer")
    live_optimizer = is_live_optimizer(model, optimizer)
    if isinstance(model, nn.Module):
        msd, osd = live_state(model, optimizer if live_optimizer else None)
    else:  # a transaction given the state dict: DCP saves it as it is
        msd, osd = model_state_dict(model), None
    tensors: dict[str, Any] = {MODEL: msd}
    rest: dict[str, Any] = {}
    if osd is not None:
        tensors[OPTIM], rest[OPTIM_REST] = split_tensors(osd)
    entries = {k: v for k, v in contents.items() if k != MODEL and not (k == "optimizer" and live_optimizer)}
    for key, module in [(k, v) for k, v in entries.items() if isinstance(v, nn.Module)]:
        # A component that is a module (an EMA, sharded like the model under fsdp): resharded by DCP.
        if key in (MODEL, OPTIM):
            raise InvalidOperationError(f"component {key!r}: the name of a sharded checkpoint's model or optimizer "
                                        "tensors; give the component another name.")
        del entries[key]
        module_state = get_model_state_dict(module)
        if module_state:
            tensors[key] = module_state
        else:  # nothing for DCP to write: an empty entry keeps "saved" distinct from "absent"
            rest[key] = {}
    meta = {**contents["meta"], "format": "sharded"}
    if is_main_process():  # only rank 0 writes state.pt
        rest.update(materialize(entries), meta=meta)
    manifest_extra = {"progress": dict(contents.get("progress", {})), "meta": meta,
                      "config": contents.get("config", "")}

    groups = sharing_of(directory).groups  # a collective the first time; creates the directory
    tmp = directory / broadcast_object(temp_name(name) if is_main_process() else None)
    leads = get_rank() == leader_of(groups, get_rank())
    run_on_all_ranks(lambda: tmp.mkdir() if leads else None, f"save of {final}", CheckpointError)
    return Staged(tensors, rest, manifest_extra, directory, name, tmp, update_latest, groups, copies)


def save_now(staged: Staged, on_committed: OnCommitted) -> SaveResult:
    """Write and commit ``staged`` (a collective); failures raise on every rank, nothing is left."""
    start = time.perf_counter()
    final, tmp = staged.final, staged.tmp
    try:
        error: BaseException | None = None
        writer = shard_writer(tmp)
        try:
            with single_process_is_intended():
                dcp.save(staged.tensors, storage_writer=writer, no_dist=not is_dist())
        except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
            error = CheckpointError(f"save of {final} failed, nothing was committed: DCP: {first_failure(e, writer)}")
        raise_on_all_ranks(error, f"save of {final}", CheckpointError)
        phase("sharded-written")  # the fault tests' seam: DCP's files are written, nothing hashed yet
        # Each rank makes durable and hashes the shard files it wrote: the bytes are read in parallel.
        own = run_on_all_ranks(lambda: digest_own_shards(tmp, get_rank()), f"save of {final}", CheckpointError)
        files: dict[str, dict[str, Any]] = {}
        for part in all_gather_object(own):
            files.update(part)
        if len(staged.groups) > 1:
            committed = commit_on_nodes(staged, files, staged.rest)
        else:
            committed = run_on_all_ranks(lambda: commit(staged, files, staged.rest) if is_main_process() else None,
                                         f"save of {final}", CheckpointError)
    except BaseException:
        if get_rank() == leader_of(staged.groups, get_rank()):
            remove_tree(tmp)  # gone already where the rename happened
        raise
    size, digest = broadcast_object(committed)
    result = SaveResult(final, digest, size, time.perf_counter() - start)
    run_on_all_ranks(lambda: on_committed(result) if is_main_process() else None, f"save of {final}",
                     CheckpointError)
    if len(staged.groups) > 1:
        follow_on_nodes(staged, files)
    return result


def commit_on_nodes(staged: Staged, files: dict[str, dict[str, Any]], rest: dict[str, Any],
                    group: Any = None) -> tuple[int, str]:
    """The two-phase commit across node-local directories (:mod:`.parts`), a collective of ``group``:
    rank 0 prepares, every other node's leader writes rank 0's shared files (phase 1), then every
    leader renames its temp directory into place (phase 2). Returns (size, sha256 of the manifest)."""
    rank, what = get_rank(), f"save of {staged.final}"
    leads = rank == leader_of(staged.groups, rank)
    prepared = run_on_all_ranks(lambda: prepare(staged, files, rest, parts=staged.groups) if rank == 0 else None,
                                what, CheckpointError, group)
    shared = broadcast_object(shared_bytes(staged.tmp) if rank == 0 else None, group=group)
    run_on_all_ranks(lambda: write_shared(staged.tmp, shared) if leads and rank != 0 else None, what,
                     CheckpointError, group)
    phase("sharded-parts-prepared")  # the fault tests' seam: every node's part is durable, none committed
    run_on_all_ranks(lambda: publish(staged) if leads else None, what, CheckpointError, group)
    return broadcast_object(prepared, group=group)


def follow_on_nodes(staged: Staged, files: Mapping[str, Mapping[str, Any]], group: Any = None) -> None:
    """After rank 0's retention: the copies of each node's part on the next nodes (``staged.copies``), and
    every other node keeps the sharded checkpoints rank 0's node keeps."""
    rank = get_rank()
    if staged.copies > 0:
        error = copy_parts(staged.final, files, staged.groups, staged.copies, group)
        raise_on_all_ranks(error, f"copies of {staged.final}'s parts on other nodes", CheckpointError, group)
    keep = broadcast_object(sharded_entries(staged.directory) if rank == 0 else None, group=group)
    run_on_all_ranks(lambda: follow_retention(staged.directory, keep)
                     if rank != 0 and rank == leader_of(staged.groups, rank) else None,
                     f"retention in {staged.directory} after the save of {staged.name}", CheckpointError, group)


def digest_own_shards(tmp: Path, rank: int) -> dict[str, dict[str, Any]]:
    """This rank's shard files made durable and hashed. DCP writes them without fsync: the fsyncs
    run on a thread beside the hashing, so the disk flushes while the CPU hashes the same pages."""
    paths = sorted(Path(e.path) for e in os.scandir(tmp)
                   if e.is_file() and e.name.startswith(f"__{rank}_") and e.name.endswith(".distcp"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        synced = pool.submit(lambda: [fsync_file(p) for p in paths])
        out = {p.name: {**digests_of(p), "rank": rank} for p in paths}
        synced.result()
    return out


def commit(staged: Staged, files: dict[str, dict[str, Any]], rest: dict[str, Any]) -> tuple[int, str]:
    """Rank 0, after every rank's shards are durable: state.pt, manifest, rename, latest.
    Returns (size, sha256 of the manifest)."""
    committed = prepare(staged, files, rest)
    publish(staged)
    return committed


def prepare(staged: Staged, files: dict[str, dict[str, Any]], rest: dict[str, Any],
            parts: tuple[tuple[int, ...], ...] | None = None) -> tuple[int, str]:
    """Rank 0: state.pt, ``.metadata`` fsynced, the manifest (with ``parts`` on node-local directories)
    written durably in the temp directory. Returns (size, sha256 of the manifest)."""
    tmp, final = staged.tmp, staged.final
    with open(tmp / STATE_FILE, "xb") as raw:
        stream = ErrorRecordingStream(raw)
        try:
            torch.save(rest, stream)
        except Exception as e:
            if stream.error is not None and stream.error is not e:  # a full disk, not "unexpected pos"
                raise stream.error from e
            raise
        raw.flush()
        os.fsync(raw.fileno())
    fsync_file(tmp / DCP_METADATA)  # DCP wrote it without fsync (see digest_own_shards)
    for extra in (DCP_METADATA, STATE_FILE):
        files[extra] = digests_of(tmp / extra)
    unexpected = sorted(e.name for e in os.scandir(tmp) if e.name not in files)
    if unexpected:
        raise CheckpointError(f"save of {final}: unexpected files in the temp directory {tmp}: {unexpected}")
    manifest = {"format": SHARDED_FORMAT, "format_version": SHARDED_FORMAT_VERSION, "files": files,
                **staged.manifest_extra}
    if parts is not None:
        manifest[PARTS] = [list(group) for group in parts]
    payload = manifest_bytes(manifest)
    write_durably(tmp / MANIFEST, payload)  # fsyncs the file and the temp directory
    return sum(f["size"] for f in files.values()) + len(payload), hashlib.sha256(payload).hexdigest()


def publish(staged: Staged) -> None:
    """The temp directory renamed into place (an older one of the name moved aside, then removed),
    the directory fsynced, ``latest`` moved: the commit point on this directory."""
    directory, name, tmp, final = staged.directory, staged.name, staged.tmp, staged.final
    with dir_lock(directory):
        old = None
        if final.exists():
            old = directory / temp_name(name)
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(directory)
        if old is not None:
            remove_tree(old)
        if staged.update_latest:
            try:
                write_latest(directory, name)
            except OSError as e:
                raise LatestUpdateError(final, e) from e


__all__ = ["Staged", "commit", "commit_on_nodes", "digest_own_shards", "follow_on_nodes", "prepare", "publish",
           "save_now", "stage"]
