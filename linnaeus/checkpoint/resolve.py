"""Identifier → local, complete, verified checkpoint file.

Resolution order (first match wins; see docs/resolve.md):

1. **Absolute path** (``~`` expanded): used if it is a file, else CheckpointNotFoundError.
2. **URI** (``http(s)://``, ``s3://``, ``gs://``, ``az://``, ``b2://``, ``file://``, any scheme
   added with ``register_source``, or an rclone path ``remote:path``): downloaded once into
   ``CACHE_DIR/uri/<16 hex of sha256(identifier)>/<file name>``. Keyed by the whole URI so two
   URIs ending in the same file name never share a cache entry.
3. **Relative path with a directory** (``runs/x/ckpt.pth``, ``./ckpt.pth``): used if it
   exists relative to the current directory; otherwise looked up like a bare name, keeping
   its directories (``CACHE_DIR/runs/x/ckpt.pth``, then the bucket under the prefix).
4. **Bare file name**: ``CACHE_DIR/<name>`` — one ``stat``, no directory scan. With
   ``recursive_lookup`` an index of the cache's subfolders is consulted next.
5. **Bucket** (if enabled): ``REMOTE:NAME/PATH_PREFIX<name>`` downloaded into ``CACHE_DIR/<name>``.
6. Otherwise CheckpointNotFoundError listing every place looked.

Names are never globbed: ``model[1].pth`` means exactly that file, locally and remotely.
A bare name containing ``:`` (``a:b.pth``) is an rclone path, as rclone itself reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from filelock import FileLock

from .disk import write_durably
from .errors import CheckpointError, CheckpointNotFoundError
from .formats import format_of
from .sources import (
    B2_DEFAULT_REMOTE,
    DownloadOptions,
    RcloneSource,
    b2_env,
    check_bucket,
    check_file_name,
    check_identifier,
    check_path_parts,
    download,
    get_source,
    is_uri,
    missing_b2_credentials,
    redact,
)

logger = logging.getLogger(__name__)

INDEX_FILE = ".linnaeus-index.json"
_IGNORED_SUFFIXES = (".partial", ".lock", ".sha256", ".tmp")


@dataclass(frozen=True)
class BucketConfig:
    """Where bare names are looked up: object = ``REMOTE:NAME/PATH_PREFIX<name>``.

    ``PATH_PREFIX`` is prepended as written (the DESIGN contract): ``ckpts/`` is a folder,
    ``ckpts/v2_`` a name prefix, and ``ckpts`` (no slash) glues onto the name.
    """

    enabled: bool = False
    remote: str = ""
    name: str = ""
    path_prefix: str = ""

    @classmethod
    def from_any(cls, cfg: "BucketConfig | Mapping[str, Any] | None") -> "BucketConfig":
        """From a yacs node / dict with ENABLED, REMOTE, NAME, PATH_PREFIX (any case), or None."""
        if cfg is None:
            return cls()
        if isinstance(cfg, BucketConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise TypeError(f"bucket config must be a mapping/yacs node or BucketConfig, got {type(cfg).__name__}.")
        lower = {str(k).lower(): v for k, v in cfg.items()}
        # The uploader's settings, which share the run's output bucket node (ENV.OUTPUT.BUCKET).
        unknown = set(lower) - {"enabled", "remote", "name", "path_prefix", "on_failure", "upload_retries",
                                "retry_after_s", "interval"}
        if unknown:
            raise ValueError(f"bucket config: unknown keys {sorted(unknown)}; expected ENABLED, REMOTE, NAME, PATH_PREFIX.")
        return cls(
            enabled=bool(lower.get("enabled", False)),
            remote=str(lower.get("remote", "") or ""),
            name=str(lower.get("name", "") or ""),
            path_prefix=str(lower.get("path_prefix", "") or ""),
        )

    @property
    def is_b2_default(self) -> bool:
        """An empty REMOTE means Backblaze B2 from B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY (DESIGN)."""
        return not self.remote.strip().rstrip(":")

    def folder(self) -> str:
        """``REMOTE:NAME/PATH_PREFIX``: what every object name is appended to (``:b2:NAME/PATH_PREFIX``
        when REMOTE is empty)."""
        check_bucket(self.remote, self.name, self.path_prefix)
        name = self.name.strip("/")
        if self.is_b2_default:
            missing = missing_b2_credentials()
            if missing:
                raise CheckpointError(
                    "the bucket is enabled but its remote is empty and the Backblaze B2 credentials it then uses "
                    f"are not set ({' and '.join(missing)} missing): export B2_APPLICATION_KEY_ID and "
                    "B2_APPLICATION_KEY, or give the name of an rclone remote (configured in rclone.conf or by "
                    "RCLONE_CONFIG_<NAME>_* variables), e.g. 'mys3'."
                )
            if not name:
                raise CheckpointError("the bucket is Backblaze B2 (its remote is empty) but its name is empty: "
                                      "give the B2 bucket's name, e.g. 'linnaeus-checkpoints'.")
            return f"{B2_DEFAULT_REMOTE}{name}/" + self.path_prefix.lstrip("/")
        return f"{self.remote.strip().rstrip(':')}:" + (name + "/" if name else "") + self.path_prefix.lstrip("/")

    def rclone_env(self) -> dict[str, str]:
        """``RCLONE_*`` defaults every rclone child needs for this bucket: the B2 credentials mapped
        for the on-the-fly ``:b2:`` remote, nothing for a named remote (its config has them)."""
        return b2_env() if self.is_b2_default else {}

    def object_path(self, rel: str) -> str:
        return self.folder() + rel.lstrip("/")

    def source(self, rel: str) -> RcloneSource:
        return RcloneSource(self.object_path(rel), env=self.rclone_env())


def _safe_relative(identifier: str) -> PurePosixPath | None:
    """The identifier as a relative path usable under CACHE_DIR / the bucket, or None if it
    would climb out (``..``)."""
    rel = PurePosixPath(identifier)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        return None
    return rel


def uri_cache_path(identifier: str, cache_dir: Path, file_name: str) -> Path:
    key = hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:16]
    return cache_dir / "uri" / key / file_name


def resolve(
    identifier: str,
    *,
    cache_dir: str | os.PathLike,
    bucket: BucketConfig | Mapping[str, Any] | None = None,
    retries: int = 3,
    progress: bool | None = None,
    recursive_lookup: bool = False,
    local_rank: int | None = None,
    lock_timeout_s: float = -1,
) -> Path:
    """Resolve ``identifier`` to a local file (see the module docstring for the order).

    Args:
        cache_dir: the flat local cache (``ENV.INPUT.CACHE_DIR``); created when a download lands.
        bucket: ``ENV.INPUT.BUCKET`` (yacs node / dict / :class:`BucketConfig`).
        retries: download attempts before giving up on transient failures.
        progress: force the tqdm bar on/off; None shows it on local rank 0 for large files.
        recursive_lookup: consult an index of CACHE_DIR's subfolders for bare names.
        local_rank: overrides ``$LOCAL_RANK`` for the progress-bar decision.
        lock_timeout_s: how long to wait for another process's download of the same file (-1: forever).

    Raises:
        CheckpointNotFoundError: nothing found; the message lists every place looked.
        CheckpointCorruptError: the downloaded bytes never matched the expected hash.
        CheckpointError: access denied, remote not configured, or retries exhausted.
        UnsafeIdentifierError: (a CheckpointError) the identifier or a bucket field is refused before
            use: a leading '-', control characters, a command-running connection option... (see
            :mod:`linnaeus.checkpoint.sources.identifiers`).
    """
    ident = str(identifier).strip()
    if not ident:
        raise CheckpointNotFoundError("empty checkpoint identifier: give a file name, a path or a URI.")
    check_identifier(ident)  # before anything reads it as a path, a remote or an option
    cache = Path(os.path.expanduser(os.fspath(cache_dir))).absolute()
    bucket_cfg = BucketConfig.from_any(bucket)
    options = DownloadOptions(retries=retries, progress=progress, local_rank=local_rank, lock_timeout_s=lock_timeout_s)

    expanded = os.path.expanduser(ident)
    if os.path.isabs(expanded):
        if format_of(expanded) is not None:  # a checkpoint in any format (a file, a sharded directory)
            return Path(expanded)
        what = "is a directory, not a file" if os.path.isdir(expanded) else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint path {expanded} {what}. Give the path of a checkpoint file.")

    if is_uri(ident):
        try:
            source = get_source(ident)
        except ValueError as e:
            raise CheckpointNotFoundError(f"cannot use {redact(ident)!r}: {e}") from None
        # The cache entry is named after the object's last part: it must be a file name (a URL
        # ending in ".." or "%2E%2E" would make the entry the cache folder itself).
        name = check_file_name(source.name, redact(ident))
        return download(source, uri_cache_path(ident, cache, name), options)

    check_path_parts(ident, "checkpoint identifier")  # a local or bucket path: each part is a file name
    looked: list[str] = []
    if "/" in ident:
        local = Path(ident).absolute()
        if format_of(local) is not None:
            return local
        looked.append(f"{local} (relative to the current directory)")
    rel = _safe_relative(ident)
    if rel is None:
        raise CheckpointNotFoundError(
            f"checkpoint {ident!r} not found at {looked[0] if looked else ident}; a relative path with '..' "
            "is only looked up relative to the current directory, not in the cache or bucket."
        )

    cached = cache.joinpath(*rel.parts)
    if format_of(cached) is not None:
        return cached
    looked.append(f"{cached} (cache)")

    if recursive_lookup and len(rel.parts) == 1:
        found = CacheIndex(cache).lookup(rel.name)
        if found is not None:
            return found
        looked.append(f"{cache}/**/{rel.name} (recursive cache lookup)")

    if bucket_cfg.enabled:
        source = bucket_cfg.source(str(rel))
        try:
            return download(source, cached, options)
        except CheckpointNotFoundError:
            looked.append(f"{source.display} (bucket)")
    else:
        looked.append("bucket: not searched (the bucket is disabled)")

    places = "\n".join(f"  - {p}" for p in looked)
    raise CheckpointNotFoundError(
        f"checkpoint {ident!r} not found. Looked in:\n{places}\n"
        "Put the file in the cache dir, give an absolute path or a URI, or enable the bucket and "
        "give its remote, name and path prefix."
    )


class CacheIndex:
    """Opt-in recursive lookup of bare names in CACHE_DIR's subfolders, through an index file.

    ``lookup(name)`` reads ``CACHE_DIR/.linnaeus-index.json`` (name → relative paths). A name
    absent from the index, or whose indexed files are gone, triggers one rebuild (a walk of
    the cache, under a file lock) — a cost only paid on misses, never on hits. A name found
    in several folders is an error: picking one silently could load the wrong weights.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.index_path = cache_dir / INDEX_FILE

    def _read(self) -> dict[str, list[str]]:
        try:
            return json.loads(self.index_path.read_text()).get("files", {})
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, AttributeError) as e:
            logger.warning("Ignoring unreadable cache index %s (%s); rebuilding it", self.index_path, e)
            return {}

    def rebuild(self) -> dict[str, list[str]]:
        files: dict[str, list[str]] = {}
        for root, dirs, names in os.walk(self.cache_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for n in names:
                if n.startswith(".") or n.endswith(_IGNORED_SUFFIXES) or n == "latest":
                    continue
                rel = os.path.relpath(os.path.join(root, n), self.cache_dir)
                files.setdefault(n, []).append(rel)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.index_path) + ".lock"):
            write_durably(self.index_path, json.dumps({"version": 1, "files": files}))
        return files

    def lookup(self, name: str) -> Path | None:
        for attempt in range(2):
            files = self._read() if attempt == 0 else self.rebuild()
            hits = [self.cache_dir / rel for rel in files.get(name, []) if (self.cache_dir / rel).is_file()]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                listing = "\n".join(f"  - {h}" for h in hits)
                raise CheckpointNotFoundError(
                    f"checkpoint name {name!r} is ambiguous in the cache {self.cache_dir}:\n{listing}\n"
                    "Give the path of the one you mean."
                )
        return None
