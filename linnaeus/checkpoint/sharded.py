"""Sharded checkpoints through torch.distributed.checkpoint (DCP): every rank writes its own
shards in parallel, and a checkpoint saved by N ranks loads on M ranks, FSDP2 or not.

Layout and manifest: :mod:`.sharded_manifest`. Model and optimizer tensors go through
``get_state_dict`` / ``set_state_dict`` (optimizer state keyed by parameter name), and so do the
tensors of components that are modules (the EMA, under ``ema``), so resharding is DCP's;
everything else of the anatomy (non-tensor optimizer entries such as ``param_groups``, scheduler,
scaler, sampler, progress, every rank's RNG, metrics, config, meta) goes to ``state.pt``, written
by rank 0 and loaded with ``weights_only=True``. No DCP "bytes" entry is ever
written, because DCP loads those with ``weights_only=False``; DCP's ``.metadata`` pickle is read
with an allow-list of its own classes (:class:`_MetadataUnpickler`), never with ``pickle.load``.

The commit (a collective; a final name always means complete)::

    .<name>.tmp-<writer>-<rand>/     rank 0 creates it; its name never matches a checkpoint
        __<r>_<n>.distcp             every rank: DCP writes its shards; the rank fsyncs and hashes them
        .metadata                    DCP (rank 0); rank 0 fsyncs it
        state.pt                     rank 0, fsynced
        manifest.json                rank 0, last: size, sha256, xxh3-128 of every file above; dir fsync
    <name>/                          one rename of the temp directory, parent fsync  <- commit point
    latest                           written durably (full checkpoints)

Overwriting a committed directory of the same name moves it aside to a hidden temp name first
and removes it after the rename; a crash in between leaves the older checkpoints to resume from.

Loading: rank 0 reads and checks the manifest and broadcasts its sha256 (every rank must read the
same manifest); every rank verifies ``.metadata`` before DCP unpickles it, and each rank hashes
(xxh3-128) the shard files its own load plan reads before reading them (:class:`VerifyingReader`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from linnaeus.dist import (
    all_gather_object,
    broadcast_object,
    get_rank,
    is_dist,
    is_main_process,
    raise_on_all_ranks,
    run_on_all_ranks,
)

from .commit import SaveResult, write_latest
from .errors import (CheckpointCorruptError, CheckpointError, CheckpointIncompatibleError, InvalidOperationError,
                     LatestUpdateError)
from .fsio import fsync_dir, temp_name, write_durably
from .names import dir_lock
from .sharded_manifest import (
    DCP_METADATA,
    MANIFEST,
    SHARDED_FORMAT,
    SHARDED_FORMAT_VERSION,
    STATE_FILE,
    check_file,
    check_present,
    manifest_bytes,
    read_manifest,
    digests_of,
    verify_all,
)
from .state import Stateful, restore_state

if TYPE_CHECKING:
    from .sharded_async import ShardedAsyncSaver

logger = logging.getLogger("linnaeus.checkpoint")

SHARDED_KEY = "sharded"  # in a loaded state: {"path", "manifest"}; the tensors stay on disk until restore
_OPTIM_REST = "optimizer_rest"  # in state.pt: the optimizer state dict without its tensors


# ----------------------------------------------------------------------------- state dicts
def has_dtensors(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded (FSDP2 DTensors): full tensors must not be
    loaded into it with ``load_state_dict``."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def _split(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, rest) of a nested dict: DCP gets only tensors, ``state.pt`` the rest."""
    tensors: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        elif isinstance(v, Mapping):
            t, r = _split(v)
            if t:
                tensors[k] = t
            if r or not t:
                rest[k] = r
        else:
            rest[k] = v
    return tensors, rest


