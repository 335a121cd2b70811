"""Trusting a checkpoint file: its sha256 against its sidecar, then a weights_only structure check.

Never executes pickled code: every load uses torch's weights_only unpickler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...disk import SIDECAR_SUFFIX, read_sidecar_digest, sha256_file_async, sidecar_path
from ...errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    CheckpointUnreadableError,
    NotATrainingCheckpointError,
    first_line,
)
from ...state import (
    REFUSED_PICKLE_ADVICE,
    describe_foreign,
    newer_format_error,
    newer_format_version,
    refused_pickle,
    validate_structure,
)
from ..base import VerifyResult, unreadable_reason
from .info import mmap_load, read_info_uncached
from .names import pending_sidecars


def pending_hashes(path: Path) -> list[str]:
    """Hashes in ``path``'s pending sidecars (an overwrite renamed the data, not yet the sidecar)."""
    hashes = []
    for pending in pending_sidecars(path):
        try:
            hashes.append(read_sidecar_digest(path, sidecar=pending).sha256)
        except (OSError, ValueError):
            continue  # written atomically, so only a foreign file; it can only fail to match
    return hashes


def verify_file(path: str | Path, *, require_sidecar: bool = True) -> VerifyResult:
    """Full check of one file: sha256 against its sidecar, then a weights_only structure load.

    A file this process cannot read is reported as unreadable (``unreadable=True``), with the
    ``OSError``, never as damaged.
    """
    path = Path(path)
    if not path.is_file():
        return VerifyResult(path, False, "file does not exist")
    try:
        return _verify(path, require_sidecar)
    except FileNotFoundError:
        return VerifyResult(path, False, "file does not exist (deleted while it was checked)")
    except OSError as e:
        return VerifyResult(path, False, unreadable_reason(e), unreadable=True)


def _verify(path: Path, require_sidecar: bool) -> VerifyResult:
    known = None
    try:
        known = read_sidecar_digest(path)
    except FileNotFoundError:
        if require_sidecar:
            return VerifyResult(path, False, f"no {SIDECAR_SUFFIX} sidecar (the save never committed)")
    except ValueError as e:
        return VerifyResult(path, False, str(e))
    expected = known.sha256 if known is not None else None
    actual = sha256_file_async(path, known).result()
    if expected is not None and actual != expected:
        if actual not in pending_hashes(path):
            return VerifyResult(path, False, f"content does not match {sidecar_path(path).name}", expected, actual)
        expected = actual  # an interrupted overwrite: the new data and its pending sidecar agree
    obj, error = mmap_load(path)
    if error:
        return VerifyResult(path, False, error, expected, actual)
    info = read_info_uncached(path, path.stat().st_size, obj)
    if info.error:
        return VerifyResult(path, False, info.error, expected, actual)
    problems = validate_structure(obj) if info.kind != "foreign" else []
    if problems:
        incompatible = newer_format_version(obj) is not None
        return VerifyResult(path, False, "; ".join(problems), expected, actual, info.kind, incompatible)
    return VerifyResult(path, True, "", expected, actual, info.kind)


def load_file_verified(path: str | Path, *, map_location: Any = "cpu", require_sidecar: bool = True,
                       hash_always: bool = False) -> tuple[dict[str, Any], str | None]:
    """(state, sha256 of the bytes loaded) of a checkpoint file, loaded with ``weights_only=True``
    while its sha256 is checked in the same pass. The sha256 is None when the file has no sidecar,
    unless ``hash_always``, so that others can check they load the same bytes.

    The hash runs on a helper thread beside ``torch.load`` (both read the same pages, so the file
    comes from disk once). Loading before the hash is known is safe: the weights_only unpickler
    never executes code; a mismatch discards the result.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a checkpoint file" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(
            f"checkpoint {path} {what}. Expected a checkpoint file (e.g. checkpoint_epoch_3.pth); "
            f"check the path, or list what is there with `linnaeus-ckpt ls {path.parent}`."
        )
    known = None
    try:
        with open(path, "rb"):  # an access problem is reported as such, never as damage
            pass
        known = read_sidecar_digest(path)
    except FileNotFoundError:
        if require_sidecar:
            raise CheckpointCorruptError(path, f"it has no {SIDECAR_SUFFIX} sidecar, so it was never committed") from None
    except ValueError as e:
        raise CheckpointCorruptError(path, str(e)) from None
    except OSError as e:
        raise CheckpointUnreadableError(getattr(e, "filename", None) or path, e) from e
    expected = known.sha256 if known is not None else None
    hashing = sha256_file_async(path, known) if known is not None or hash_always else None
    actual = None
    load_error: Exception | None = None
    state = None
    try:
        # mmap: tensors come straight from the pages the hash thread is reading anyway,
        # instead of a second copy of the whole file in memory (files are never modified
        # in place, only replaced by rename, so the mapping stays what was verified).
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - re-raised below as CheckpointCorruptError, after the hash verdict
        load_error = e
    if hashing is not None:
        try:
            actual = hashing.result()
        except OSError as e:
            raise CheckpointUnreadableError(path, e) from e
        if expected is not None and actual != expected and actual not in pending_hashes(path):
            raise CheckpointCorruptError(
                path, f"content does not match {sidecar_path(path).name}", expected_sha256=expected, actual_sha256=actual
            )
    if isinstance(load_error, OSError):
        raise CheckpointUnreadableError(path, load_error) from load_error
    # A file from elsewhere (no sidecar) that holds pickled classes is another tool's intact file; a
    # committed one cannot have been written so by linnaeus, so that one stays "corrupt" below.
    refused = refused_pickle(load_error) if load_error is not None and known is None else None
    if refused is not None:
        raise NotATrainingCheckpointError(path, refused, REFUSED_PICKLE_ADVICE) from load_error
    if load_error is not None:
        raise CheckpointCorruptError(
            path, f"cannot be loaded with weights_only=True ({type(load_error).__name__}: {first_line(load_error)})"
        ) from load_error
    newer = newer_format_version(state)
    if newer is not None:
        raise newer_format_error(path, newer)
    problems = validate_structure(state)
    if problems and isinstance(state, dict) and "meta" not in state:
        raise NotATrainingCheckpointError(path, describe_foreign(state))
    if problems:
        raise CheckpointCorruptError(path, "not a linnaeus checkpoint: " + "; ".join(problems))
    return state, actual


__all__ = ["load_file_verified", "pending_hashes", "verify_file"]
