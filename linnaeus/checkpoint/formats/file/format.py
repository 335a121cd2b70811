"""The single-file format: ``<name>`` (one ``torch.save`` pickle, read with ``weights_only=True``)
and its ``<name>.sha256`` sidecar, the marker. Rank 0 writes; every rank reads the whole state.

The commit protocol is :mod:`.commit`'s; verification and loads :mod:`.verify`'s; what interrupted
saves leave :mod:`.cleanup`'s; the bucket layout :mod:`.transfer`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from torch import nn

from linnaeus.dist import is_main_process, raise_on_all_ranks

from ...disk import AsyncWriter, Overlap, ProcessWriter, WriterProcessError, read_sidecar_digest, sha256_file, sidecar_path
from ...errors import CheckpointError, InvalidOperationError, LatestUpdateError
from ...state import Stateful, full_model_state, has_dtensors, materialize, restore_full_state
from ...testing import phase
from ..base import (
    Background,
    CheckpointFormat,
    CheckpointInfo,
    Leftover,
    OnCommitted,
    SaveResult,
    VerifyResult,
)
from . import transfer
from .adopt import adopt_file, move_file
from .cleanup import file_leftovers
from .commit import WriteFile, commit_file
from .info import describe_file, read_file_info
from .verify import load_file_verified, verify_file
from .weights import read_weights_file


class FileFormat(CheckpointFormat):
    name = "file"

    def claims(self, path: Path) -> bool:
        return path.is_file()

    def owns_state(self, state: Mapping[str, Any]) -> bool:
        return True  # the registry asks it last: a state no other format claims holds its tensors whole

    def entry_name(self, filename: str) -> str:
        return filename

    # ----------------------------------------------------------------- reading
    def read_info(self, path: Path) -> CheckpointInfo:
        return read_file_info(path)

    def verify(self, path: Path, *, require_marker: bool = True) -> VerifyResult:
        return verify_file(path, require_sidecar=require_marker)

    def load(self, path: Path, *, map_location: Any = "cpu", require_marker: bool = True,
             hash_always: bool = False) -> tuple[dict[str, Any], str | None]:
        return load_file_verified(path, map_location=map_location, require_sidecar=require_marker,
                                  hash_always=hash_always)

    def restore(self, state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                *, rng: bool, source: str) -> dict[str, int]:
        return restore_full_state(state, model, components, rng=rng, source=source)

    def read_weights(self, path: Path, *, use_ema: bool) -> Mapping[str, Any]:
        return read_weights_file(path)  # type: ignore[return-value]  # the caller checks what it holds

    def describe(self, path: Path) -> dict[str, Any]:
        return describe_file(path)

    def identity(self, path: Path) -> str:
        try:
            return read_sidecar_digest(path).sha256  # verified when the checkpoint was loaded
        except (OSError, ValueError):
            return sha256_file(path)  # a file from elsewhere, without a sidecar

    # ----------------------------------------------------------------- writing
    def background(self, name: str, *, process: bool = False) -> Background:
        if not process:
            return AsyncWriter(name)
        writer = ProcessWriter(name)
        if is_main_process():  # the one that writes: its writer process imports while the run starts
            writer.start()
        return writer

    def save(self, directory: Path, name: str, contents: Mapping[str, Any], *, update_latest: bool,
             background: Background | None, on_committed: OnCommitted,
             overlap: Overlap | None = None, copies: int = 0) -> SaveResult | None:
        contents = _whole_model(contents, directory / name)  # a collective when the model is sharded
        if not is_main_process():  # rank 0 writes; the others learn the outcome
            if background is None:
                raise_on_all_ranks(None, f"save of {directory / name}", CheckpointError)
            return None
        state = materialize(contents)
        if isinstance(background, AsyncWriter):
            # Here: training may change tensors right after we return (the deferred ones: after the gate opens).
            frozen = background.snapshot(state, overlap)
            background.submit(lambda: on_committed(_commit(directory, name, frozen, update_latest, background.write_file)),
                              f"save of {directory / name}")
            return None
        result = error = None
        try:
            result = _commit(directory, name, state, update_latest)
            on_committed(result)
        except CheckpointError as e:  # raised on every rank below
            error = e
        raise_on_all_ranks(error, f"save of {directory / name}", CheckpointError)
        return result

    def delete(self, path: Path) -> None:
        # Data first, then sidecar: a crash in between leaves an orphan sidecar, which cleanup removes.
        path.unlink(missing_ok=True)
        phase("deleted-data")
        sidecar_path(path).unlink(missing_ok=True)

    def move(self, path: Path, folder: Path) -> None:
        move_file(path, folder)

    def adopt(self, path: Path, *, check: bool = True) -> str:
        return adopt_file(path, check=check)

    def leftovers(self, directory: Path) -> list[Leftover]:
        return file_leftovers(directory)

    # ----------------------------------------------------------------- transferring: the bucket layout is transfer.py's
    commit_files = staticmethod(transfer.commit_files)
    marker_identity = staticmethod(transfer.marker_identity)
    remote_entries = staticmethod(transfer.remote_entries)
    fetch = staticmethod(transfer.fetch)
    remote_parts = staticmethod(transfer.remote_parts)


def _whole_model(contents: Mapping[str, Any], path: Path) -> Mapping[str, Any]:
    """``contents`` with an FSDP2-sharded model gathered whole onto rank 0 (a collective): a single
    file is for inference, in one piece. Its other state would be sharded too: refused."""
    model = contents.get("model")
    if not (isinstance(model, nn.Module) and has_dtensors(model)):
        return contents
    sharded = [k for k, v in contents.items() if k != "model" and isinstance(v, (nn.Module, Stateful))
               and not isinstance(v, Mapping)]
    if sharded:
        raise InvalidOperationError(
            f"save of {path}: a single file holds an FSDP2-sharded model's weights only (gathered onto rank 0), "
            f"not its {', '.join(sorted(sharded))}; save full training checkpoints in the sharded format.")
    return {**contents, "model": full_model_state(model)}


def _commit(directory: Path, name: str, state: Any, update_latest: bool, write: WriteFile | None = None) -> SaveResult:
    """Rank 0: :func:`commit_file`, its failures as CheckpointError naming the file and whether it got committed."""
    try:
        return commit_file(directory, name, state, update_latest=update_latest, write=write)
    except LatestUpdateError:
        raise  # the data is committed; its message says so
    except Exception as e:
        what = ("" if isinstance(e, WriterProcessError)
                else " Check that the checkpoint directory is writable and has free space.")
        raise CheckpointError(
            f"save of {directory / name} failed, nothing was committed: {type(e).__name__}: {e}.{what}"
        ) from e


__all__ = ["FileFormat"]