def _merge(into: dict[str, Any], rest: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in rest.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


def _live_state(model: nn.Module, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    if optimizer is None:
        return get_model_state_dict(model), None
    msd, osd = get_state_dict(model, optimizer)
    return msd, osd


@contextmanager
def _single_process_is_intended() -> Iterator[None]:
    # DCP warns on every call without a process group; one process is a supported case here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


# ----------------------------------------------------------------------------- save
def save_sharded(directory: str | Path, name: str, *, model: nn.Module, optimizer: Any,
                 rest: dict[str, Any], manifest_extra: Mapping[str, Any], update_latest: bool,
                 modules: Mapping[str, nn.Module] | None = None,
                 background: "ShardedAsyncSaver | None" = None,
                 on_committed: Callable[[SaveResult], None] | None = None) -> SaveResult | None:
    """Write a sharded checkpoint ``directory/name`` (see the module docstring). A collective.

    ``modules`` are components that are modules (``ema``: timm's ModelEma, sharded like the model
    under fsdp): their state dicts go through DCP under their key, resharded on load like the model.
    ``rest`` is rank 0's part of the anatomy (progress, rng, metrics, config, meta, components);
    ``manifest_extra`` is copied into the manifest (progress, meta, config). Failures raise
    :class:`CheckpointError` on every rank, naming the directory; nothing is left under ``name``.
    With ``background``, the state is staged to CPU memory now and written and committed in the
    background (:mod:`.sharded_async`, same commit order); ``on_committed`` then runs on rank 0
    after the commit, and None is returned.
    """
    start = time.perf_counter()
    directory = Path(directory)
    final = directory / name
    msd, osd = _live_state(model, optimizer)
    tensors: dict[str, Any] = {"model": msd}
    state_rest = dict(rest)
    if osd is not None:
        optim_tensors, optim_rest = _split(osd)
        tensors["optim"] = optim_tensors
        state_rest[_OPTIM_REST] = optim_rest
    for key, module in (modules or {}).items():
        if key in tensors:
            raise InvalidOperationError(f"component {key!r}: the name of a sharded checkpoint's model or optimizer "
                                        "tensors; give the component another name.")
        module_state = get_model_state_dict(module)
        if module_state:
            tensors[key] = module_state
        else:  # nothing for DCP to write: an empty entry keeps "saved" distinct from "absent"
            state_rest[key] = {}

    def make_temp() -> str | None:
        if not is_main_process():
            return None
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / temp_name(name)
        tmp.mkdir()
        return str(tmp)

    tmp = Path(broadcast_object(run_on_all_ranks(make_temp, f"save of {final}", CheckpointError)))
    if background is not None:
        def commit(files: dict[str, dict[str, Any]], frozen_rest: dict[str, Any]) -> tuple[int, str]:
            return _commit(directory, tmp, name, files, frozen_rest, manifest_extra, update_latest)

        background.start(tensors, state_rest, tmp, final, commit, _digest_own_shards,
                         on_committed or (lambda _: None))
        return None
    try:
        error: BaseException | None = None
        try:
            with _single_process_is_intended():
                dcp.save(tensors, storage_writer=FileSystemWriter(tmp, sync_files=False), no_dist=not is_dist())
        except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
            error = CheckpointError(f"save of {final} failed, nothing was committed: DCP: {_first_failure(e)}")
        raise_on_all_ranks(error, f"save of {final}", CheckpointError)
        # Each rank makes durable and hashes the shard files it wrote: the bytes are read in parallel.
        own = run_on_all_ranks(lambda: _digest_own_shards(tmp, get_rank()), f"save of {final}", CheckpointError)
        files: dict[str, dict[str, Any]] = {}
        for part in all_gather_object(own):
            files.update(part)
        committed = run_on_all_ranks(
            lambda: _commit(directory, tmp, name, files, state_rest, manifest_extra, update_latest)
            if is_main_process() else None, f"save of {final}", CheckpointError)
    except BaseException:
        if is_main_process():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    size, digest = broadcast_object(committed)
    return SaveResult(final, digest, size, time.perf_counter() - start)


def _first_failure(e: BaseException) -> str:
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, (exc, _) = sorted(failures.items())[0]
        return f"rank {rank}: {type(exc).__name__}: {exc}"
    return f"{type(e).__name__}: {e}"


def _digest_own_shards(tmp: Path, rank: int) -> dict[str, dict[str, Any]]:
    """This rank's shard files made durable and hashed. DCP writes them without fsync: the fsyncs
    run on a thread beside the hashing, so the disk flushes while the CPU hashes the same pages."""
    paths = sorted(Path(e.path) for e in os.scandir(tmp)
                   if e.is_file() and e.name.startswith(f"__{rank}_") and e.name.endswith(".distcp"))
    with ThreadPoolExecutor(max_workers=1) as pool:
        synced = pool.submit(lambda: [_fsync_file(p) for p in paths])
        out = {p.name: {**digests_of(p), "rank": rank} for p in paths}
        synced.result()
    return out


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _commit(directory: Path, tmp: Path, name: str, files: dict[str, dict[str, Any]], state_rest: dict[str, Any],
            manifest_extra: Mapping[str, Any], update_latest: bool) -> tuple[int, str]:
    """Rank 0, after every rank's shards are durable: state.pt, manifest, rename, latest."""
    final = directory / name
    with open(tmp / STATE_FILE, "xb") as f:
        torch.save(state_rest, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_file(tmp / DCP_METADATA)  # DCP wrote it without fsync (see _digest_own_shards)
    for extra in (DCP_METADATA, STATE_FILE):
        files[extra] = digests_of(tmp / extra)
    unexpected = sorted(e.name for e in os.scandir(tmp) if e.name not in files)
    if unexpected:
        raise CheckpointError(f"save of {final}: unexpected files in the temp directory {tmp}: {unexpected}")
    manifest = {"format": SHARDED_FORMAT, "format_version": SHARDED_FORMAT_VERSION, "files": files,
                **dict(manifest_extra)}
    payload = manifest_bytes(manifest)
    write_durably(tmp / MANIFEST, payload)  # fsyncs the file and the temp directory
    with dir_lock(directory):
        old = None
        if final.exists():
            old = directory / temp_name(name)
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if update_latest:
            try:
                write_latest(directory, name)
            except OSError as e:
                raise LatestUpdateError(final, e) from e
    return sum(f["size"] for f in files.values()) + len(payload), hashlib.sha256(payload).hexdigest()


# ----------------------------------------------------------------------------- load
class _DamagedFile(RuntimeError):
    """A :class:`CheckpointCorruptError` as DCP can carry it between ranks (it pickles failures,
    and an exception pickles by its ``args``): (path, reason, expected sha256, actual sha256)."""

    @classmethod
    def of(cls, e: CheckpointCorruptError) -> "_DamagedFile":
        return cls(str(e.path), e.reason, e.expected_sha256, e.actual_sha256)

    def error(self, note: str) -> CheckpointCorruptError:
        path, reason, expected, actual = self.args
        return CheckpointCorruptError(path, f"{reason} ({note})", expected_sha256=expected, actual_sha256=actual)


def _dcp_metadata_globals() -> frozenset[tuple[str, str]]:
    import torch.distributed.checkpoint.filesystem as dcp_fs
    import torch.distributed.checkpoint.metadata as dcp_metadata

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
    """DCP's file reader that uses no byte it has not checked against the manifest: ``.metadata``
    before it is unpickled, and every file this rank's load plan reads, before reading it."""

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
                raise _DamagedFile.of(e) from None
            self.verified.add(name)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("rank") is not None:  # DCP's fallback to per-rank metadata: not part of this format
            raise _DamagedFile(str(self.root / DCP_METADATA), "rank-local DCP metadata is not part of this format",
                               None, None)
        self._verify(DCP_METADATA)
        # Not DCP's own pickle.load: a checkpoint from elsewhere brings its own manifest, so a
        # matching sha256 says nothing about who wrote the pickle.
        with open(self.root / DCP_METADATA, "rb") as f:
            try:
                metadata = _MetadataUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as e:
                raise _DamagedFile(str(self.root / DCP_METADATA), f"not DCP checkpoint metadata: {e}", None,
                                   None) from None
        if not isinstance(metadata, Metadata):
            raise _DamagedFile(str(self.root / DCP_METADATA),
                               f"not DCP checkpoint metadata: holds a {type(metadata).__name__}", None, None)
        if getattr(metadata, "storage_meta", None) is None:  # as DCP's reader does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        for name in sorted({self.storage_data[item.storage_index].relative_path for item in plan.items}):
            self._verify(name)
        return super().read_data(plan, planner)


def read_checked_metadata(reader: VerifyingReader) -> Any:
    """DCP's metadata of ``reader``'s directory, unpickled only after its sha256 matched."""
    try:
        return reader.read_metadata()
    except _DamagedFile as e:
        raise e.error("before DCP read it") from None


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


def load_sharded_verified(path: str | Path) -> tuple[dict[str, Any], str]:
    """:func:`load_sharded_state` after hashing every file (rank 0's check before choosing a
    checkpoint to resume from, so that a damaged shard sends every rank to an older one)."""
    manifest, _ = read_manifest(path)
    verify_all(Path(path), manifest)
    return load_sharded_state(path)


def is_sharded_state(state: Mapping[str, Any]) -> bool:
    return isinstance(state.get(SHARDED_KEY), Mapping)


def restore_sharded(state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                    *, rng: bool, source: str) -> dict[str, int]:
    """Load a sharded checkpoint's tensors into ``model``, ``components["optimizer"]`` and the
    components that are modules (``ema``) through DCP (resharded to this world size), then
    everything else as :func:`restore_state` does. A component the checkpoint lacks is refused
    there, as for a single file. A collective: every rank calls it; a damaged file fails it on
    every rank, naming the file."""
    info = state[SHARDED_KEY]
    path, manifest = Path(info["path"]), info["manifest"]
    optimizer = components.get("optimizer")
    others = {k: v for k, v in components.items() if k != "optimizer"}
    modules = {k: v for k, v in others.items() if isinstance(v, nn.Module)}
    if optimizer is not None and _OPTIM_REST not in state:
        raise CheckpointIncompatibleError(f"{source} has no optimizer state; resume from a full checkpoint.",
                                          path=path)
    if model is not None or modules:
        reader = VerifyingReader(path, manifest)
        run_on_all_ranks(lambda: check_file(path, manifest, DCP_METADATA), f"loading {path}", CheckpointError)
        metadata = run_on_all_ranks(lambda: read_checked_metadata(reader), f"loading {path}", CheckpointError)
        saved = {k.split(".", 1)[0] for k in metadata.state_dict_metadata}
        tensors: dict[str, Any] = {}
        msd = osd = None
        if model is not None:
            msd, osd = _live_state(model, optimizer)
            tensors["model"] = msd
            if osd is not None:
                tensors["optim"] = _split(osd)[0]
        # A module component the checkpoint holds no tensors for is left to restore_state below.
        tensors.update({k: get_model_state_dict(m) for k, m in modules.items() if k in saved})
        for key in [k for k in tensors if k != "optim"]:
            run_on_all_ranks(lambda: _check_compatible(metadata, tensors[key], source, path, key=key),
                             f"loading {path}", CheckpointError)
        try:
            with _single_process_is_intended():
                dcp.load(tensors, storage_reader=reader, no_dist=not is_dist())
        except (Exception, CheckpointException) as e:
            raise _load_error(e, path) from None
        if model is not None:
            set_model_state_dict(model, msd)
        if optimizer is not None and osd is not None:
            saved_rest = state[_OPTIM_REST]
            full = _merge({"state": tensors["optim"].get("state", {})}, saved_rest)
            set_optimizer_state_dict(model, optimizer, full)
        for key in [k for k in modules if k in tensors]:
            set_model_state_dict(others.pop(key), tensors[key])
    return restore_state(state, None, _restore_full_modules(state, others, source), rng=rng, source=source)


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


def _restore_full_modules(state: Mapping[str, Any], components: Mapping[str, Stateful | None],
                          source: str) -> dict[str, Stateful | None]:
    """Module components with FSDP2-sharded parameters (an EMA under fsdp) given the full state
    dict a single file holds: each rank keeps its shard (``load_state_dict`` would copy full
    tensors into DTensors). Returns the other components, for :func:`restore_state`, which also
    refuses any component the checkpoint lacks."""
    from .state import check_model_compatible

    rest = {}
    for key, obj in components.items():
        if isinstance(obj, nn.Module) and has_dtensors(obj) and isinstance(state.get(key), Mapping):
            check_model_compatible(obj, state[key], source=f"{source} ({key!r})")
            # A copy: set_model_state_dict replaces the dict's tensors by this rank's shards.
            set_model_state_dict(obj, dict(state[key]), options=StateDictOptions(full_state_dict=True))
        else:
            rest[key] = obj
    return rest


def _load_error(e: BaseException, path: Path) -> CheckpointError:
    """DCP's error (it gathers every rank's failure) as ours, naming the damaged file if one is."""
    failures = getattr(e, "failures", None) or {}
    for rank, (exc, _) in sorted(failures.items()):
        if isinstance(exc, _DamagedFile):
            return exc.error(f"found by rank {rank} while loading {path}")
    if isinstance(e, _DamagedFile):
        return e.error(f"found while loading {path}")
    return CheckpointError(f"loading {path} failed: {_first_failure(e)}")


# ----------------------------------------------------------------------------- file -> sharded model
def restore_file_into_sharded(state: Mapping[str, Any], model: nn.Module, components: Mapping[str, Stateful | None],
                              *, rng: bool, source: str) -> dict[str, int]:
    """A single-file checkpoint (every rank holds the full state) into an FSDP2-sharded model:
    each rank keeps its shard of the full tensors; the optimizer's index-keyed state is keyed by
    parameter name first (the live optimizer's param groups give the order)."""
    from .state import check_model_compatible, model_state_dict

    full_model = model_state_dict(state["model"])
    check_model_compatible(model, full_model, source=source)
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, full_model, options=opts)
    optimizer = components.get("optimizer")
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointIncompatibleError(f"{source} has no 'optimizer' state; resume from a full checkpoint.")
        set_optimizer_state_dict(model, optimizer, _by_name(state["optimizer"], model, optimizer, source),
                                 options=opts)
    others = {k: v for k, v in components.items() if k != "optimizer"}
    return restore_state(state, None, _restore_full_modules(state, others, source), rng=rng, source=source)


def _by_name(saved: Mapping[str, Any], model: nn.Module, optimizer: Any, source: str) -> dict[str, Any]:
    names = {id(p): n for n, p in model.named_parameters()}
    groups = saved.get("param_groups", [])
    live = optimizer.param_groups
    if len(groups) != len(live) or any(len(g["params"]) != len(lg["params"]) for g, lg in zip(groups, live)):
        raise CheckpointIncompatibleError(
            f"optimizer state in {source} has param groups of sizes {[len(g['params']) for g in groups]}, the "
            f"optimizer being restored {[len(g['params']) for g in live]}.")
    index_to_name = {}
    for g, lg in zip(groups, live):
        for idx, p in zip(g["params"], lg["params"]):
            index_to_name[idx] = names[id(p)]
    return {"state": {index_to_name[i]: v for i, v in saved.get("state", {}).items()},
            "param_groups": [{**g, "params": [index_to_name[i] for i in g["params"]]} for g in groups]}


def consolidate_model(path: str | Path, key: str = "model") -> tuple[dict[str, Any], dict[str, Any]]:
    """(the whole model's state dict, the rest of the anatomy) of a sharded checkpoint, in this one
    process, whatever world size saved it; every file is verified first. For export. ``key="ema"``
    consolidates the EMA's state dict instead (``{}`` when the checkpoint has none)."""
    # What DCP's own dcp_to_torch_save uses: dcp.load() would fill a copy of an empty dict.
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    manifest, _ = read_manifest(path)
    verify_all(path, manifest)
    state, _ = load_sharded_state(path)
    reader = VerifyingReader(path, manifest)
    read_checked_metadata(reader)  # a refused .metadata is named here, not inside DCP's generic failure
    loaded: dict[str, Any] = {}
    try:
        _load_state_dict(loaded, storage_reader=reader,
                         planner=_EmptyStateDictLoadPlanner(keys={key}), no_dist=True)
    except (Exception, CheckpointException) as e:
        raise _load_error(e, path) from None
    state.pop(SHARDED_KEY, None)
    return dict(loaded.get(key, {})), state


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """The whole model's state dict on rank 0 (CPU), empty elsewhere: what a single-file save of an
    FSDP2 model writes. A collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["SHARDED_KEY", "VerifyingReader", "consolidate_model", "full_model_state", "has_dtensors", "is_sharded_state",
           "load_sharded_state", "load_sharded_verified", "restore_file_into_sharded", "restore_sharded",
           "save_sharded"]


# ----------------------------------------------------------------------------- the file API's entry points
def load_directory(path: Path) -> tuple[dict[str, Any], str]:
    """``load_verified_digest`` for a directory: rank 0 hashes every file (its choice of a checkpoint
    must not land on a damaged one), the other ranks what they can check without a load plan (the
    manifest's sha256 is compared with rank 0's by the caller); the shard files each rank reads are
    hashed again by :class:`VerifyingReader` at restore."""
    return load_sharded_verified(path) if is_main_process() else load_sharded_state(path)


def verify_directory(path: Path) -> "VerifyResult":
    """``verify_checkpoint`` for a sharded checkpoint directory: manifest, then every file's size, xxh3-128 and sha256."""
    from .verify import VerifyResult

    try:
        manifest, digest = read_manifest(path)
        verify_all(path, manifest, thorough=True)
        state, _ = load_sharded_state(path)
    except CheckpointIncompatibleError as e:
        return VerifyResult(path, False, str(e), incompatible=True)
    except CheckpointCorruptError as e:
        return VerifyResult(path, False, e.reason, e.expected_sha256, e.actual_sha256)
    except CheckpointError as e:
        return VerifyResult(path, False, str(e))
    problems = [k for k in ("progress", "meta", "rng") if k not in state]
    if problems:
        return VerifyResult(path, False, f"{STATE_FILE} lacks {problems}", digest, digest)
    return VerifyResult(path, True, "", digest, digest, str(state["meta"].get("kind", "full")))


def restore_any(state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                *, rng: bool, source: str) -> dict[str, int]:
    """:func:`restore_state` for every pairing of checkpoint and model: a sharded checkpoint into
    any model (DCP reshards), a single file into an FSDP2-sharded model (each rank keeps its
    shard), a single file into a plain model (as always)."""
    if is_sharded_state(state):
        return restore_sharded(state, model, components, rng=rng, source=source)
    if model is not None and has_dtensors(model):
        return restore_file_into_sharded(state, model, components, rng=rng, source=source)
    return restore_state(state, model, components, rng=rng, source=source)
