"""How a sharded checkpoint splits the anatomy between DCP and ``state.pt``, for saves and loads.

DCP carries tensors only, resharded on load: the model's and the optimizer's (through
``get_state_dict`` / ``set_state_dict``, optimizer state keyed by parameter name) and those of
components that are modules (an EMA). The rest of the optimizer state (``param_groups``, step
counts that are not tensors) and every other entry go to ``state.pt``, which rank 0 writes.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generator, Iterator, Mapping

import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.filesystem import FileSystem
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

from linnaeus.dist import get_rank

from ...disk import ErrorRecordingStream

MODEL = "model"  # DCP key of the model's tensors
OPTIM = "optim"  # DCP key of the optimizer's tensors (keyed by parameter name)
OPTIM_REST = "optimizer_rest"  # in state.pt: the optimizer state dict without its tensors
SHARDED_KEY = "sharded"  # in a loaded state: {"path", "manifest"}; the tensors stay on disk until restore


def split_tensors(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, rest) of a nested dict: DCP gets only tensors, ``state.pt`` the rest."""
    tensors: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        elif isinstance(v, Mapping):
            t, r = split_tensors(v)
            if t:
                tensors[k] = t
            if r or not t:
                rest[k] = r
        else:
            rest[k] = v
    return tensors, rest


def merge(into: dict[str, Any], rest: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`split_tensors`: ``rest`` put back into ``into``."""
    for k, v in rest.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = v
    return into


def live_state(model: nn.Module, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(model state dict, optimizer state dict keyed by parameter name or None) as DCP takes them."""
    if optimizer is None:
        return get_model_state_dict(model), None
    msd, osd = get_state_dict(model, optimizer)
    return msd, osd


def is_live_optimizer(model: Any, optimizer: Any) -> bool:
    """Whether ``optimizer`` is the live optimizer of a live model (its state goes through DCP) rather
    than a state dict a transaction was given (which goes to ``state.pt`` as it is)."""
    return isinstance(model, nn.Module) and optimizer is not None and not isinstance(optimizer, Mapping)


@contextmanager
def single_process_is_intended() -> Iterator[None]:
    # DCP warns on every call without a process group; one process is a supported case here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


class _RecordingFileSystem(FileSystem):
    """DCP's file system, keeping the first OSError of this rank's writes (see ErrorRecordingStream)."""

    def __init__(self) -> None:
        super().__init__()
        self.error: OSError | None = None

    @contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Generator[io.IOBase, None, None]:
        with super().create_stream(path, mode) as stream:
            recording = ErrorRecordingStream(stream)
            try:
                yield recording  # type: ignore[misc]
            finally:
                self.error = self.error or recording.error


def shard_writer(directory: Path) -> FileSystemWriter:
    """DCP's writer of this rank's files into ``directory``, unsynced (each rank fsyncs while it
    hashes), whose ``fs.error`` keeps the OSError a failed write raised."""
    writer = FileSystemWriter(directory, sync_files=False)
    writer.fs = _RecordingFileSystem()
    return writer


def first_failure(e: BaseException, writer: FileSystemWriter | None = None) -> str:
    """The first rank's failure of a DCP error (it gathers every rank's), or the error itself; this
    rank's own failed write when ``writer`` recorded one (what a full disk really said)."""
    error = getattr(getattr(writer, "fs", None), "error", None)
    if error is not None:
        return f"rank {get_rank()}: {type(error).__name__}: {error}"
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, (exc, _) = sorted(failures.items())[0]
        return f"rank {rank}: {type(exc).__name__}: {exc}"
    return f"{type(e).__name__}: {e}"


__all__ = ["MODEL", "OPTIM", "OPTIM_REST", "SHARDED_KEY", "first_failure", "is_live_optimizer", "live_state", "merge",
           "shard_writer", "single_process_is_intended", "split_tensors"]
