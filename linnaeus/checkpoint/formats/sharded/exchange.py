"""The shard files a rank's load plan reads that its node's directory lacks, sent from a node that
has them, for sharded checkpoints on node-local directories (a manifest with ``parts``).

Each node's directory holds its own ranks' shard files (and the ``.metadata``, ``state.pt`` and
manifest every node gets at the commit). A load plan may read others: a tensor every rank holds
whole is saved once, in one rank's file, and another world size or another placement of ranks on
nodes reads other ranks' shards. Before DCP reads, every rank names the files its plan reads that
it cannot see; every file wanted is sent from the lowest rank that has it to the ranks that want it
(``dist.send``/``recv`` of 64 MiB chunks, point to point: no other rank takes part), written beside
the others under a temp name, checked against the manifest's digest and renamed into place. Then DCP reads everything locally, through the verifying reader.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import xxhash
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

from linnaeus.dist import all_gather_object, any_rank_true, get_rank, raise_on_all_ranks, run_on_all_ranks

from ...disk import FAST_DIGEST, fsync_dir, move_chunks, pair_mover, read_exactly, temp_name
from ...errors import CheckpointCorruptError, CheckpointError

logger = logging.getLogger("linnaeus.checkpoint")


def files_read(state_dict: dict[str, Any], metadata: Any) -> set[str]:
    """The files this rank's DCP load plan of ``state_dict`` reads (DCP's own default planner)."""
    planner = DefaultLoadPlanner()
    planner.set_up_planner(state_dict, metadata, get_rank() == 0)
    plan = planner.create_local_plan()
    return {metadata.storage_data[item.storage_index].relative_path for item in plan.items}


def present(path: Path, manifest: Mapping[str, Any], name: str) -> bool:
    entry = manifest["files"].get(name)
    try:
        return entry is not None and os.stat(path / name).st_size == entry["size"]
    except FileNotFoundError:
        return False


def fetch_missing(path: Path, manifest: Mapping[str, Any], needed: set[str]) -> None:
    """Every file in ``needed`` (this rank's) that ``path`` lacks, sent from a rank whose directory has
    it (a collective). Raises on every rank when a file is on no node, or did not arrive whole."""
    missing = sorted(n for n in needed if not present(path, manifest, n))
    held = [n for n in sorted(manifest["files"]) if present(path, manifest, n)]
    reports = all_gather_object((missing, held))
    wanted = sorted({n for want, _ in reports for n in want})
    sources: dict[str, int] = {}
    nowhere = []
    for name in wanted:
        holders = [r for r, (_, has) in enumerate(reports) if name in has]
        if holders:
            sources[name] = holders[0]
        else:
            nowhere.append(name)

    def check() -> None:
        if nowhere:
            raise CheckpointError(f"sharded checkpoint {path} is incomplete: no node's directory holds "
                                  f"{', '.join(nowhere)}, which the load needs; resume from an older checkpoint "
                                  "(every node's part of it committed) or from the bucket.")

    run_on_all_ranks(check, f"loading {path}", CheckpointError)
    if wanted and get_rank() == 0:
        logger.info("Sending %d shard file(s) of %s (%.1f MB) between nodes before the load: each node's directory "
                    "holds its own ranks' shards, and the load plans read %s", len(wanted), path.name,
                    sum(manifest["files"][n]["size"] for n in wanted) / 1e6, ", ".join(wanted))
    failure = None
    for name in wanted:  # every file moves whatever failed before it, so no rank waits alone
        takers = [r for r, (want, _) in enumerate(reports) if name in want]
        error = _move(path / name, manifest["files"][name], sources[name], takers,
                      path / name if name in missing else None)
        failure = failure or error
    _raise_alike(failure, path)


def _raise_alike(failure: BaseException | None, path: Path) -> None:
    """Raise ``failure`` on every rank; a damaged shard as :class:`CheckpointCorruptError` on every rank, so
    that every rank falls back to an older checkpoint together (``store.restore_newest``), as after a
    damaged file found by DCP's read."""
    if not any_rank_true(failure is not None):  # one 4-byte all-reduce when every file arrived whole
        return
    damaged = failure if isinstance(failure, CheckpointCorruptError) else None
    found = all_gather_object(None if damaged is None else (get_rank(), str(damaged.path), damaged.reason))
    first = next((f for f in found if f is not None), None)
    if damaged is not None:
        raise damaged
    if first is not None:  # no more collectives: the ranks with the damaged copy raise theirs, as above
        rank, where, reason = first
        raise CheckpointCorruptError(where, f"{reason} (found by rank {rank} while receiving the shard files of "
                                            f"{path} from other nodes)")
    raise_on_all_ranks(failure, f"receiving the shard files of {path} from other nodes", CheckpointError)


def copy_parts(final: Path, manifest_files: Mapping[str, Mapping[str, Any]], groups: list[tuple[int, ...]] | Any,
               copies: int, group: Any = None) -> BaseException | None:
    """After a node-local commit: each node's shard files sent to the next ``copies`` nodes in rank order,
    which add them to their committed ``final`` directory, checked against the manifest (a collective
    of ``group``); this rank's first failure. Every file moves whatever fails, so no rank waits alone."""
    groups = [tuple(g) for g in groups]
    copies = min(copies, len(groups) - 1)
    rank, failure = get_rank(), None
    for index, members in enumerate(groups):
        targets = {groups[(index + k) % len(groups)][0] for k in range(1, copies + 1)}
        for name in sorted(n for n, e in manifest_files.items() if e.get("rank") in members):
            error = _move(final / name, manifest_files[name], members[0], sorted(targets),
                          final / name if rank in targets else None, group)
            failure = failure or error
    return failure


def _move(own: Path, entry: Mapping[str, Any], source: int, targets: Sequence[int], into: Path | None,
          group: Any = None) -> BaseException | None:
    """One file from ``source`` to the ranks ``targets``, point to point (each writes it ``into`` its
    directory, or only hashes it where that is None); this rank's failure, if any. Every chunk moves
    whatever fails on the way, so that no rank is left waiting for a transfer. Other ranks take no part."""
    size, rank = int(entry["size"]), get_rank()
    if rank != source and rank not in targets:
        return None
    failure: list[BaseException] = []
    src = out = None
    tmp = into.with_name(temp_name(into.name)) if into is not None else None
    try:
        if rank == source:
            src = open(own, "rb")
        if tmp is not None:
            out = open(tmp, "xb")
    except OSError as e:
        failure.append(e)
    # The manifest's xxh3-128 when it records one (about 12x faster), else its sha256.
    expected = entry.get(FAST_DIGEST) if isinstance(entry.get(FAST_DIGEST), str) else entry["sha256"]
    digest = xxhash.xxh3_128() if isinstance(entry.get(FAST_DIGEST), str) else hashlib.sha256()

    def read(view: memoryview) -> None:
        if src is not None and not failure:
            try:
                read_exactly(src, view)
            except OSError as e:
                failure.append(e)

    def take(data: memoryview) -> None:
        digest.update(data)
        if out is not None and not failure:
            out.write(data)

    try:
        move_chunks(size, pair_mover(source, targets, group), read=read if rank == source else None,
                    take=take if tmp is not None else None)
        if failure:
            return failure[0]
        if out is None or into is None or tmp is None:
            return None
        out.flush()
        os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            return CheckpointCorruptError(into, f"the copy received from rank {source} does not match the manifest "
                                                f"({digest.name} {digest.hexdigest()}, expected {expected})")
        os.replace(tmp, into)
        fsync_dir(into.parent)
        return None
    except OSError as e:
        return e
    finally:
        for f in (src, out):
            if f is not None:
                f.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()


__all__ = ["copy_parts", "fetch_missing", "files_read", "present"]
