"""``linnaeus-ckpt set-aside | adopt``, and the lineage column of ``ls`` (rules: :mod:`linnaeus.checkpoint.store.lineage`).

    linnaeus-ckpt set-aside RUN_OR_DIR   move every checkpoint (with sidecars, latest) into set-aside-<UTC time>/
    linnaeus-ckpt adopt RUN_OR_DIR       write sidecars for checkpoints without one that pass a structural check;
                                         exit 1 if any was refused
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from linnaeus.checkpoint.formats import CheckpointInfo, format_of
from linnaeus.checkpoint.store import adopt, set_aside


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
    moved = set_aside(directory)
    if moved is None:
        print(f"no checkpoints in {directory}; nothing to set aside")
        return 0
    folder, names = moved
    for name in names:
        print(f"moved {name} -> {folder / name}")
    print(f"set aside {len(names)} checkpoint(s) in {folder} (nothing was deleted); a run started in "
          f"{directory.parent} now starts fresh")
    return 0


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
        "checkpoints/set-aside-<UTC time>/, so that the run can start fresh without overwriting them.")
    p.add_argument("path", metavar="RUN_OR_DIR")
    p.set_defaults(func=cmd_set_aside, checkpoint_dir=checkpoint_dir)

    p = subparsers.add_parser(
        "adopt", help="write sidecars for checkpoints that have none, after a structural check",
        description="For each checkpoint in RUN_OR_DIR without a .sha256 sidecar (copied without it, restored "
        "from a backup): write its sidecar if it loads with weights_only=True and has a linnaeus checkpoint's "
        "structure; refuse it with the reason otherwise (exit 1).")
    p.add_argument("path", metavar="RUN_OR_DIR")
    p.set_defaults(func=cmd_adopt, checkpoint_dir=checkpoint_dir)


__all__ = ["parent_names", "register"]
