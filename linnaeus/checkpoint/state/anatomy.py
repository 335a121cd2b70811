"""What a checkpoint holds (its anatomy), built from the training objects, and the checks that a
loaded state has it.

The anatomy (a contract with users: docs/checkpoints.md, "Anatomy")::

    model       state dict (no "module." / "_orig_mod." prefix)
    optimizer, scheduler, scaler, ema, sampler     state dicts (absent when not used)
    progress    {epoch, step, epoch_step, samples}
    rng         [ {python, numpy, torch, cuda} for rank 0, rank 1, ... ]
    metrics     {history, best}
    config      resolved config as YAML text
    taxonomy    {level: class names in index order} (taxonomy.py; when the caller gives one)
    meta        {format_version, linnaeus_version, torch_version, world_size, created, run_id,
                 run_timestamp, parent_sha256, origin_sha256, kind, saver, file, epoch, step, metrics, hostname}

Everything is tensors and plain Python containers/scalars so ``torch.load(...,
weights_only=True)`` loads it; NumPy's RNG state is converted to a tensor for that reason.
Works with any object that has ``state_dict``/``load_state_dict`` (torch optimizers, timm
schedulers, GradScaler, timm ModelEma, samplers), so any PyTorch loop can use it.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from linnaeus import __version__ as linnaeus_version
from linnaeus.dist import get_world_size

from ..errors import CheckpointIncompatibleError, InvalidOperationError
from .model import model_state_dict

FORMAT_VERSION = 1
KIND_FULL = "full"
KIND_WEIGHTS = "weights"
# Top-level entries linnaeus itself writes; a training component cannot be named like one.
RESERVED_KEYS = frozenset({"model", "progress", "rng", "metrics", "config", "meta", "taxonomy", "taxonomy_tree"})
PROGRESS_FIELDS = ("epoch", "step", "epoch_step", "samples")
# The meta fields linnaeus itself writes (see make_meta); resume, retention and listing rely on them.
CORE_META_KEYS = frozenset({
    "format_version", "linnaeus_version", "torch_version", "world_size", "created", "run_id", "run_timestamp",
    "parent_sha256", "origin_sha256",
    "kind", "saver", "file", "epoch", "step", "metrics", "hostname",
})


@runtime_checkable
class Stateful(Protocol):
    """What a checkpoint component is (as in torch.distributed.checkpoint and fairseq2): anything
    with ``state_dict()`` and ``load_state_dict()`` — optimizers, schedulers, GradScaler, timm's
    ModelEma, samplers, a data loader's state. Components are passed as one mapping of checkpoint
    key → object, so adding one to a training loop is one entry, not a new keyword everywhere."""

    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> Any: ...


def config_text(config: Any) -> str:
    """YAML text of a config: a string as is, a yacs CfgNode through ``dump()``."""
    if config is None:
        return ""
    if isinstance(config, str):
        return config
    if hasattr(config, "dump"):
        return str(config.dump())
    raise TypeError(f"config must be YAML text or have .dump(), got {type(config).__name__}")


def plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Metric values as Python floats (tensors/NumPy scalars would not be weights_only-safe)."""
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}") from None
    return out


