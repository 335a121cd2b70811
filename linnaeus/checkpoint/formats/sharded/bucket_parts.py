"""A sharded checkpoint of node-local directories in the run's bucket folder: each node uploads its own
ranks' shard files, and rank 0 uploads the manifest, the remote commit marker, only once every
node's part is confirmed there::

    <name>/__1_0.distcp ...          node b's part: uploaded and checked remote (size, hash) by node b
    <name>/.part.1.json              node b's confirmation: the manifest's sha256 and the files it checked
    <name>/__0_0.distcp, .metadata, state.pt    rank 0's node's part and the shared files
    <name>/manifest.json             rank 0, once each other node's confirmation names this manifest

A folder without the manifest is not committed (never listed, fetched or resumed from), so a kill at
any point of this leaves nothing a relaunch could take. Readers need no confirmation: the manifest
vouches for every file, and :func:`fill_from_bucket` gives a node's committed directory the files no
node holds any more (a node and the partner holding its copy both lost).

Each node sends only its own ranks' files, never the copies it holds of other nodes' parts, so each
byte goes up once. When the nodes of the upload are not the ones that saved it (another world size,
a tool outside the run), the uploader sends every listed file it holds, and the rest must already
be confirmed in the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Collection, Mapping

from linnaeus.dist import get_rank

from ...disk import fsync_dir, fsync_file, known_sharing, remove_tree, temp_name, write_durably
from ...errors import BucketConflictError, CheckpointError, CheckpointIncompatibleError, CheckpointNotFoundError
from ...sources import TransientSourceError, copyto, rcat, rclone_args, redact, run_rclone
from ..base import CommitFiles, Part
from ..folder import RemoteFolder, check_listed
from .manifest import MANIFEST, PARTS, check_file, held_files, read_manifest
from .parts import SHARED_FILES

CONFIRMATION = ".part.{leader}.json"  # hidden: fetches leave it out, listings never take it for a checkpoint
# How long rank 0's upload waits for the other nodes' confirmations before it fails (and is retried): those
# nodes upload the same checkpoint at the same time, each its own part, so they finish about together.
PART_WAIT_S = 1800.0


def node_local_commit_files(path: Path, manifest: Mapping[str, Any], digest: str, *,
                            part_wait_s: float = PART_WAIT_S) -> CommitFiles:
    """What an upload of the node-local checkpoint ``path`` sends from here, and what it waits for
    before the manifest (see the module docstring)."""
    entry, groups = path.name, [tuple(g) for g in manifest[PARTS]]
    live = known_sharing(path.parent)
    saved_here = live is not None and list(live.groups) == groups  # this launch's nodes saved it: each sends its part
    if saved_here and get_rank() == 0:
        mine = next(g for g in groups if 0 in g)
        names = [n for n, e in manifest["files"].items() if e.get("rank") is None or e["rank"] in mine]
    else:
        names = held_files(path, manifest)
    others = sorted(set(manifest["files"]) - set(names))
    marker = Part(path / MANIFEST, f"{entry}/{MANIFEST}", (path / MANIFEST).stat().st_size, digest)
    for name in names:
        check_file(path, manifest, name)  # only bytes the manifest vouches for leave
    parts = tuple(Part(path / n, f"{entry}/{n}", int(manifest["files"][n]["size"]), manifest["files"][n]["sha256"])
                  for n in sorted(names))
    wait = part_wait_s if saved_here else 0.0  # else no node of this launch sends them: they must be there now
    before = partial(await_parts, entry=entry, manifest=manifest, digest=digest, names=others, timeout_s=wait) \
        if others else None
    return CommitFiles(entry, parts, marker, digest, before_marker=before)


def await_parts(folder: RemoteFolder, *, entry: str, manifest: Mapping[str, Any], digest: str,
                names: Collection[str], timeout_s: float) -> None:
    """Return once every file of ``names`` is in ``folder/entry/`` at its size, confirmed by the node
    that uploaded it for this manifest; raise TransientSourceError after ``timeout_s``."""
    deadline, pause = time.monotonic() + timeout_s, 0.2
    while True:
        waiting = unconfirmed(folder, entry, digest, manifest, names)
        if not waiting:
            return
        if time.monotonic() >= deadline:
            ranks = sorted({manifest["files"][n].get("rank") for n in waiting} - {None})
            raise TransientSourceError(
                f"{folder.display}{entry}/: the shard files of rank(s) {', '.join(map(str, ranks))} "
                f"({', '.join(sorted(waiting)[:6])}{' ...' if len(waiting) > 6 else ''}) are not confirmed there "
                f"after {timeout_s:.0f} s, so its manifest is not uploaded. Each node uploads its own ranks' shards "
                "(its log says if that fails); nothing else holds them here.")
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def unconfirmed(folder: RemoteFolder, entry: str, digest: str, manifest: Mapping[str, Any],
                names: Collection[str]) -> list[str]:
    """The files of ``names`` that no node's confirmation of this manifest covers at their size."""
    listed = {e["Path"]: e for e in folder.lsjson(entry + "/")}
    confirmed: set[str] = set()
    for name in listed:
        if name.startswith(".part.") and name.endswith(".json"):
            try:
                record = json.loads(folder.read(f"{entry}/{name}") or b"{}")
            except ValueError:
                continue  # a torn or foreign object: confirms nothing
            if record.get("manifest_sha256") == digest:
                confirmed.update(record.get("files", {}))
    return [n for n in names if n not in confirmed
            or listed.get(n, {}).get("Size") != int(manifest["files"][n]["size"])]


