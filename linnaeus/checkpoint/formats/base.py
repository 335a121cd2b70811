"""The checkpoint format protocol: everything the library does with one checkpoint, as methods.

A checkpoint is one entry of a checkpoint directory: a single file with its ``.sha256`` sidecar
(:mod:`.file`) or a sharded DCP directory with its ``manifest.json`` (:mod:`.sharded`). The
store, the manager, the remote folder, resume and the CLI never ask "file or directory?": they
ask :func:`~.registry.format_of` for the entry's format and call it. A new format (a node-local
tier, say) implements :class:`CheckpointFormat`, registers itself and passes the conformance suite
(tests/checkpoint/formats/test_conformance.py); nothing else changes.

Every entry has a *marker*, the last thing its commit writes (the sidecar, the manifest): an
entry whose marker is missing never committed, locally or in a bucket.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Protocol

from torch import nn

from ..disk import Overlap
from ..ordering import progress_from_name
from ..sources import DownloadOptions
from ..state import FORMAT_VERSION, Stateful
from .folder import RemoteFolder


@dataclass
class CheckpointInfo:
    """What retention, resume and ``linnaeus-ckpt ls`` need to know about one checkpoint, read
    without its tensors."""

    path: Path
    size: int
    committed: bool  # its marker (sidecar, manifest) is there
    kind: str = "unknown"  # full | weights | foreign | unknown
    saver: str = ""
    epoch: int = -1
    step: int = -1
    epoch_step: int = 0
    created: str = ""
    run_id: str = ""  # lineage (store/lineage.py): the run, and the digest of the checkpoint it resumed from
    parent_sha256: str | None = None  # "" = a fresh start; None = not recorded (an older linnaeus)
    origin_sha256: str = ""  # the checkpoint its timeline was started from by an explicit resume ("" = none known)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # why it could not be read
    format_version: int | None = None  # meta.format_version, when it is an int
    unreadable: bool = False  # the error is this process's access (permissions, I/O), no verdict on the bytes

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def too_new(self) -> bool:
        """Written by a newer linnaeus: intact but unreadable here, so never skipped or deleted."""
        return self.format_version is not None and self.format_version > FORMAT_VERSION

    @property
    def readable(self) -> bool:
        return self.error is None

    @property
    def order_key(self) -> tuple[int, int, int, str]:
        """Newer sorts later: by training progress stored in the checkpoint, never by mtime."""
        return (self.step, self.epoch, self.epoch_step, self.created)

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else value


def fill_progress(info: CheckpointInfo, meta: Mapping[str, Any], progress: Mapping[str, Any]) -> None:
    """Copy a checkpoint's progress, lineage and metrics into ``info`` (every format stores the same
    ``meta``/``progress``). Raises TypeError/ValueError when they are malformed."""
    info.saver = str(meta.get("saver", ""))
    info.epoch = int(progress.get("epoch", meta.get("epoch", -1)))
    info.step = int(progress.get("step", meta.get("step", -1)))
    info.epoch_step = int(progress.get("epoch_step", 0))
    info.created = str(meta.get("created", ""))
    info.run_id = str(meta.get("run_id", ""))
    info.parent_sha256 = meta["parent_sha256"] if isinstance(meta.get("parent_sha256"), str) else None
    info.origin_sha256 = str(meta.get("origin_sha256") or "")
    info.metrics = {str(k): float(v) for k, v in dict(meta.get("metrics", {})).items()}


@dataclass(frozen=True)
class SaveResult:
    path: Path
    sha256: str  # the checkpoint's identity digest (the file's; a directory's manifest's)
    size: int
    seconds: float


@dataclass(frozen=True)
class VerifyResult:
    path: Path
    ok: bool
    reason: str = ""
    expected_sha256: str | None = None
    actual_sha256: str | None = None
    kind: str = "unknown"
    # Intact, but written in a newer format than this linnaeus reads (reason says so): not
    # corrupt, so resume must stop at it rather than fall back to an older checkpoint.
    incompatible: bool = False
    # This process could not read it (permissions, an I/O error): no verdict on its bytes.
    unreadable: bool = False

    def __bool__(self) -> bool:
        return self.ok


def unreadable_reason(e: OSError) -> str:
    """Why a checkpoint could not be checked when this process may not read it: no verdict on its bytes."""
    return (f"cannot read it: {type(e).__name__}: {e}; an access problem, not damage (do not delete it): make it "
            "readable by this process")


@dataclass(frozen=True)
class Leftover:
    """What an interrupted save, overwrite or delete left in a checkpoint directory."""

    path: Path
    what: str  # in words, for `linnaeus-ckpt verify`
    writer: str | None  # the identity of the process that made it (disk.writer_id); None: nobody's
    # Settles it (finishes an interrupted overwrite or removes the leftover); True if it finished
    # something. Called holding the directory's locks, once its writer is known to be gone.
    settle: Callable[[], bool]
    # Its writer touches it only while holding the in-process directory lock, which cleanup holds:
    # one written by this very process is then a leftover too, not a save in progress.
    only_under_lock: bool = False


@dataclass(frozen=True)
class Part:
    """One file of a committed checkpoint, as a transfer moves and checks it."""

    local: Path
    remote: str  # its path relative to the checkpoint directory / the run's bucket folder
    size: int
    sha256: str | None  # None where the marker does not record it


@dataclass(frozen=True)
class CommitFiles:
    """A committed checkpoint's files in commit order: the payload, then the marker, whose presence
    commits the entry (a remote copy without it never counts)."""

    entry: str
    parts: tuple[Part, ...]
    marker: Part
    identity: str  # equal for two copies of the same checkpoint (the file's sha256; the manifest's)
    # Called with the folder once ``parts`` are checked there, before the marker goes up: what else must be
    # there first (a node-local sharded checkpoint's other nodes' parts, which those nodes upload). Raises
    # TransientSourceError while it is not.
    before_marker: Callable[[RemoteFolder], None] | None = None

    @property
    def in_order(self) -> tuple[Part, ...]:
        return (*self.parts, self.marker)


@dataclass(frozen=True)
class RemoteParts:
    """A committed entry of a bucket folder, relative to it: its marker, and the rest of it (objects,
    or folders ending in ``/`` taken whole, the marker then left out of their copy)."""

    marker: str
    payload: tuple[str, ...]


@dataclass(frozen=True)
class RemoteEntry:
    """A checkpoint committed in a bucket folder, as a listing sees it (no data downloaded)."""

    name: str
    modtime: str
    progress: dict[str, int] | None  # from its marker; None when the marker records none
    format: str

    @property
    def order_key(self) -> tuple[Any, ...]:
        # Stored progress as locally (step, epoch, position in the epoch); entries whose marker
        # records none (uploaded by hand or by an older linnaeus) rank below, by their names.
        if self.progress is not None:
            p = self.progress
            return (1, p["step"], p.get("epoch", -1), p.get("epoch_step", 0))
        return (0, *progress_from_name(self.name, self.modtime))


class Background(Protocol):
    """A manager's saves in flight (one at a time): what its poll, wait and close call."""

    def wait_idle(self) -> None: ...

    def take_error(self) -> BaseException | None: ...

    def release_buffers(self) -> None: ...


