"""Local files as a source: ``file:///abs/path`` URIs (and plain paths given to the CLI)."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlsplit

from ..errors import CheckpointError, CheckpointNotFoundError
from .base import CHUNK_SIZE, RemoteObject, Source
from .identifiers import check_text


class LocalSource(Source):
    """A file on a local (or mounted network) file system."""

    kind = "local"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(os.path.expanduser(os.fspath(path))).absolute()

    @classmethod
    def from_uri(cls, uri: str) -> "LocalSource":
        """``file:///abs/path`` (percent-escapes decoded) or a plain path."""
        if uri.startswith("file://"):
            parts = urlsplit(uri)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"file:// URI with a host is not supported: {uri!r}; use file:///abs/path.")
            # %00 and friends decode to characters no file name holds.
            return cls(check_text(unquote(parts.path), "file:// path"))
        return cls(uri)

    @property
    def display(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def stat(self, with_hashes: bool = False) -> RemoteObject | None:
        # A local file knows no hash without reading it all; the download hashes it anyway.
        try:
            st = self.path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                return None  # no file can have that name
            raise CheckpointError(f"cannot read {self.display}: {e.strerror}.") from None
        if not self.path.is_file():
            return None
        return RemoteObject(self.display, st.st_size)

    @contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        # The transfer starts beside stat() (download._attempt): a missing file is its error too.
        try:
            f = open(self.path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise CheckpointNotFoundError(f"{self.display}: no such file.") from None
        except OSError as e:
            raise CheckpointError(f"cannot read {self.display}: {e.strerror}.") from None
        with f:
            yield iter(lambda: f.read(CHUNK_SIZE), b"")

    def sibling(self, suffix: str) -> "LocalSource":
        return LocalSource(self.path.with_name(self.path.name + suffix))
