"""What every source of checkpoint bytes provides: stat, a byte stream, small reads.

A :class:`Source` is bound to one object (like a path): ``stat()`` says whether it
exists, how big it is and which hashes the remote knows, ``open_stream()`` yields its bytes, ``sibling(suffix)``
names the object next to it (``<object>.sha256``). Sources know nothing about caches,
locks or verification; :mod:`linnaeus.checkpoint.sources.download` adds those once
for all of them.
"""

from __future__ import annotations

import abc
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Iterator

from ..errors import CheckpointError

CHUNK_SIZE = 1 << 20


class TransientSourceError(CheckpointError):
    """A failure that may go away on retry (connection refused, timeout, truncated stream)."""


@dataclass(frozen=True)
class RemoteObject:
    """What a source reports about one object. ``hashes`` maps algorithm → hex digest."""

    display: str
    size: int | None
    hashes: dict[str, str] = field(default_factory=dict)


class Source(abc.ABC):
    """One object somewhere (local path, bucket object, URL)."""

    #: Short label used in messages ("local", "rclone", "s3", ...).
    kind: str = "source"

    @property
    @abc.abstractmethod
    def display(self) -> str:
        """Where the object lives, safe to print: credentials and connection secrets redacted."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The object's base file name (what the cache stores it as)."""

    @abc.abstractmethod
    def stat(self, with_hashes: bool = False) -> RemoteObject | None:
        """Size (and, if asked, the hashes the remote already knows, without downloading) of
        the object, or None when there is no such object (a directory is not one)."""

    @abc.abstractmethod
    def open_stream(self) -> AbstractContextManager[Iterator[bytes]]:
        """Context manager yielding an iterator of byte chunks of the whole object.

        Raises :class:`TransientSourceError` (on entry, while iterating, or on exit) when the
        transfer broke in a way a retry may fix.
        """

    @abc.abstractmethod
    def sibling(self, suffix: str) -> "Source":
        """The object whose name is this one's with ``suffix`` appended (``.sha256``)."""

    def read_small(self, max_bytes: int = 1 << 16) -> bytes | None:
        """The whole object if it exists and is at most ``max_bytes`` long, else None."""
        info = self.stat()
        if info is None or (info.size is not None and info.size > max_bytes):
            return None
        with self.open_stream() as chunks:
            data = b"".join(chunks)
        return data if len(data) <= max_bytes else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display})"


# Things that must never reach a log line or an exception message.
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_CONN_PARAMS = re.compile(r"""(?P<head>(?<![\w/]):?[A-Za-z0-9_.-]*),(?:'[^']*'|"[^"]*"|[^:\s'"])*:""")
_QUERY = re.compile(r"(?P<base>https?://[^\s?#]+)\?[^\s#]*")
_SECRET_ARGS = re.compile(r"(?i)(?P<key>(?:secret|key|pass|password|token|signature|sig|credential)[\w-]*\s*[=:]\s*)(?P<val>[^\s,'\"&]+)")


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Remove credentials from ``text``: URL user-info, query strings, connection-string
    parameters (``:s3,access_key_id=...:bucket`` → ``:s3,***:bucket``), ``key=value`` pairs that
    look secret, and every literal value in ``secrets`` (e.g. the values of credential env vars).
    """
    for secret in sorted((s for s in secrets if s and len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _URL_USERINFO.sub(r"\g<scheme>***@", text)
    text = _QUERY.sub(r"\g<base>?***", text)
    text = _CONN_PARAMS.sub(r"\g<head>,***:", text)
    return _SECRET_ARGS.sub(r"\g<key>***", text)
