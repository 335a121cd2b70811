"""The ``.sha256`` sidecar: the one place that writes and reads it, for local files and remote bytes alike.

A sidecar is a ``sha256sum`` file, so ``sha256sum -c --strict`` works in a checkpoint
directory. Comment lines, which sha256sum skips, add what linnaeus needs beside the digest::

    <sha256 of the file>  checkpoint_epoch_3.pth
    # linnaeus-chunks v2 sha256=<same hex> size=<bytes> chunk=<bytes> digest=xxh3_128   (files over one chunk)
    # <xxh3-128 of bytes [0, chunk)>
    # <xxh3-128 of bytes [chunk, 2*chunk)>
    ...
    # linnaeus-progress v1 step=<S> epoch=<E> epoch_step=<N>              (linnaeus checkpoints)

The chunk digests let a reader verify on every core (:mod:`.digests`); the progress line lets
a listing of a bucket order checkpoints by the progress they hold without downloading them
(:mod:`linnaeus.checkpoint.remote`). Both are optional: a plain ``sha256sum`` line verifies the whole file.
Older saves wrote the chunk block as ``v1`` (no ``digest=``, one sha256 per chunk); it is read as before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from .hashing import FileDigest

SIDECAR_SUFFIX = ".sha256"
# sha256sum writes "<hex>  <name>" (or " *<name>" in binary mode); a bare digest is accepted too.
_SIDECAR_RE = re.compile(r"^\s*([0-9a-fA-F]{64})(?:\s+\*?(.+?))?\s*$")
_CHUNKS_HEADER = "# linnaeus-chunks v2"
_CHUNKS_RE = re.compile(r"^# linnaeus-chunks (v1|v2) sha256=([0-9a-f]{64}) size=(\d+) chunk=(\d+)(?: digest=(\w+))?$")
# Chunk lines by algorithm: v1 blocks (no digest=) list sha256s, v2 blocks name theirs.
_CHUNK_LINE_RES = {"sha256": re.compile(r"^# ([0-9a-f]{64})$"), "xxh3_128": re.compile(r"^# ([0-9a-f]{32})$")}
_PROGRESS_HEADER = "# linnaeus-progress v1"
PROGRESS_KEYS = ("step", "epoch", "epoch_step")


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def format_sidecar(digest: str | FileDigest, file_name: str, progress: Mapping[str, Any] | None = None) -> str:
    """sha256sum's format, so ``sha256sum -c`` works in the checkpoint dir. Comment lines, which
    sha256sum skips, follow: the chunk digests (if any), then the training progress the file
    holds (``progress``: epoch, step, epoch_step), so that a listing of a bucket can order
    checkpoints by stored progress without downloading them."""
    sha256 = digest if isinstance(digest, str) else digest.sha256
    lines = [f"{sha256}  {file_name}"]
    if isinstance(digest, FileDigest) and digest.chunked:
        lines.append(f"{_CHUNKS_HEADER} sha256={digest.sha256} size={digest.size} chunk={digest.chunk_size}"
                     f" digest={digest.chunk_algorithm}")
        lines.extend(f"# {c}" for c in digest.chunks)
    if progress:
        fields = " ".join(f"{k}={int(progress[k])}" for k in PROGRESS_KEYS if k in progress)
        lines.append(f"{_PROGRESS_HEADER} {fields}")
    return "\n".join(lines) + "\n"


def sidecar_progress(text: str | bytes) -> dict[str, int] | None:
    """The progress line of a sidecar written by :func:`format_sidecar`, or None (absent or malformed)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for line in text.splitlines():
        if line.startswith(_PROGRESS_HEADER + " "):
            fields = dict(f.split("=", 1) for f in line[len(_PROGRESS_HEADER) + 1:].split() if "=" in f)
            try:
                progress = {k: int(fields[k]) for k in PROGRESS_KEYS if k in fields}
            except ValueError:
                return None
            return progress if "step" in progress else None
    return None


class SidecarError(ValueError):
    """A sidecar that is not in ``sha256sum`` format, or is written for another file."""

    def __init__(self, where: str | Path, reason: str, *, malformed: bool) -> None:
        self.where = str(where)
        self.reason = reason
        self.malformed = malformed  # not sha256sum format (vs. a well-formed line for another file)
        super().__init__(f"{where} {reason}")


def parse_sidecar(text: str | bytes, file_name: str, where: str | Path) -> FileDigest:
    """What a ``sha256sum``-format sidecar records for ``file_name``: the one parser of
    sidecars, for local files and remote bytes alike.

    The first line is ``<64 hex> [ *]<name>``; the name may be absent (a bare digest) or carry
    a directory part (as ``sha256sum dir/x.pth`` writes it), but its base name must be
    ``file_name``: a sidecar of another file verifies nothing. The ``# linnaeus-chunks``
    comment lines add the chunk digests when they are complete and bound to that digest
    (otherwise they are ignored and the file is checked as a whole).

    Raises :class:`SidecarError` (a ValueError) naming ``where`` and what was wrong.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = text.strip().splitlines()
    m = _SIDECAR_RE.match(lines[0]) if lines else None
    if m is None:
        raise SidecarError(where, f"is not in sha256sum format ('<64 hex>  <file name>'); found {text[:80]!r}",
                           malformed=True)
    named = m.group(2)
    if named and named.replace("\\", "/").rsplit("/", 1)[-1] != file_name:
        raise SidecarError(where, f"is for file {named!r}, not {file_name!r}", malformed=False)
    return _with_chunks(lines[1:], m.group(1).lower())


def _with_chunks(comment_lines: list[str], sha256: str) -> FileDigest:
    m = _CHUNKS_RE.match(comment_lines[0].strip()) if comment_lines else None
    if m is None or m.group(2) != sha256:
        return FileDigest(sha256)
    version, named = m.group(1), m.group(5)
    # v1 (older saves) had no digest= and listed sha256s; v2 names its algorithm.
    algorithm = ("sha256" if named is None else None) if version == "v1" else named
    if algorithm not in _CHUNK_LINE_RES:
        return FileDigest(sha256)
    size, chunk = int(m.group(3)), int(m.group(4))
    line_re = _CHUNK_LINE_RES[algorithm]
    chunks = [c.group(1) for c in (line_re.match(line.strip()) for line in comment_lines[1:]) if c]
    if chunk <= 0 or size <= chunk or len(chunks) != -(-size // chunk):
        return FileDigest(sha256)
    return FileDigest(sha256, size, chunk, tuple(chunks), algorithm)


def read_sidecar_digest(path: str | Path, *, sidecar: str | Path | None = None) -> FileDigest:
    """What ``path``'s sidecar records for it (the sha256 and, when present, the chunk digests).

    ``sidecar`` reads another file than ``<path>.sha256`` (the store's pending sidecar, kept
    under a hidden name while it overwrites a committed file). Raises FileNotFoundError if
    there is no sidecar and :class:`SidecarError` (a ValueError) if it is malformed or
    written for another file.
    """
    side = Path(sidecar) if sidecar is not None else sidecar_path(path)
    return parse_sidecar(side.read_text(encoding="utf-8", errors="replace"), Path(path).name, side)


def read_sidecar(path: str | Path) -> str:
    """Expected sha256 of ``path`` from its sidecar; errors as in :func:`read_sidecar_digest`."""
    return read_sidecar_digest(path).sha256
