"""The documented entry point for turning a checkpoint identifier into a local file.

``resolve_checkpoint_path(identifier, cache_dir, bucket_config)`` is what configs and user
code have always called; it forwards to :func:`linnaeus.checkpoint.resolve.resolve`, which
holds the resolution order and takes the richer keyword options. :func:`input_resolver` is the
one mapping from a config's ``ENV.INPUT`` to it: the runner resolves TRAIN.RESUME and
MODEL.PRETRAINED* through it, so a user calling these functions gets the runner's answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from linnaeus.checkpoint.resolve import BucketConfig, resolve


def resolve_checkpoint_path(
    identifier: str,
    cache_dir: str | os.PathLike,
    bucket_config: BucketConfig | Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Local path of ``identifier``: absolute path → URI → ``cache_dir/<name>`` → bucket.

    Args:
        identifier: absolute path, URI (``s3://``, ``https://``, ``remote:path``...), relative
            path, or bare file name (``convnext_tiny_22k_1k_384.pth``).
        cache_dir: ``ENV.INPUT.CACHE_DIR``.
        bucket_config: ``ENV.INPUT.BUCKET`` (yacs node or dict with ENABLED/REMOTE/NAME/PATH_PREFIX).
        **options: forwarded to :func:`linnaeus.checkpoint.resolve.resolve` (``retries``,
            ``progress``, ``recursive_lookup``, ``local_rank``, ``lock_timeout_s``).

    Raises:
        linnaeus.checkpoint.errors.CheckpointNotFoundError: with every place looked.
    """
    return str(resolve(identifier, cache_dir=cache_dir, bucket=bucket_config, **options))


def resolve_from_env_input(identifier: str, env_input: Mapping[str, Any], **options: Any) -> str:
    """Same, configured from a whole ``cfg.ENV.INPUT`` node (CACHE_DIR, BUCKET,
    RECURSIVE_LOOKUP, DOWNLOAD_RETRIES); keyword options override the node."""
    options.setdefault("recursive_lookup", bool(env_input.get("RECURSIVE_LOOKUP", False)))
    options.setdefault("retries", int(env_input.get("DOWNLOAD_RETRIES", 3)))
    return resolve_checkpoint_path(identifier, os.path.expanduser(env_input["CACHE_DIR"]), env_input.get("BUCKET"),
                                   **options)


def input_resolver(env_input: Mapping[str, Any], **options: Any) -> Callable[[str], Path]:
    """``identifier -> local Path`` as ``cfg.ENV.INPUT`` configures it (see :func:`resolve_from_env_input`)."""
    return lambda identifier: Path(resolve_from_env_input(identifier, env_input, **options))
