"""``linnaeus-ckpt resolve | download | upload``: the resolver and uploader from the shell.

Registered into the ``linnaeus-ckpt`` parser by :func:`register`; also runnable alone::

    python -m linnaeus.cli.remote_cmds resolve convnext_tiny.pth --remote mys3 --bucket ckpts
    python -m linnaeus.cli.remote_cmds upload runs/x/checkpoints/checkpoint_epoch_3.pth --remote mys3 --bucket ckpts

Settings come from flags, else from environment variables (LINNAEUS_CACHE_DIR,
LINNAEUS_BUCKET_REMOTE, LINNAEUS_BUCKET_NAME, LINNAEUS_BUCKET_PREFIX), else from a config
file given with ``--cfg`` (``ENV.INPUT``; ``ENV.OUTPUT.BUCKET`` for ``upload --output``).
``upload`` without any of them uses the config defaults: the model zoo
``linnaeus-checkpoints/modelZoo/`` on Backblaze B2 (B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY).
Exit codes: 0 ok, 1 checkpoint error (access denied, corrupt, retries exhausted), 2 not found.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from linnaeus.checkpoint.errors import CheckpointError, CheckpointNotFoundError
from linnaeus.checkpoint.formats import format_of
from linnaeus.checkpoint.remote import RemoteRun
from linnaeus.checkpoint.resolve import BucketConfig, resolve
from linnaeus.checkpoint import sources  # sources.download(): imported bare, the name reads as its module
from linnaeus.checkpoint.sources import (
    DownloadOptions,
    check_bucket_path,
    check_file_name,
    check_identifier,
    get_source,
    is_uri,
)

DEFAULT_CACHE_DIR = "~/.cache/linnaeus/checkpoints"


def _add_bucket_args(p: argparse.ArgumentParser, *, for_upload: bool) -> None:
    p.add_argument("--cfg", help="config YAML to read defaults from (ENV.INPUT; ENV.OUTPUT with upload --output)")
    p.add_argument("--remote", help="rclone remote name [$LINNAEUS_BUCKET_REMOTE]")
    p.add_argument("--bucket", help="bucket (top-level folder) on the remote [$LINNAEUS_BUCKET_NAME]")
    p.add_argument("--prefix", help="path prefix inside the bucket [$LINNAEUS_BUCKET_PREFIX]")
    if not for_upload:
        p.add_argument("--cache-dir", help=f"local cache [$LINNAEUS_CACHE_DIR, else {DEFAULT_CACHE_DIR}]")
        p.add_argument("--no-bucket", action="store_true", help="do not look in the bucket")
        p.add_argument("--recursive", action="store_true", help="also search the cache's subfolders (index file)")
        p.add_argument("--retries", type=int, default=None, help="download attempts (default 3)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: "argparse._SubParsersAction") -> None:
    """Add ``resolve``, ``download`` and ``upload`` to a ``linnaeus-ckpt`` subparsers object."""
    p = subparsers.add_parser(
        "resolve", help="print the local path of a checkpoint identifier (downloading it if needed)",
        description="Resolve IDENTIFIER: absolute path, URI (s3://, gs://, az://, b2://, http(s)://, "
        "remote:path), relative path, or bare file name looked up in the cache then the bucket.",
    )
    p.add_argument("identifier")
    _add_bucket_args(p, for_upload=False)
    p.set_defaults(func=cmd_resolve)

    p = subparsers.add_parser("download", help="download a checkpoint into the cache (or --to DIR)")
    p.add_argument("identifier")
    p.add_argument("--to", help="put the file in this folder under its own name instead of the cache")
    _add_bucket_args(p, for_upload=False)
    p.set_defaults(func=cmd_download)

    p = subparsers.add_parser(
        "upload", help="upload checkpoint files and their .sha256 to a bucket (verified; never deletes)",
        description="Upload each PATH and PATH.sha256 to REMOTE:BUCKET/PREFIX[EXPERIMENT/]<name>: by default "
        "the input bucket's model zoo (ENV.INPUT.BUCKET), where bare names in MODEL.PRETRAINED* are resolved "
        "from; with --output a run's folder in the output bucket (ENV.OUTPUT.BUCKET).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--output", action="store_true",
                   help="upload into a run's folder in the output bucket (ENV.OUTPUT.BUCKET of --cfg, "
                   "<prefix><experiment>/, experiment = --experiment or EXPERIMENT.NAME of --cfg)")
    p.add_argument("--experiment", default="", help="upload into <prefix><experiment>/ (a run's folder)")
    p.add_argument("--latest", action="store_true", help="then point the folder's `latest` marker at the last PATH")
    p.add_argument("--write-sidecar", action="store_true",
                   help="compute and write PATH.sha256 when it is missing (always done for model-zoo uploads)")
    _add_bucket_args(p, for_upload=True)
    p.set_defaults(func=cmd_upload)


def _load_cfg(args: argparse.Namespace):
    if not getattr(args, "cfg", None):
        return None
    from linnaeus.config import load_config  # the CLI may read configs; the library never does

    return load_config(args.cfg)


def _cfg_section(args: argparse.Namespace, upload: bool):
    cfg = _load_cfg(args)
    if cfg is None:
        return None
    return cfg.ENV.OUTPUT if upload and args.output else cfg.ENV.INPUT


def _bucket(args: argparse.Namespace, upload: bool) -> dict:
    """ENABLED/REMOTE/NAME/PATH_PREFIX: each from its flag, else LINNAEUS_BUCKET_* (set, even empty), else
    the ``--cfg`` section, else the config defaults, so that ``upload`` and ``resolve`` agree on where
    a bare name lives (``linnaeus-checkpoints/modelZoo/<name>``, REMOTE empty = Backblaze B2)."""
    from linnaeus.config.defaults import get_default_config

    output = upload and args.output
    section = _cfg_section(args, upload)
    if section is None:
        section = get_default_config().ENV.OUTPUT if output else get_default_config().ENV.INPUT
    node = section.BUCKET

    def pick(flag: str | None, env: str, key: str) -> str:
        return flag if flag is not None else os.environ.get(env, node[key])

    explicit_remote = args.remote is not None or "LINNAEUS_BUCKET_REMOTE" in os.environ
    remote = pick(args.remote, "LINNAEUS_BUCKET_REMOTE", "REMOTE")
    # A named remote given here enables the bucket; otherwise the config decides (an empty REMOTE
    # there is Backblaze B2, not "no bucket"). An upload always has a target.
    enabled = (bool(remote.strip()) if explicit_remote else bool(node.ENABLED)) or upload
    return {
        "ENABLED": enabled and not getattr(args, "no_bucket", False),
        "REMOTE": remote,
        "NAME": pick(args.bucket, "LINNAEUS_BUCKET_NAME", "NAME"),
        "PATH_PREFIX": pick(args.prefix, "LINNAEUS_BUCKET_PREFIX", "PATH_PREFIX"),
    }


def _resolve_kwargs(args: argparse.Namespace) -> dict:
    section = _cfg_section(args, upload=False)
    cache = args.cache_dir or os.environ.get("LINNAEUS_CACHE_DIR") or (section.CACHE_DIR if section else DEFAULT_CACHE_DIR)
    retries = args.retries if args.retries is not None else (section.DOWNLOAD_RETRIES if section else 3)
    return {
        "cache_dir": cache,
        "bucket": _bucket(args, upload=False),
        "retries": retries,
        "recursive_lookup": args.recursive or bool(section and section.RECURSIVE_LOOKUP),
        "progress": False if args.no_progress else None,
    }


def _run(fn) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # Under linnaeus-ckpt the root logger is already set to WARNING; transfers should still
    # say what they fetched and how it was verified.
    logging.getLogger("linnaeus").setLevel(logging.INFO)
    try:
        return fn()
    except CheckpointNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # a malformed identifier or URI (e.g. s3://bucket-only), or a bad --cfg (ConfigError)
        print(f"error: {e}", file=sys.stderr)
        return 1


def cmd_resolve(args: argparse.Namespace) -> int:
    def go() -> int:
        print(resolve(args.identifier, **_resolve_kwargs(args)))
        return 0

    return _run(go)


def cmd_download(args: argparse.Namespace) -> int:
    def go() -> int:
        kwargs = _resolve_kwargs(args)
        if not args.to:
            print(resolve(args.identifier, **kwargs))
            return 0
        bucket = BucketConfig.from_any(kwargs["bucket"])
        check_identifier(args.identifier)
        if is_uri(args.identifier):
            source = get_source(args.identifier)
        elif bucket.enabled:
            # As resolve() does: a name in the bucket never climbs out of the bucket's folder.
            source = bucket.source(check_bucket_path(args.identifier, "checkpoint identifier"))
        else:
            raise CheckpointNotFoundError(
                f"{args.identifier!r} is not a URI and no bucket is configured (--remote/--bucket or "
                "LINNAEUS_BUCKET_REMOTE); nothing to download from."
            )
        options = DownloadOptions(retries=kwargs["retries"], progress=kwargs["progress"])
        # The object's last part becomes a file in --to: one name, never a path out of it.
        name = check_file_name(source.name, source.display)
        print(sources.download(source, Path(args.to) / name, options))
        return 0

    return _run(go)


def cmd_upload(args: argparse.Namespace) -> int:
    def go() -> int:
        bucket = BucketConfig.from_any(_bucket(args, upload=True))
        experiment = args.experiment
        if args.output and not experiment:
            cfg = _load_cfg(args)
            if cfg is None:
                raise ValueError("upload --output needs the run's folder: give --experiment NAME or --cfg with "
                                 "EXPERIMENT.NAME.")
            experiment = cfg.EXPERIMENT.NAME
        remote = RemoteRun.in_bucket(bucket, experiment) if experiment else RemoteRun.bucket_root(bucket)
        # A model-zoo file is anyone's weights file: it has no sidecar until we write one. In a run's
        # folder a missing sidecar means "not committed", so that stays an explicit --write-sidecar.
        make_sidecar = args.write_sidecar or not args.output
        for raw in args.paths:
            path = Path(raw)
            fmt = format_of(path)
            if make_sidecar and fmt is not None and not fmt.read_info(path).committed:
                try:
                    refused = fmt.adopt(path, check=False)  # its marker (sidecar), whatever the file holds
                except OSError as e:
                    raise CheckpointError(f"cannot write the marker of {path} beside it ({e.strerror}): copy the "
                                          "file into a writable folder and upload the copy.") from None
                if refused:
                    raise CheckpointError(f"cannot upload {path}: {refused}")
            sent = remote.upload(path)
            name = (experiment.strip("/") + "/" if experiment else "") + path.name
            print(f"{'uploaded and verified' if sent else 'already remote (same sha256)'}: {path} -> "
                  f"{remote.display}{path.name}", file=sys.stderr if not args.output else sys.stdout)
            if not args.output:
                # The bare name is what MODEL.PRETRAINED* takes: resolved from the cache, then this bucket.
                print(name)
        if args.latest:
            remote.write_marker(Path(args.paths[-1]).name)
            print(f"latest -> {Path(args.paths[-1]).name}", file=sys.stderr if not args.output else sys.stdout)
        if not args.output:
            print("Use it as MODEL.PRETRAINED (or PRETRAINED_CONVNEXT / PRETRAINED_ROPEVIT) with ENV.INPUT.BUCKET "
                  "pointing at this bucket.", file=sys.stderr)
        return 0

    return _run(go)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m linnaeus.cli.remote_cmds", description=__doc__.split("\n")[0])
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    from linnaeus.cli.commands import exit_process

    exit_process(main())
