"""Reading a sharded checkpoint: verified loads, restoring into live objects at any world size
(DCP reshards N ranks' shards onto M), and consolidating its model in one process.

Rank 0 reads and checks the manifest and broadcasts its sha256 (every rank must read the same
manifest); every rank verifies ``.metadata`` before DCP unpickles it, and each rank hashes
(xxh3-128) the shard files its own load plan reads while DCP reads them (:class:`VerifyingReader`):
no rank reads every byte before the others start, and a damaged shard fails the restore on every
rank, naming the file. Resume then falls back to an older checkpoint
(:func:`~linnaeus.checkpoint.store.restore_newest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict, set_optimizer_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from linnaeus.dist import is_dist, run_on_all_ranks

from ...errors import CheckpointCorruptError, CheckpointError, CheckpointIncompatibleError, CheckpointUnreadableError
from ...state import Stateful, restore_full_modules, restore_full_optimizer, restore_state
from ..base import VerifyResult, unreadable_reason
from .exchange import fetch_missing, files_read
from .manifest import (
    DCP_METADATA,
    STATE_FILE,
    check_file,
    check_present,
    is_node_local,
    manifest_of,
    node_parts,
    read_manifest,
    verify_all,
)
from .metadata import DamagedFile, VerifyingReader, read_checked_metadata
from .state_dicts import (
    MODEL,
    OPTIM,
    OPTIM_REST,
    SHARDED_KEY,
    first_failure,
    live_state,
    merge,
    single_process_is_intended,
    split_tensors,
)


def load_sharded_state(path: str | Path) -> tuple[dict[str, Any], str]:
    """(state, manifest sha256) of a sharded checkpoint, checked as far as a rank can without its
    load plan: manifest, every file present at its recorded size, ``.metadata`` and ``state.pt``
    hashed; ``state.pt`` loaded with ``weights_only=True``. The model/optimizer tensors stay on
    disk: :func:`restore_sharded` reads them into the live objects. Not a collective."""
    path = Path(path)
    manifest, digest = read_manifest(path)
    check_present(path, manifest)
    check_file(path, manifest, DCP_METADATA)
    check_file(path, manifest, STATE_FILE)
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - its bytes matched the manifest: report what torch said
        raise CheckpointCorruptError(path / STATE_FILE, f"cannot be loaded with weights_only=True: "
                                                        f"{type(e).__name__}: {e}") from e
    if not isinstance(state, dict):
        raise CheckpointCorruptError(path / STATE_FILE, f"top level is {type(state).__name__}, expected a dict")
    state[SHARDED_KEY] = {"path": str(path), "manifest": manifest}
    return state, digest


def is_sharded_state(state: Mapping[str, Any]) -> bool:
    return isinstance(state.get(SHARDED_KEY), Mapping)



def load_on_rank(path: Path) -> tuple[dict[str, Any], str]:
    """A verified load of ``path`` on this rank, as far as it goes without the load plan (the
    manifest's sha256 is compared with rank 0's by the caller). The shard files are hashed by the
    ranks that read them, at restore (:class:`VerifyingReader`), not by rank 0 beforehand: that
    pass read every byte once more, on one rank, while the others waited."""
    return load_sharded_state(path)


def verify_directory(path: Path) -> VerifyResult:
    """A sharded checkpoint's manifest, then every file's size, xxh3-128 and sha256, then ``state.pt``."""
    try:
        manifest, digest = read_manifest(path)
        verify_all(path, manifest, thorough=True)
        state, _ = load_sharded_state(path)
    except CheckpointIncompatibleError as e:
        return VerifyResult(path, False, str(e), incompatible=True)
    except CheckpointUnreadableError as e:
        return VerifyResult(path, False, unreadable_reason(e.cause), unreadable=True)
    except CheckpointCorruptError as e:
        return VerifyResult(path, False, e.reason, e.expected_sha256, e.actual_sha256)
    except CheckpointError as e:
        return VerifyResult(path, False, str(e))
    problems = [k for k in ("progress", "meta", "rng") if k not in state]
    if problems:
        return VerifyResult(path, False, f"{STATE_FILE} lacks {problems}", digest, digest)
    return VerifyResult(path, True, "", digest, digest, str(state["meta"].get("kind", "full")))


def restore_sharded(state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                    *, rng: bool, source: str) -> dict[str, int]:
    """Load a sharded checkpoint's tensors into ``model``, ``components["optimizer"]`` and the
    components that are modules (``ema``) through DCP (resharded to this world size), then
    everything else as :func:`restore_state` does. An optimizer a transaction saved as a state dict
    (in ``state.pt``) is restored as a single file's. A component the checkpoint lacks is refused
    there, as for a single file. A collective: every rank calls it; a damaged file fails it on
    every rank, naming the file (:class:`CheckpointCorruptError`). Its shards are hashed while
    they are read, so after that failure the model, optimizer and EMA may hold part of the damaged
    load (nothing else was touched): restore an intact checkpoint over them, or discard them."""
    info = state[SHARDED_KEY]
    path, manifest = Path(info["path"]), info["manifest"]
    optimizer = components.get("optimizer")
    dcp_optimizer = optimizer if OPTIM_REST in state else None
    if optimizer is not None and dcp_optimizer is None and "optimizer" not in state:
        raise CheckpointIncompatibleError(f"{source} has no optimizer state; resume from a full checkpoint.",
                                          path=path)
    others = {k: v for k, v in components.items() if k != "optimizer"}
    modules = {k: v for k, v in others.items() if isinstance(v, nn.Module)}
    if model is not None or modules:
        reader = VerifyingReader(path, manifest)
        run_on_all_ranks(lambda: check_file(path, manifest, DCP_METADATA), f"loading {path}", CheckpointError)
        metadata = run_on_all_ranks(lambda: read_checked_metadata(reader), f"loading {path}", CheckpointError)
        saved = {k.split(".", 1)[0] for k in metadata.state_dict_metadata}
        tensors: dict[str, Any] = {}
        msd = osd = None
        if model is not None:
            msd, osd = live_state(model, dcp_optimizer)
            tensors[MODEL] = msd
            if osd is not None:
                tensors[OPTIM] = split_tensors(osd)[0]
        # A module component the checkpoint holds no tensors for is left to restore_state below.
        tensors.update({k: get_model_state_dict(m) for k, m in modules.items() if k in saved})
        for key in [k for k in tensors if k != OPTIM]:
            run_on_all_ranks(lambda: _check_compatible(metadata, tensors[key], source, path, key=key),
                             f"loading {path}", CheckpointError)
        if is_node_local(manifest):  # each node holds its ranks' shards: those this plan reads come first
            fetch_missing(path, manifest, files_read(tensors, metadata))
        try:
            with single_process_is_intended():
                dcp.load(tensors, storage_reader=reader, no_dist=not is_dist())
        except (Exception, CheckpointException) as e:
            raise _load_error(e, path) from None
        if model is not None:
            set_model_state_dict(model, msd)
        if dcp_optimizer is not None and osd is not None:
            full = merge({"state": tensors[OPTIM].get("state", {})}, state[OPTIM_REST])
            set_optimizer_state_dict(model, dcp_optimizer, full)
        for key in [k for k in modules if k in tensors]:
            set_model_state_dict(others.pop(key), tensors[key])
    if optimizer is not None and dcp_optimizer is None:
        restore_full_optimizer(state, model, optimizer, source)
    return restore_state(state, None, restore_full_modules(state, others, source), rng=rng, source=source)


def _check_compatible(metadata: Any, msd: Mapping[str, Any], source: str, path: Path, *, key: str = "model") -> None:
    prefix = key + "."
    saved = {k[len(prefix):]: tuple(v.size) for k, v in metadata.state_dict_metadata.items()
             if k.startswith(prefix) and isinstance(v, TensorStorageMetadata)}
    own = {k: tuple(v.shape) for k, v in msd.items() if isinstance(v, torch.Tensor)}
    missing = sorted(k for k in own if k not in saved)
    unexpected = sorted(k for k in saved if k not in own)
    mismatched = [(k, saved[k], own[k]) for k in sorted(own.keys() & saved.keys()) if saved[k] != own[k]]
    if missing or unexpected or mismatched:
        what = "model state" if key == "model" else f"{key!r} state"
        raise CheckpointIncompatibleError(
            f"{what} in {source} does not match the {'model' if key == 'model' else key} being restored; use a "
            "pretrained load for a different architecture or taxonomy.", missing=missing, unexpected=unexpected,
            mismatched=mismatched, path=path)


def _load_error(e: BaseException, path: Path) -> CheckpointError:
    """DCP's error (it gathers every rank's failure) as ours, naming the damaged file if one is."""
    failures = getattr(e, "failures", None) or {}
    for rank, (exc, _) in sorted(failures.items()):
        if isinstance(exc, DamagedFile):
            return exc.error(f"found by rank {rank} while loading {path}")
    if isinstance(e, DamagedFile):
        return e.error(f"found while loading {path}")
    return CheckpointError(f"loading {path} failed: {first_failure(e)}")


def consolidate(path: str | Path, key: str = MODEL) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the whole model's state dict, the rest of the anatomy) of a sharded checkpoint, in this one
    process, whatever world size saved it; every file is verified first. For export and pretrained
    loads. ``key="ema"`` consolidates the EMA's state dict instead (``{}`` when there is none)."""
    path = Path(path)
    manifest, _ = manifest_of(path)
    state, _ = load_sharded_state(path)
    reader = VerifyingReader(path, manifest)
    read_checked_metadata(reader)  # a refused .metadata is named here, not inside DCP's generic failure
    loaded: dict[str, Any] = {}
    try:
        # What DCP's own dcp_to_torch_save uses: dcp.load() would fill a copy of an empty dict.
        _load_state_dict(loaded, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(keys={key}), no_dist=True)
    except (Exception, CheckpointException) as e:
        raise _load_error(e, path) from None
    state.pop(SHARDED_KEY, None)
    return dict(loaded.get(key, {})), state