def make_meta(
    *,
    kind: str,
    saver: str,
    file: str,
    run_id: str,
    epoch: int,
    step: int,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    parent_sha256: str = "",
    run_timestamp: str = "",
    origin_sha256: str = "",
) -> dict[str, Any]:
    """The ``meta`` entry of a checkpoint; ``extra`` adds the caller's own keys. ``run_id`` and
    ``parent_sha256`` (of the file this run resumed from; "" after a fresh start) and ``origin_sha256``
    (of the file its timeline was started from by an explicit resume; "" after a fresh start) are its lineage.

    ``extra`` may not replace a core key: a wrong ``format_version``, ``kind`` or ``saver``
    would make the file unreadable, resumed from when it should not be, or deleted by
    another saver's retention.
    """
    clashing = sorted(CORE_META_KEYS.intersection(extra or {}))
    if clashing:
        raise InvalidOperationError(
            f"meta_extra for checkpoint {file} sets {clashing}, which linnaeus writes itself "
            f"(core meta keys: {sorted(CORE_META_KEYS)}). Store your values under other names, "
            f"e.g. {'my_' + clashing[0]!r}."
        )
    meta = {
        "format_version": FORMAT_VERSION,
        "linnaeus_version": str(linnaeus_version),
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass: not weights_only-safe
        "world_size": get_world_size(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
        "run_id": run_id,
        "run_timestamp": run_timestamp,  # the run's start ({run_timestamp} in file names), kept across relaunches
        "parent_sha256": parent_sha256,
        "origin_sha256": origin_sha256,
        "kind": kind,
        "saver": saver,
        "file": file,
        "epoch": int(epoch),
        "step": int(step),
        "metrics": plain_metrics(metrics),
        "hostname": socket.gethostname(),
    }
    meta.update(extra or {})
    return meta


def build_state(
    model: nn.Module | Mapping[str, Any],
    components: Mapping[str, Stateful | None] | None = None,
    *,
    weights_only: bool = False,
) -> dict[str, Any]:
    """The object-derived part of a checkpoint: ``model`` plus each named component's state dict.

    ``components`` maps checkpoint keys to :class:`Stateful` objects (``{"optimizer": opt,
    "scheduler": sched, ...}``); ``None`` values are skipped. progress, rng, metrics, config and
    meta are added by the manager's transaction (or by the caller when using the store directly).
    """
    state: dict[str, Any] = {"model": model_state_dict(model)}
    if weights_only:
        return state
    for key, obj in present_components(components):
        state[key] = obj.state_dict()
    return state


def present_components(components: Mapping[str, Stateful | None] | None) -> list[tuple[str, Stateful]]:
    """The components given (``None`` values skipped), checked: a name of their own, and Stateful."""
    items = [(k, v) for k, v in (components or {}).items() if v is not None]
    reserved = sorted(RESERVED_KEYS.intersection(k for k, _ in items))
    if reserved:
        raise InvalidOperationError(
            f"component name(s) {reserved} are checkpoint entries linnaeus writes itself "
            f"({sorted(RESERVED_KEYS)}); give the component another name."
        )
    missing = [k for k, v in items if not isinstance(v, Stateful)]
    if missing:
        raise InvalidOperationError(
            f"component(s) {missing} have no state_dict()/load_state_dict(); pass objects that do "
            "(optimizers, schedulers, GradScaler, ModelEma, samplers) or wrap yours in a class with both."
        )
    return items


def materialize(entries: Mapping[str, Any]) -> dict[str, Any]:
    """``entries`` with every live object replaced by its state: the model (a module, maybe wrapped,
    or a state dict) by its state dict without wrapper prefixes, any other module or
    :class:`Stateful` by its ``state_dict()``; plain values as they are."""
    out: dict[str, Any] = {}
    for key, value in entries.items():
        if key == "model" and isinstance(value, (nn.Module, Mapping)):
            out[key] = model_state_dict(value)
        elif isinstance(value, nn.Module) or (isinstance(value, Stateful) and not isinstance(value, Mapping)):
            out[key] = value.state_dict()
        else:
            out[key] = value
    return out


def stored_progress(state: Any) -> dict[str, int] | None:
    """The progress a checkpoint holds as its sidecar or manifest records it (meta's step and epoch,
    the position inside the epoch); None for a state that is not a linnaeus checkpoint."""
    meta = state.get("meta") if isinstance(state, Mapping) else None
    if not isinstance(meta, Mapping) or not isinstance(meta.get("step"), int):
        return None
    progress = state.get("progress") if isinstance(state.get("progress"), Mapping) else {}
    return {"step": meta["step"], "epoch": int(meta.get("epoch", -1)), "epoch_step": int(progress.get("epoch_step", 0))}


def newer_format_version(obj: Any) -> int | None:
    """``meta.format_version`` of ``obj`` if a newer linnaeus wrote it (this one cannot read it), else None.

    Such a file is not corrupt: it is intact data this version does not understand, so it is
    reported as incompatible and must never be skipped or deleted like a damaged file.
    """
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    version = meta.get("format_version") if isinstance(meta, Mapping) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return version
    return None


def newer_format_reason(version: int) -> str:
    """Why a file of format ``version`` cannot be read here, and the fix."""
    return (
        f"meta.format_version {version} is newer than this linnaeus ({linnaeus_version}) reads "
        f"(format_version <= {FORMAT_VERSION}): a newer linnaeus wrote it; upgrade linnaeus to read it"
    )


def newer_format_error(path: Any, version: int) -> CheckpointIncompatibleError:
    """The error for a file written in a newer checkpoint format than this linnaeus reads."""
    return CheckpointIncompatibleError(
        f"checkpoint {path} cannot be read: {newer_format_reason(version)}. The file is intact; "
        "do not delete it.",
        path=path,
    )


def validate_structure(obj: Any) -> list[str]:
    """Problems that make ``obj`` not a usable linnaeus checkpoint (empty list: fine).

    A too-new ``format_version`` is listed too; callers tell it apart from damage with
    :func:`newer_format_version`.
    """
    if not isinstance(obj, Mapping):
        return [f"top level is {type(obj).__name__}, expected a dict"]
    problems = []
    if not isinstance(obj.get("model"), Mapping):
        problems.append("no 'model' state dict")
    meta = obj.get("meta")
    if not isinstance(meta, Mapping):
        return problems + ["no 'meta' dict"]
    version = meta.get("format_version")
    newer = newer_format_version(obj)
    if newer is not None:
        problems.insert(0, newer_format_reason(newer))
    elif not isinstance(version, int) or isinstance(version, bool):
        problems.append(f"meta.format_version {version!r} is not an integer format version")
    if meta.get("kind") == KIND_FULL:
        progress = obj.get("progress")
        if not isinstance(progress, Mapping) or not all(isinstance(progress.get(k), int) for k in PROGRESS_FIELDS):
            problems.append(f"full checkpoint without integer progress {list(PROGRESS_FIELDS)}")
    return problems


__all__ = ["CORE_META_KEYS", "FORMAT_VERSION", "KIND_FULL", "KIND_WEIGHTS", "PROGRESS_FIELDS", "RESERVED_KEYS", "Stateful",
           "build_state", "config_text", "make_meta", "materialize", "newer_format_error", "newer_format_reason",
           "newer_format_version", "plain_metrics", "present_components", "stored_progress", "validate_structure"]
