"""A folder on an rclone remote as the formats see it: where a format lists, uploads, fetches and
moves its checkpoints (through the one place that runs rclone, :mod:`linnaeus.checkpoint.sources`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

from ..sources import RcloneSource, TransientSourceError, rclone_args, redact, run_rclone

MAX_MARKER = 64 << 20  # a manifest lists a few entries per rank: far below this
_LOCAL_HASHES = ("md5", "sha1", "sha256")  # remote hashes worth recomputing locally to verify


class RemoteFolder:
    """A folder on an rclone remote (a path ending in ``/``), and the ``RCLONE_*`` defaults every
    rclone child needs for it (an on-the-fly remote's settings, e.g. B2's credentials)."""

    def __init__(self, folder: str, *, env: Mapping[str, str] | None = None) -> None:
        if not folder or ":" not in folder:
            raise ValueError(f"remote folder {folder!r} is not an rclone path ('remote:bucket/prefix/').")
        self.folder = folder if folder.endswith((":", "/")) else folder + "/"
        self.env = dict(env or {})

    @property
    def display(self) -> str:
        return redact(self.folder)

    def source(self, rel: str) -> RcloneSource:
        return RcloneSource(self.folder + rel, env=self.env)

    def read(self, rel: str, max_bytes: int = MAX_MARKER) -> bytes | None:
        """The object ``rel`` if it exists and is at most ``max_bytes`` long, else None."""
        return self.source(rel).read_small(max_bytes)

    def lsjson(self, rel: str, *options: str) -> list[dict]:
        """``rclone lsjson --files-only`` of the sub-folder ``rel`` ("" = this folder); [] if absent."""
        where = self.folder + rel
        try:
            out = run_rclone(rclone_args("lsjson", "--files-only", *options, paths=[where]), env=self.env,
                             what=f"listing {redact(where)}")
        except TransientSourceError as e:
            if "not found" in str(e).lower():
                return []
            raise
        return json.loads(out)


def check_listed(listed: dict | None, local: Path, size: int, sha256: str | None, shown: str) -> None:
    """A just-uploaded file as the remote lists it (``lsjson --hash``): ``size``, and the remote's hash
    (where it reports one we can recompute) equal to the local file's. Raises TransientSourceError."""
    if listed is None or listed.get("Size") != size:
        found = "nothing" if listed is None else f"{listed.get('Size')} bytes"
        raise TransientSourceError(f"{shown}: after upload the remote holds {found}, expected {size} bytes.")
    hashes = {k.lower(): v.lower() for k, v in (listed.get("Hashes") or {}).items() if v}
    algo = next((a for a in _LOCAL_HASHES if hashes.get(a)), None)
    if algo is None:
        return  # size only: this remote reports no hash we can recompute (rclone checked what it could)
    if algo == "sha256" and sha256 is not None:
        ours = sha256
    else:
        with open(local, "rb") as f:
            ours = hashlib.file_digest(f, algo).hexdigest()
    if ours != hashes[algo]:
        raise TransientSourceError(f"{shown}: remote {algo} {hashes[algo]} != local {ours}.")


__all__ = ["MAX_MARKER", "RemoteFolder", "check_listed"]