OnCommitted = Callable[[SaveResult], None]


class CheckpointFormat(abc.ABC):
    """How one kind of checkpoint is recognised, read, checked, restored, written, removed and
    transferred. Instances are stateless: the registry holds one of each."""

    name: ClassVar[str]

    # ----------------------------------------------------------------- recognising
    @abc.abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether the existing entry ``path`` is a checkpoint of this format (committed or not)."""

    @abc.abstractmethod
    def owns_state(self, state: Mapping[str, Any]) -> bool:
        """Whether ``state`` was loaded by this format's :meth:`load`."""

    @abc.abstractmethod
    def entry_name(self, filename: str) -> str:
        """The entry a save rendered as ``filename`` (``checkpoint_epoch_3.pth``) commits under."""

    # ----------------------------------------------------------------- reading
    @abc.abstractmethod
    def read_info(self, path: Path) -> CheckpointInfo:
        """Progress, lineage and metrics without reading tensor data."""

    @abc.abstractmethod
    def verify(self, path: Path, *, require_marker: bool = True) -> VerifyResult:
        """Every byte against the marker (by every digest it records), then the structure. Never
        raises for damage. ``require_marker=False`` checks a copied file that has none."""

    @abc.abstractmethod
    def load(self, path: Path, *, map_location: Any = "cpu", require_marker: bool = True,
             hash_always: bool = False) -> tuple[dict[str, Any], str | None]:
        """(state, identity digest of the bytes loaded), verified, with ``weights_only=True``. A
        sharded state keeps its tensors on disk until :meth:`restore`."""

    @abc.abstractmethod
    def restore(self, state: Mapping[str, Any], model: nn.Module | None, components: Mapping[str, Stateful | None],
                *, rng: bool, source: str) -> dict[str, int]:
        """Load ``state`` into the live objects at this world size (any saved one); its progress. A
        collective where the format's tensors are loaded by every rank."""

    @abc.abstractmethod
    def read_weights(self, path: Path, *, use_ema: bool) -> Mapping[str, Any]:
        """The checkpoint's entries with the model (and, if asked and saved, the EMA) whole in this
        process, for export and pretrained loads; every byte verified first."""

    @abc.abstractmethod
    def describe(self, path: Path) -> dict[str, Any]:
        """What ``linnaeus-ckpt inspect`` shows: entries, the model's tensors (count, parameters,
        dtypes, first names), meta, progress, metrics, components; no tensor data read."""

    @abc.abstractmethod
    def identity(self, path: Path) -> str:
        """The digest that names this checkpoint in a child's lineage (``parent_sha256``)."""

    # ----------------------------------------------------------------- writing
    def check_policy(self, *, weights_only: bool, saver: str) -> None:
        """Raise InvalidOperationError when this format cannot write what the saver's policy asks."""

    @abc.abstractmethod
    def background(self, name: str, *, process: bool = False) -> Background:
        """A manager's machinery for saves in the background (threads, kept buffers; with ``process``,
        a writer process)."""

    @abc.abstractmethod
    def save(self, directory: Path, name: str, contents: Mapping[str, Any], *, update_latest: bool,
             background: Background | None, on_committed: OnCommitted,
             overlap: Overlap | None = None, copies: int = 0) -> SaveResult | None:
        """Commit ``contents`` (the anatomy; live modules, optimizers and Stateful objects or their
        state dicts) as ``directory/name`` and move ``latest`` if asked. A collective: every rank
        calls it with the same name. ``on_committed`` runs on rank 0 right after the commit.
        Synchronous: returns on every rank once committed, raising the failure of any rank on
        every rank. With ``background``: returns None once the state is staged; the outcome is
        the background's error (raised by the manager's next poll). With ``overlap`` too, the
        staging of its deferred storages may go on after the return, with ``overlap.gate`` closed
        until it is done (a format that does not overlap stages everything before returning). ``copies``:
        on node-local directories, how many other nodes get a copy of each node's part (a format that
        writes on one node only leaves copies to :mod:`linnaeus.checkpoint.replicas`)."""

    @abc.abstractmethod
    def delete(self, path: Path) -> None:
        """Remove a checkpoint so that no reader ever sees a half of it under its name (the caller
        holds the directory's locks)."""

    @abc.abstractmethod
    def move(self, path: Path, folder: Path) -> None:
        """Move the checkpoint ``path`` into ``folder`` on the same filesystem, committed at every
        instant (the caller holds the directory's in-process lock)."""

    @abc.abstractmethod
    def adopt(self, path: Path, *, check: bool = True) -> str:
        """Commit a checkpoint that came without its marker, after checking that it is a linnaeus
        checkpoint (``check=False``: anyone's weights file, for a model zoo); why it was refused,
        or "" once adopted."""

    @abc.abstractmethod
    def leftovers(self, directory: Path) -> list[Leftover]:
        """What interrupted saves, overwrites and deletes of this format left in ``directory``."""

    # ----------------------------------------------------------------- transferring
    @abc.abstractmethod
    def commit_files(self, path: Path) -> CommitFiles:
        """The files of the committed checkpoint ``path`` in commit order, marker last (what an
        upload sends, in that order); raises CheckpointError when it is not committed."""

    @abc.abstractmethod
    def marker_identity(self, entry: str, marker: bytes) -> str | None:
        """The identity a marker's bytes record for ``entry`` (None: not a marker of it)."""

    @abc.abstractmethod
    def remote_entries(self, folder: RemoteFolder, name_filter: Callable[[str], bool]) -> list[RemoteEntry]:
        """This format's checkpoints committed in ``folder`` (their markers listed), one listing call."""

    @abc.abstractmethod
    def fetch(self, folder: RemoteFolder, entry: str, directory: Path, options: DownloadOptions) -> Path:
        """Download ``entry`` into ``directory`` verified and committed as a local save is; one
        process per machine transfers. Raises CheckpointNotFoundError when ``folder`` lacks it."""

    @abc.abstractmethod
    def remote_parts(self, entry: str) -> RemoteParts:
        """Where the committed ``entry`` lies in a bucket folder: its marker and its payload (what a
        move aside copies, checks and deletes, :mod:`linnaeus.checkpoint.remote.move`)."""


__all__ = ["Background", "CheckpointFormat", "CheckpointInfo", "CommitFiles", "Leftover", "OnCommitted", "Part",
           "RemoteEntry", "RemoteParts", "SaveResult", "VerifyResult", "fill_progress", "unreadable_reason"]
