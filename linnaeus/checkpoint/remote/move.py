"""Moving committed checkpoints of a bucket folder into a sub-folder, safe against a kill at any moment.

A server-side ``rclone moveto`` per object is no move of a checkpoint: killed between the objects
of one entry, it left the payload under the live name (uncommitted there, so a new timeline's upload
overwrote it) and the marker in the sub-folder (committed there over nothing). So a move aside is,
for each entry:

1. copy its payload, then its marker, into the sub-folder (the copy is committed only once whole);
2. check the copy against what is still at the source (sizes, and every hash both sides report);
3. delete the source's marker (the entry is no longer committed there), then its payload.

A journal object (:data:`JOURNAL`), written before the first copy and deleted after the last
delete, names the entries (with their identities) and the sub-folder. Every step can be
repeated, so whoever next takes the folder's writer lease (:mod:`.lease`), resumes from it or sets
it aside finishes a move that a kill interrupted (:func:`finish_moves`) before it lists the folder.
An entry whose name a different checkpoint holds by then is left alone.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from ..errors import CheckpointError
from ..formats import RemoteFolder, RemoteParts, format_named
from ..sources import TransientSourceError, copy_within, delete_within, rcat

logger = logging.getLogger("linnaeus.checkpoint")

JOURNAL = ".move-aside.json"


def move_aside(folder: RemoteFolder, entries: Mapping[str, str], folder_name: str) -> str:
    """Move the committed ``entries`` (name -> format name) of ``folder`` into its sub-folder
    ``folder_name``; returns the sub-folder's rclone path. Nothing is deleted before its copy checks."""
    finish_moves(folder)
    moving = {}
    for name, fmt in entries.items():
        identity = _identity(folder, name, fmt, "")
        if identity is None:
            raise CheckpointError(f"cannot move {folder.display}{name} aside: it is not committed there.")
        moving[name] = {"format": fmt, "identity": identity}
    journal = {"dest": folder_name.strip("/") + "/", "entries": moving}
    rcat(json.dumps(journal, indent=1).encode(), folder.folder + JOURNAL, env=folder.env)
    _carry_out(folder, journal)
    return folder.folder + journal["dest"]


def finish_moves(folder: RemoteFolder) -> str | None:
    """Finish a move aside that a killed process began in ``folder``; its sub-folder, or None."""
    data = folder.read(JOURNAL)
    if data is None:
        return None
    try:
        journal = json.loads(data)
        if not isinstance(journal.get("dest"), str) or not isinstance(journal.get("entries"), dict) or not all(
                isinstance(e, dict) and {"format", "identity"} <= set(e) for e in journal["entries"].values()):
            raise ValueError("expected {'dest': str, 'entries': {name: {'format': str, 'identity': str}}}")
    except ValueError as e:
        raise CheckpointError(f"{folder.display}{JOURNAL} (the journal of an interrupted move aside) is malformed: "
                              f"{e}. Nothing was moved. Check the folder by hand, then delete that object.") from None
    logger.warning("Finishing the move aside of %s into %s%s that an earlier process began and did not finish",
                   ", ".join(journal["entries"]), folder.display, journal["dest"])
    _carry_out(folder, journal)
    return folder.folder + journal["dest"]


def _carry_out(folder: RemoteFolder, journal: dict[str, Any]) -> None:
    dest = journal["dest"]
    for name, entry in journal["entries"].items():
        parts = format_named(entry["format"]).remote_parts(name)
        here = _identity(folder, name, entry["format"], "")
        if here is not None and here != entry["identity"]:
            logger.warning("%s%s is now another checkpoint than the one a move aside began with: left where it is",
                           folder.display, name)
            continue
        if here is not None:  # still committed here: copy, check, then uncommit
            _copy(folder, parts, dest)
            _check_copy(folder, parts, dest, name)
            delete_within(folder.folder + parts.marker, env=folder.env)
        elif _identity(folder, name, entry["format"], dest) != entry["identity"]:
            # The source's marker goes only after its copy checked, so the copy must be committed.
            raise CheckpointError(f"moving {folder.display}{name} aside: it is committed neither here nor in "
                                  f"{folder.display}{dest}. Nothing more was deleted; look for it by hand "
                                  f"({folder.display}{JOURNAL} records the move).")
        for rel in parts.payload:
            delete_within(folder.folder + rel, env=folder.env)
    delete_within(folder.folder + JOURNAL, env=folder.env)


def _identity(folder: RemoteFolder, name: str, fmt: str, under: str) -> str | None:
    """The identity the entry's marker records below ``under`` ("" = the folder), None if uncommitted."""
    marker = folder.read(under + format_named(fmt).remote_parts(name).marker)
    return None if marker is None else format_named(fmt).marker_identity(name, marker)


def _copy(folder: RemoteFolder, parts: RemoteParts, dest: str) -> None:
    """Payload, then marker (the copy is committed once whole)."""
    for rel in parts.payload:
        if rel.endswith("/"):
            inner = parts.marker[len(rel):] if parts.marker.startswith(rel) else ""
            copy_within(folder.folder + rel, folder.folder + dest + rel, exclude=inner, env=folder.env)
        else:
            copy_within(folder.folder + rel, folder.folder + dest + rel, env=folder.env)
    copy_within(folder.folder + parts.marker, folder.folder + dest + parts.marker, env=folder.env)


def _check_copy(folder: RemoteFolder, parts: RemoteParts, dest: str, name: str) -> None:
    source, copy = _listing(folder, parts, ""), _listing(folder, parts, dest)
    for rel, listed in source.items():
        got = copy.get(rel)
        if got is None or got.get("Size") != listed.get("Size") or _hashes_differ(listed, got):
            raise TransientSourceError(
                f"moving {folder.display}{name} aside: the copy {folder.display}{dest}{rel} does not match its source "
                f"({'missing' if got is None else 'size or hash differs'}). Nothing was deleted; the next use of the "
                f"folder (or `linnaeus-ckpt set-aside`) tries again ({folder.display}{JOURNAL} records the move).")


def _listing(folder: RemoteFolder, parts: RemoteParts, under: str) -> dict[str, dict]:
    """The objects of ``parts`` below ``under`` ("" = the folder itself), by path relative to it."""
    found: dict[str, dict] = {}
    for rel in (*parts.payload, parts.marker):
        if rel.endswith("/"):
            for e in folder.lsjson(under + rel, "--hash", "-R"):
                found[rel + e["Path"]] = e
        elif (info := folder.source(under + rel).stat(with_hashes=True)) is not None:
            found[rel] = {"Size": info.size, "Hashes": info.hashes}
    return found


def _hashes_differ(a: dict, b: dict) -> bool:
    ha = {k.lower(): v.lower() for k, v in (a.get("Hashes") or {}).items() if v}
    hb = {k.lower(): v.lower() for k, v in (b.get("Hashes") or {}).items() if v}
    return any(ha[k] != hb[k] for k in ha.keys() & hb.keys())


__all__ = ["JOURNAL", "finish_moves", "move_aside"]
