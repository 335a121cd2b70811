"""DCP's reader for a sharded checkpoint, made to use no byte it has not checked against the
manifest: ``.metadata`` is hashed before it is unpickled, and unpickled with an allow-list of
DCP's own metadata classes, never with ``pickle.load`` (a checkpoint from elsewhere brings its own
manifest, so a matching digest says nothing about who wrote the pickle); every file a rank's load
plan reads is hashed while DCP reads it, and the load fails unless all of them match.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed.checkpoint.filesystem as dcp_fs
import torch.distributed.checkpoint.metadata as dcp_metadata
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from ...disk import verify_pool
from ...errors import CheckpointCorruptError
from .manifest import DCP_METADATA, check_file


class DamagedFile(RuntimeError):
    """A :class:`CheckpointCorruptError` as DCP can carry it between ranks (it pickles failures,
    and an exception pickles by its ``args``): (path, reason, expected sha256, actual sha256)."""

    @classmethod
    def of(cls, e: CheckpointCorruptError) -> "DamagedFile":
        return cls(str(e.path), e.reason, e.expected_sha256, e.actual_sha256)

    def error(self, note: str) -> CheckpointCorruptError:
        path, reason, expected, actual = self.args
        return CheckpointCorruptError(path, f"{reason} ({note})", expected_sha256=expected, actual_sha256=actual)


def _dcp_metadata_globals() -> frozenset[tuple[str, str]]:
    names = {(dcp_metadata.__name__, n) for n, v in vars(dcp_metadata).items() if isinstance(v, type)}
    names |= {("torch", n) for n, v in vars(torch).items() if isinstance(v, (torch.dtype, torch.layout,
                                                                            torch.memory_format))}
    names |= {(dcp_fs.__name__, "_StorageInfo"), ("torch", "Size"), ("torch.serialization", "_get_layout"),
              ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("collections", "OrderedDict")}
    return frozenset(names)


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles only what DCP's ``.metadata`` is made of (its metadata classes, dtypes, sizes),
    the way ``torch.load(weights_only=True)`` does for tensors: a crafted file cannot run code."""

    allowed = _dcp_metadata_globals()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which DCP metadata never holds; refused "
                                         "without running it (a crafted checkpoint)")
        return super().find_class(module, name)


class VerifyingReader(FileSystemReader):
    """DCP's file reader that loads nothing unchecked against the manifest: ``.metadata`` before it
    is unpickled, and every file this rank's load plan reads, hashed on helper threads while DCP
    reads it (both from the page cache once the first has read it from disk): ``read_data`` fails
    unless every one matches. Hashing first and reading after cost a second pass over the bytes."""

    def __init__(self, path: str | Path, manifest: Mapping[str, Any]) -> None:
        super().__init__(path)
        self.root = Path(path)
        self.manifest = manifest
        self.verified: set[str] = set()

    def _verify(self, name: str) -> None:
        if name not in self.verified:
            try:
                check_file(self.root, self.manifest, name)
            except CheckpointCorruptError as e:
                raise DamagedFile.of(e) from None
            self.verified.add(name)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("rank") is not None:  # DCP's fallback to per-rank metadata: not part of this format
            raise DamagedFile(str(self.root / DCP_METADATA), "rank-local DCP metadata is not part of this format",
                               None, None)
        self._verify(DCP_METADATA)
        # Not DCP's own pickle.load: a checkpoint from elsewhere brings its own manifest, so a
        # matching sha256 says nothing about who wrote the pickle.
        with open(self.root / DCP_METADATA, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as e:
                raise DamagedFile(str(self.root / DCP_METADATA), f"not DCP checkpoint metadata: {e}", None,
                                   None) from None
        if not isinstance(metadata, Metadata):
            raise DamagedFile(str(self.root / DCP_METADATA),
                               f"not DCP checkpoint metadata: holds a {type(metadata).__name__}", None, None)
        if getattr(metadata, "storage_meta", None) is None:  # as DCP's reader does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        names = sorted({self.storage_data[item.storage_index].relative_path for item in plan.items})
        pool = verify_pool()
        checks = [pool.submit(self._verify, name) for name in names if name not in self.verified]
        try:
            result = super().read_data(plan, planner)
        except BaseException:
            for check in checks:
                check.result()  # a damaged file explains a failed read better than the read error
            raise
        for check in checks:
            check.result()
        return result


def read_checked_metadata(reader: VerifyingReader) -> Any:
    """DCP's metadata of ``reader``'s directory, unpickled only after its sha256 matched."""
    try:
        return reader.read_metadata()
    except DamagedFile as e:
        raise e.error("before DCP read it") from None


__all__ = ["DamagedFile", "VerifyingReader", "read_checked_metadata"]