def upload_part(path: Path, folder: RemoteFolder, rank: int) -> bool:
    """Upload the part of node-local checkpoint ``path`` that the node led by ``rank`` saved (its
    ranks' shard files, each checked remote), then its confirmation. False when there is nothing to
    send: the checkpoint is committed remotely already, or none of its parts is this node's."""
    manifest, digest = read_manifest(path)
    group = next((g for g in manifest.get(PARTS) or () if g and g[0] == rank), None)
    if group is None:
        return False
    entry = path.name
    remote = folder.read(f"{entry}/{MANIFEST}")
    if remote is not None:
        if hashlib.sha256(remote).hexdigest() == digest:
            return False
        raise BucketConflictError(
            f"refusing to upload this node's part of {path} to {folder.display}{entry}/: the folder already holds a "
            "committed checkpoint of that name with another manifest. Another run writes this bucket folder (one "
            "EXPERIMENT.NAME for two runs?); nothing was replaced and the local files are kept.")
    names = sorted(n for n, e in manifest["files"].items() if e.get("rank") in group)
    record = json.dumps({"manifest_sha256": digest, "ranks": list(group),
                         "files": {n: int(manifest["files"][n]["size"]) for n in names}}, sort_keys=True).encode()
    where = f"{entry}/{CONFIRMATION.format(leader=rank)}"
    if folder.read(where) == record and not unconfirmed(folder, entry, digest, manifest, names):
        return False
    for name in names:
        if not (path / name).is_file():
            raise CheckpointError(f"cannot upload this node's part of {path}: {name} (rank "
                                  f"{manifest['files'][name]['rank']}'s shards) is not in the directory.")
        check_file(path, manifest, name)  # only bytes the manifest vouches for leave
        copyto(path / name, folder.folder + f"{entry}/{name}", env=folder.env)
    listed = {e["Path"]: e for e in folder.lsjson(entry + "/", "--hash")}
    for name in names:
        entry_ = manifest["files"][name]
        check_listed(listed.get(name), path / name, int(entry_["size"]), entry_["sha256"],
                     f"{folder.display}{entry}/{name}")
    rcat(record, folder.folder + where, env=folder.env)
    if folder.read(where) != record:
        raise TransientSourceError(f"{folder.display}{where}: read back does not match what was written.")
    return True


def remote_manifest(folder: RemoteFolder, entry: str) -> tuple[dict[str, Any], bytes]:
    """(the manifest, its bytes) of the committed ``entry`` in ``folder``; CheckpointNotFoundError when
    it is not committed there."""
    raw = folder.read(f"{entry}/{MANIFEST}")
    if raw is None:
        raise CheckpointNotFoundError(f"{folder.display}{entry}/{MANIFEST}: no such object (the directory is not "
                                      "committed remotely).")
    return json.loads(raw), raw


def fill_from_bucket(folder: RemoteFolder, entry: str, directory: Path, names: Collection[str]) -> list[str]:
    """Give ``directory/entry`` the listed files ``names`` from the bucket, each checked against the
    manifest, fsynced and renamed in; the names downloaded. Where the directory lacks the checkpoint,
    it is made first, with rank 0's shared files (``.metadata``, ``state.pt``, the manifest) as a
    node's part holds them. A local copy under another manifest is never touched."""
    manifest, raw = remote_manifest(folder, entry)
    dest = directory / entry
    made = not dest.exists()
    if not made and hashlib.sha256(raw).hexdigest() != read_manifest(dest)[1]:
        raise CheckpointIncompatibleError(
            f"{dest} and {folder.display}{entry}/ are two different checkpoints under one name (their manifests "
            "differ); the missing shard files cannot come from the bucket. Set one of them aside.", path=dest)
    wanted = [*(n for n in SHARED_FILES if n != MANIFEST and made), *sorted(names)]
    lacking = [n for n in wanted if made or not (dest / n).exists()]
    tmp = directory / temp_name(entry)
    tmp.mkdir(parents=True)
    try:
        for name in lacking:
            remote = folder.folder + f"{entry}/{name}"
            run_rclone(rclone_args("copyto", paths=[remote, str(tmp / name)]), env=folder.env,
                       what=f"downloading {redact(remote)}")
            check_file(tmp, manifest, name)
            fsync_file(tmp / name)
        if made:  # one rename: the directory appears with its manifest, as a commit
            write_durably(tmp / MANIFEST, raw)
            os.rename(tmp, dest)
        else:
            for name in lacking:
                os.rename(tmp / name, dest / name)
            fsync_dir(dest)
        fsync_dir(directory)
    finally:
        if tmp.exists():
            remove_tree(tmp)
    return lacking


__all__ = ["CONFIRMATION", "PART_WAIT_S", "await_parts", "fill_from_bucket", "node_local_commit_files", "remote_manifest",
           "unconfirmed", "upload_part"]
