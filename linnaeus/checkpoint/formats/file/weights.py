"""A weights file of any origin as a whole object: a torch pickle read with ``weights_only=True``
(timm's train.py checkpoints included) or a ``.safetensors`` file, checked against its sidecar
when it has one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ...disk import read_sidecar_digest, sha256_file_async
from ...errors import CheckpointCorruptError, CheckpointIncompatibleError, CheckpointUnreadableError
from ...state import REFUSED_PICKLE_ADVICE, TAXONOMY_KEY, TREE_KEY, refused_pickle

# The safetensors metadata fields (strings) a linnaeus export records its taxonomy and tree in, as JSON.
TAXONOMY_METADATA, TREE_METADATA = "linnaeus_taxonomy", "linnaeus_taxonomy_tree"


def read_weights_file(path: Path) -> object:
    """The loaded object of ``path``. A sidecar, where there is one, is checked beside the load.

    Raises CheckpointCorruptError (unreadable or damaged bytes) or CheckpointIncompatibleError
    (intact, but its pickle names classes ``weights_only=True`` refuses to build).
    """
    try:
        known = read_sidecar_digest(path)
    except FileNotFoundError:
        known = None  # another tool's file: nothing to check it against
    except ValueError as e:
        raise CheckpointCorruptError(path, str(e)) from None
    except OSError as e:
        raise CheckpointUnreadableError(path, e) from e
    hashing = sha256_file_async(path, known) if known is not None else None
    obj = _load(path)
    if hashing is not None and known is not None:
        actual = hashing.result()
        if actual != known.sha256:
            raise CheckpointCorruptError(path, f"content does not match {path.name}.sha256",
                                         expected_sha256=known.sha256, actual_sha256=actual)
    return obj


def _load(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata() or {}
        except Exception as e:  # safetensors raises its own error types; all mean "unreadable"
            raise CheckpointCorruptError(path, f"cannot read safetensors file: {type(e).__name__}: {e}") from e
        return _with_recorded(tensors, metadata, path)
    try:
        # timm's train.py stores its argparse arguments beside the weights. Building a Namespace
        # only sets attributes, each value still through weights_only's unpickler; nothing else
        # beyond tensors and plain containers is allowed.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, refused global, I/O error: report them all by file
        refused = refused_pickle(e)
        if refused is not None:  # an intact file whose pickle names a class: not damage, nothing to delete
            raise CheckpointIncompatibleError(
                f"{path}: {refused} (torch.load(weights_only=True)). {REFUSED_PICKLE_ADVICE} "
                "Or re-save it as .safetensors.", path=path) from e
        raise CheckpointCorruptError(path, f"{type(e).__name__}: {e}") from e


def _with_recorded(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> object:
    """A linnaeus export's tensors with what its metadata records (config, taxonomy and its tree, as
    JSON text): the anatomy of a weights file, so a transfer or predict reads it like the checkpoint."""
    if TAXONOMY_METADATA not in metadata:
        return tensors  # anyone's safetensors file: its tensors
    try:
        recorded = {key: json.loads(metadata[field]) for key, field in
                    ((TAXONOMY_KEY, TAXONOMY_METADATA), (TREE_KEY, TREE_METADATA)) if field in metadata}
    except json.JSONDecodeError as e:
        raise CheckpointCorruptError(path, f"its metadata {TAXONOMY_METADATA!r} is not JSON: {e}") from e
    return {"model": tensors, "config": metadata.get("config", ""), **recorded}


__all__ = ["TAXONOMY_METADATA", "TREE_METADATA", "read_weights_file"]
