"""``linnaeus-ckpt set-aside | adopt``, and the lineage column of ``ls`` (rules: :mod:`linnaeus.checkpoint.store.lineage`).

    linnaeus-ckpt set-aside RUN_OR_DIR [--after NAME] [--cfg CFG | --local-only]
                                         move every checkpoint (with sidecars, latest), or those past NAME,
                                         into set-aside-<UTC time>/, here and in the run's bucket folder
    linnaeus-ckpt adopt RUN_OR_DIR       write sidecars for checkpoints without one that pass a structural check;
                                         exit 1 if any was refused
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from linnaeus.checkpoint.disk import acquire
from linnaeus.checkpoint.errors import CheckpointError, CheckpointNotFoundError
from linnaeus.checkpoint.formats import CheckpointInfo, format_of, read_info
from linnaeus.checkpoint.remote import BucketLease, RemoteRun
from linnaeus.checkpoint.store import adopt, find_checkpoint, set_aside, set_aside_folder_name


def parent_names(directory: Path, infos: list[CheckpointInfo]) -> dict[str, str]:
    """For ``ls``: each checkpoint's parent, by name when it is in ``directory`` (matched by the
    identity its marker records: a file's sha256, a sharded directory's manifest's), else the
    digest's first 12 digits; ``(fresh)`` for a fresh start and ``-`` where the checkpoint records
    none (written by an older linnaeus, or unreadable)."""
    by_sha: dict[str, str] = {}
    for info in infos:
        fmt = format_of(info.path)
        if not info.committed or fmt is None:
            continue  # no marker: its identity would mean hashing the whole file for a listing
        try:
            by_sha.setdefault(fmt.identity(info.path), info.name)
        except (OSError, ValueError):
            continue
    names = {}
    for info in infos:
        parent = info.parent_sha256
        names[info.name] = ("-" if parent is None else "(fresh)" if parent == "" else
                            by_sha.get(parent, parent[:12]))
    return names


def cmd_set_aside(args: argparse.Namespace) -> int:
    directory = args.checkpoint_dir(Path(args.path))
    with acquire(directory):  # first: beside a live run, that is the answer (set_aside holds it again)
        return _set_aside_here_and_remote(args, directory)


def _set_aside_here_and_remote(args: argparse.Namespace, directory: Path) -> int:
    remote, ttl_s = (None, 0.0) if args.local_only else run_bucket_folder(directory.parent, args.cfg)
    # Like the local lock (set_aside takes it): refused while a run writes the folder.
    lease = BucketLease(remote, ttl_s=ttl_s, run_dir=str(directory.parent)).acquire() if remote else None
    try:
        return _set_aside(args, directory, _after(args, directory, remote), remote)
    finally:
        if lease is not None:
            lease.release()


def _after(args: argparse.Namespace, directory: Path, remote: RemoteRun | None) -> Path | None:
    """The checkpoint named by ``--after``, in the checkpoint directory. A fresh machine holds only what its
    relaunch downloaded: one that only the bucket folder holds is downloaded (verified), since the next
    launch continues from it anyway."""
    if not args.after:
        return None
    name = Path(args.after).name
    after = find_checkpoint(directory, name)
    if after is None and remote is not None:
        try:
            after = remote.fetch(name, directory)
        except CheckpointNotFoundError:
            pass
        else:
            print(f"downloaded {after.name} from the run's bucket folder {remote.display}")
    if after is None:
        where = f"{directory} or the run's bucket folder {remote.display}" if remote is not None else str(directory)
        raise CheckpointNotFoundError(f"--after {args.after}: no checkpoint of that name in {where} "
                                      "(see `linnaeus-ckpt ls`).")
    return after


def _set_aside(args: argparse.Namespace, directory: Path, after: Path | None, remote: RemoteRun | None) -> int:
    # Listed before anything moves: an unreachable bucket refuses here, with both sides untouched.
    if remote is not None:
        remote.finish_moves()  # one a kill interrupted
    remote_names = [] if remote is None else remote.list() if after is None else \
        remote.entries_after(read_info(after).step)
    folder_name = set_aside_folder_name()
    moved = set_aside(directory, after=after, folder_name=folder_name)
    for name in moved[1] if moved else []:
        print(f"moved {name} -> {moved[0] / name}")
    what = f"checkpoint(s) past {after.name}" if after else "checkpoint(s)"
    print(f"set aside {len(moved[1])} {what} in {moved[0]} (nothing was deleted)" if moved else
          f"no {what} in {directory}; nothing set aside there")
    if remote is not None:
        if remote_names:
            dest = remote.move_aside(remote_names, folder_name)
            print(f"set aside {len(remote_names)} {what} of the run's bucket folder ({', '.join(remote_names)}) "
                  f"in {dest} (nothing was deleted)")
        else:
            print(f"no {what} in the run's bucket folder {remote.display}; nothing set aside there")
    then = f"continues from {after.name}" if after else "starts fresh"
    print(f"a run started in {directory.parent} now {then}" + ("" if remote is not None else
          " (local checkpoints only: --local-only)" if args.local_only else ""))
    return 0


def run_bucket_folder(run_dir: Path, cfg_file: str | None) -> tuple[RemoteRun | None, float]:
    """The run's bucket folder (``ENV.OUTPUT.BUCKET`` of its config: ``--cfg``, else the run dir's
    ``config.yaml``), or None when the run has none, and its lease's time-to-live. Refuses when it
    cannot tell."""
    path = Path(cfg_file) if cfg_file else run_dir / "config.yaml"
    if not path.is_file():
        raise CheckpointError(
            f"cannot tell whether this run keeps checkpoints in a bucket folder too ({path} is missing); if it "
            "does, a relaunch would resume from them. Nothing was moved. Pass --cfg CFG (the run's config) to set "
            "the bucket folder's checkpoints aside too, or --local-only for the local ones only.")
    from linnaeus.config import load_config  # the CLI may read configs; the library never does

    cfg = load_config(str(path))
    bucket = cfg.ENV.OUTPUT.BUCKET
    ttl_s = float(cfg.ENV.OUTPUT.BUCKET_LEASE_TTL_S)
    return (RemoteRun.in_bucket(bucket, cfg.EXPERIMENT.NAME) if bucket.ENABLED else None), ttl_s


def cmd_adopt(args: argparse.Namespace) -> int:
    directory = args.checkpoint_dir(Path(args.path))
    results = adopt(directory)
    if not results:
        print(f"every checkpoint in {directory} has its sidecar; nothing to adopt")
        return 0
    for r in results:
        print(f"ADOPTED  {r.path}" if not r.refused else f"REFUSED  {r.path}: {r.refused}")
    refused = [r for r in results if r.refused]
    print(f"{len(results) - len(refused)} adopted, {len(refused)} refused" +
          (f" (move the refused ones out of {directory}: a run there stops while they have no sidecar)"
           if refused else ""))
    return 1 if refused else 0


def register(subparsers: "argparse._SubParsersAction", checkpoint_dir: Callable[[Path], Path]) -> None:
    """Add ``set-aside`` and ``adopt``; ``checkpoint_dir`` maps a run dir to its ``checkpoints/``."""
    p = subparsers.add_parser(
        "set-aside", help="move a run's checkpoints into a set-aside-<UTC time>/ folder (never deletes)",
        description="Move every checkpoint of RUN_OR_DIR (data, sidecar; and latest) into a new folder "
        "checkpoints/set-aside-<UTC time>/, so that the run can start fresh without overwriting them. With an "
        "output bucket (ENV.OUTPUT.BUCKET of the run's config.yaml), the run's bucket folder is set aside too, "
        "into a sub-folder of the same name.")
    p.add_argument("path", metavar="RUN_OR_DIR")
    p.add_argument("--after", metavar="NAME", help="only the checkpoints with more progress than NAME (a "
                   "checkpoint of the run): a relaunch of `TRAIN.RESUME NAME` then restarts from it again")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cfg", help="the run's config, when its run dir holds no config.yaml")
    where.add_argument("--local-only", action="store_true", help="leave the run's bucket folder as it is")
    p.set_defaults(func=cmd_set_aside, checkpoint_dir=checkpoint_dir)

    p = subparsers.add_parser(
        "adopt", help="write sidecars for checkpoints that have none, after a structural check",
        description="For each checkpoint in RUN_OR_DIR without a .sha256 sidecar (copied without it, restored "
        "from a backup): write its sidecar if it loads with weights_only=True and has a linnaeus checkpoint's "
        "structure; refuse it with the reason otherwise (exit 1).")
    p.add_argument("path", metavar="RUN_OR_DIR")
    p.set_defaults(func=cmd_adopt, checkpoint_dir=checkpoint_dir)


__all__ = ["parent_names", "register"]
