"""What ``linnaeus-ckpt`` does differently for a sharded checkpoint (a DCP directory): where its
non-tensor state lives, what ``inspect`` shows, and the consolidation ``export`` starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader  # noqa: F401 - DCP must be importable here
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from linnaeus.checkpoint.sharded import VerifyingReader, consolidate_model, load_sharded_state, read_checked_metadata
from linnaeus.checkpoint.sharded_manifest import STATE_FILE, is_sharded_checkpoint, read_manifest


def state_file(path: Path) -> Path:
    """The file holding a checkpoint's progress/metrics/meta: itself, or a sharded one's state.pt."""
    return path / STATE_FILE if path.is_dir() else path


def describe(path: Path) -> dict[str, Any]:
    """``inspect``'s view of a sharded checkpoint (no tensor data is read beyond DCP's metadata)."""
    manifest, digest = read_manifest(path)
    state, _ = load_sharded_state(path)
    metadata = read_checked_metadata(VerifyingReader(path, manifest))
    model = {k[len("model."):]: v for k, v in metadata.state_dict_metadata.items()
             if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
    # Components DCP carries (the EMA's tensors), beside those in state.pt.
    carried = {k.split(".", 1)[0] for k in metadata.state_dict_metadata} - {"model", "optim"}
    shards = sorted(n for n in manifest["files"] if n.endswith(".distcp"))
    return {
        "file": str(path),
        "format": "sharded (DCP directory)",
        "size": sum(int(e["size"]) for e in manifest["files"].values()),
        "saved_by_ranks": int(state.get("meta", {}).get("world_size", len(shards))),
        "shard_files": shards,
        "manifest_sha256": digest,
        "keys": sorted({k for k in state if k != "sharded"} | carried) + ["model", "optimizer"],
        "model": {
            "tensors": len(model),
            "parameters": int(sum(torch.Size(v.size).numel() for v in model.values())),
            "dtypes": sorted({str(v.properties.dtype).replace("torch.", "") for v in model.values()}),
            "first_keys": list(model)[:8],
        },
        "meta": state.get("meta", {}),
        "progress": state.get("progress", {}),
        "components": sorted(k for k in ("optimizer_rest", "scheduler", "scaler", "ema", "sampler")
                             if k in state or k in carried),
    }


def export_source(path: Path, key: str = "model") -> dict[str, Any]:
    """The anatomy of a sharded checkpoint with its whole model (``key="ema"``: its EMA, when it
    has one) consolidated into this process."""
    weights, state = consolidate_model(path, key)
    if weights:
        state[key] = weights
    return state


__all__ = ["describe", "export_source", "is_sharded_checkpoint", "state_file"]