def describe(path: Path) -> dict[str, Any]:
    """``linnaeus-ckpt inspect``'s view of a sharded checkpoint (no tensor data is read beyond DCP's
    metadata, itself verified first)."""
    manifest, digest = read_manifest(path)
    state, _ = load_sharded_state(path)
    metadata = read_checked_metadata(VerifyingReader(path, manifest))
    model = {k[len("model."):]: v for k, v in metadata.state_dict_metadata.items()
             if k.startswith("model.") and isinstance(v, TensorStorageMetadata)}
    # Components DCP carries (the EMA's tensors), beside those in state.pt.
    carried = {k.split(".", 1)[0] for k in metadata.state_dict_metadata} - {MODEL, OPTIM}
    shards = sorted(n for n in manifest["files"] if n.endswith(".distcp"))
    out = {
        "file": str(path),
        "format": "sharded (DCP directory)",
        "size": sum(int(e["size"]) for e in manifest["files"].values()),
        "saved_by_ranks": int(state.get("meta", {}).get("world_size", len(shards))),
        "shard_files": shards,
        "manifest_sha256": digest,
        "keys": sorted({k for k in state if k != SHARDED_KEY} | carried) + ["model", "optimizer"],
        "model": {
            "tensors": len(model),
            "parameters": int(sum(torch.Size(v.size).numel() for v in model.values())),
            "dtypes": sorted({str(v.properties.dtype).replace("torch.", "") for v in model.values()}),
            "first_keys": list(model)[:8],
        },
        "meta": state.get("meta", {}),
        "progress": state.get("progress", {}),
        "components": sorted(k for k in (OPTIM_REST, "scheduler", "scaler", "ema", "sampler")
                             if k in state or k in carried),
    }
    parts = node_parts(path)
    if parts:  # node-local directories: each node's part, and how much of it this directory holds
        out["node_parts"] = {f"ranks {','.join(map(str, p['ranks']))}": p["here"] for p in parts}
    if isinstance(state.get("metrics"), dict):
        out["metrics"] = {"best": state["metrics"].get("best", {}),
                          "history_len": len(state["metrics"].get("history", []))}
    return out


def read_weights(path: Path, *, use_ema: bool) -> dict[str, Any]:
    """The anatomy with the whole model consolidated (``use_ema``: the EMA instead, when one is saved)."""
    ema, rest = consolidate(path, "ema") if use_ema else ({}, {})
    if ema:
        return {**rest, "ema": ema}
    model, rest = consolidate(path)
    return {**rest, MODEL: model}


__all__ = ["consolidate", "describe", "is_sharded_state", "load_on_rank", "load_sharded_state", "read_weights",
           "restore_sharded", "verify_directory"]
