"""A checkpoint being assembled (fairseq2-style begin/commit): filled like a dict, committed atomically.

The transaction knows nothing of who writes it: whoever opens it (the manager's ``begin``) hands
it a ``commit`` callback, which writes it in the saver's format, and a ``release`` callback,
called once it is committed or aborted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from linnaeus.dist import any_rank_true

from .errors import CheckpointError, InvalidOperationError
from .state import CORE_META_KEYS


class CheckpointTransaction:
    """A checkpoint being assembled: fill it like a dict (``ckpt["model"] = model``, or its
    ``state_dict()``; any component object or its state dict); commit() writes it atomically.

    As a context manager it commits on a clean exit and discards on an exception. In DDP all ranks
    must enter and leave it; if any rank raises inside, all discard it.
    """

    def __init__(self, path: Path, *, filename: str, progress: dict[str, int], metrics: dict[str, float],
                 commit: Callable[["CheckpointTransaction"], None], release: Callable[[], None]) -> None:
        self.path = path
        self.filename = filename  # the name the template rendered; ``path`` is what the format commits
        self.progress = progress
        self.metrics = metrics
        self.state: dict[str, Any] = {}
        self.meta_extra: dict[str, Any] = {}
        self.committed = False
        self._commit, self._release = commit, release
        self._done = False

    @property
    def name(self) -> str:
        return self.path.name

    def __setitem__(self, key: str, value: Any) -> None:
        self.state[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.state[key]

    def __contains__(self, key: object) -> bool:
        return key in self.state

    def update(self, items: Mapping[str, Any]) -> None:
        self.state.update(items)

    def problem(self) -> InvalidOperationError | None:
        """What makes this transaction uncommittable on this rank, or None."""
        if "model" not in self.state:
            return InvalidOperationError(
                f"checkpoint {self.path} has no 'model' entry; set ckpt['model'] = model (or its state_dict())."
            )
        clashing = sorted(CORE_META_KEYS.intersection(self.meta_extra))
        if clashing:
            return InvalidOperationError(
                f"meta_extra of checkpoint {self.path} sets {clashing}, which linnaeus writes itself "
                f"(core meta keys: {sorted(CORE_META_KEYS)}); a wrong value would make the file unreadable "
                f"or let another saver delete it. Store your values under other names, e.g. {'my_' + clashing[0]!r}."
            )
        return None

    def commit(self) -> Path:
        if self._done:
            raise InvalidOperationError(
                f"transaction for {self.path} is already {'committed' if self.committed else 'aborted'}; "
                "open a new one with manager.begin(...) to save again."
            )
        self._done = True
        try:
            self._commit(self)
            self.committed = True
        finally:
            self._release()
        return self.path

    def abort(self) -> None:
        self._done = True
        self._release()

    def __enter__(self) -> "CheckpointTransaction":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._done:
            return False
        failed_here = exc_type is not None
        # A collective, so that ranks never disagree on whether this save happened.
        if any_rank_true(failed_here):
            self.abort()
            if not failed_here:
                raise CheckpointError(
                    f"save of {self.path} aborted, nothing was committed: another rank raised inside the "
                    "transaction. Its error is in that rank's output."
                )
            return False
        self.commit()
        return False


__all__ = ["CheckpointTransaction"]
