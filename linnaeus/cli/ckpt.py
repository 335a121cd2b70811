"""``linnaeus-ckpt``: list, inspect, verify, prune and export checkpoints.

    linnaeus-ckpt ls RUN_OR_DIR [--monitor M] [--no-verify]
    linnaeus-ckpt inspect FILE [--json]
    linnaeus-ckpt verify FILE|RUN_OR_DIR     exit 1 if any file is bad
    linnaeus-ckpt prune DIR --keep-last N [--keep-best N --monitor M --mode max] [--dry-run]
    linnaeus-ckpt export FILE OUT [--ema] [--safetensors] [--force]
    linnaeus-ckpt set-aside RUN_OR_DIR | adopt RUN_OR_DIR   (defined in :mod:`linnaeus.cli.lineage_cmds`)
    linnaeus-ckpt resolve|download|upload ...   (defined in :mod:`linnaeus.cli.remote_cmds`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from linnaeus.checkpoint.disk import LOCK_NAME, WriterLease, acquire, sidecar_path
from linnaeus.checkpoint.errors import CheckpointError, DirectoryLockedError
from linnaeus.checkpoint.formats import (
    LATEST,
    TAXONOMY_METADATA,
    TREE_METADATA,
    CheckpointFormat,
    CheckpointInfo,
    commit_file,
    format_of,
    is_checkpoint_name,
    node_parts,
    read_latest,
    verify_checkpoint,
)
from linnaeus.checkpoint.state import KIND_WEIGHTS, TAXONOMY_KEY, TREE_KEY, make_meta, model_state_dict, stored_taxonomy, \
    stored_tree
from linnaeus.checkpoint.store import cleanup_stale, delete_checkpoint, leftovers, list_checkpoints, plan_retention
from linnaeus.cli import lineage_cmds, remote_cmds


def _checkpoint_dir(path: Path) -> Path:
    """A run dir means its ``checkpoints/``; anything else is taken as the checkpoint dir."""
    if (path / "checkpoints").is_dir():
        return path / "checkpoints"
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory (expected a run dir or its checkpoints/ dir).")
    return path


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _guess_monitor(infos: list[CheckpointInfo]) -> str:
    """The metric recorded as 'best' in the newest full checkpoint, if any."""
    for info in reversed(infos):
        fmt = format_of(info.path)
        if info.readable and info.kind == "full" and fmt is not None:
            best = fmt.describe(info.path).get("metrics", {}).get("best")
            if best and best.get("monitor"):
                return str(best["monitor"])
    return ""


# ----------------------------------------------------------------------------- ls
def cmd_ls(args: argparse.Namespace) -> int:
    directory = _checkpoint_dir(Path(args.path))
    infos = list_checkpoints(directory)
    if not infos:
        print(f"no checkpoints in {directory}")
        return 0
    latest = read_latest(directory)
    monitor = args.monitor or _guess_monitor(infos)
    rated = [i for i in infos if monitor and i.metric(monitor) is not None]
    best = (max if args.mode == "max" else min)(rated, key=lambda i: i.metric(monitor)).name if rated else None
    rows = [["file", "kind", "epoch", "step", monitor or "metric", "size", "verified", "run", "parent", "marks"]]
    # Node-local sharded checkpoints: which nodes' parts this node's directory holds (its own, copies).
    parts = {info.name: node_parts(info.path) for info in infos if info.path.is_dir()}
    if any(parts.values()):
        rows[0].insert(6, "node parts here")
    parents = lineage_cmds.parent_names(directory, infos)
    bad = 0
    for info in infos:
        if args.no_verify:
            verified = "-"
        else:
            result = verify_checkpoint(info.path)
            verified = "ok" if result.ok else f"BAD: {result.reason}"
            bad += not result.ok
        value = info.metric(monitor) if monitor else None
        marks = ",".join(m for m, on in (("latest", info.name == latest), ("best", info.name == best)) if on)
        rows.append([
            info.name, info.kind if info.readable else "?",
            str(info.epoch) if info.epoch >= 0 else "-", str(info.step) if info.step >= 0 else "-",
            f"{value:.4g}" if value is not None else "-", _human_size(info.size), verified, info.run_id or "-",
            parents[info.name], marks,
        ])
        if any(parts.values()):
            rows[-1].insert(6, _parts_cell(parts.get(info.name) or []))
    print(f"{directory}:")
    _print_table(rows)
    if bad:
        # Exit 0 still: ls lists; `verify` is the command whose exit code judges files.
        print(f"{bad} file(s) failed verification: run `linnaeus-ckpt verify {directory}` for details "
              "(it exits 1 when a file is bad).")
    return 0


def _parts_cell(parts: list[dict[str, Any]]) -> str:
    """``1/2 (ranks 0)``: how many nodes' parts of a node-local sharded checkpoint are here, and whose."""
    if not parts:
        return "-"
    here = [p for p in parts if p["here"] == "all"]
    some = [p for p in parts if p["here"] == "some"]
    ranks = ",".join(str(r) for p in here for r in p["ranks"])
    return f"{len(here)}/{len(parts)} (ranks {ranks or 'none'})" + (f", {len(some)} partly" if some else "")


def _elsewhere(path: Path) -> str:
    """For `verify`: what of a node-local sharded checkpoint this directory does not hold (and so did not check)."""
    away = [r for p in node_parts(path) if p["here"] != "all" for r in p["ranks"]]
    if not away:
        return ""
    return (f" (node-local: the shards of rank(s) {', '.join(map(str, away))} are on other nodes and were not "
            "checked here; verify there too)")


# ----------------------------------------------------------------------------- inspect
def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return value


def cmd_inspect(args: argparse.Namespace) -> int:
    path = Path(args.file)
    result = verify_checkpoint(path, require_sidecar=False)
    if not result.ok:
        print(f"BAD {path}: {result.reason}", file=sys.stderr)
        return 1
    info = _jsonable(format_of(path).describe(path))  # verified: a format claims it
    info["sha256"] = result.actual_sha256
    info["sidecar"] = "matches" if result.expected_sha256 else "missing"
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


# ----------------------------------------------------------------------------- verify
def cmd_verify(args: argparse.Namespace) -> int:
    path = Path(args.path)
    found: list[tuple[Path, str]] = []
    if path.is_dir() and format_of(path) is None:
        # Like ls and prune: a run dir means its checkpoints/, whose config.yaml and log.txt are no checkpoints.
        path = _checkpoint_dir(path)
        files = sorted(p for p in path.iterdir() if is_checkpoint_name(p.name) and format_of(p) is not None)
        found = sorted((left.path, left.what) for left in leftovers(path))
        if not files:
            print(f"no checkpoint files in {path}; expected a run dir, its checkpoints/ dir or a checkpoint file.",
                  file=sys.stderr)
            return 1
    else:
        files = [path]
    bad = 0
    for file in files:
        result = verify_checkpoint(file)
        if result.ok:
            print(f"OK   {file}{_elsewhere(file) if file.is_dir() else ''}")
        else:
            bad += 1
            detail = ""
            if result.expected_sha256 and result.actual_sha256 and result.expected_sha256 != result.actual_sha256:
                detail = f" (expected sha256 {result.expected_sha256}, actual {result.actual_sha256})"
            print(f"BAD  {file}: {result.reason}{detail}")
    for leftover, kind in found:
        print(f"LEFTOVER  {leftover}: {kind}")
    summary = f"{len(files) - bad} ok, {bad} bad"
    if found:
        # Harmless (never read as checkpoints), so they do not fail verification.
        summary += (f", {len(found)} leftover(s) of interrupted saves (the run's next start or "
                    "`linnaeus-ckpt prune` removes them)")
    print(summary)
    return 1 if bad else 0


# ----------------------------------------------------------------------------- prune
def cmd_prune(args: argparse.Namespace) -> int:
    if args.keep_best and not args.monitor:
        raise CheckpointError("--keep-best needs --monitor (e.g. --monitor val/acc1/species).")
    directory = _checkpoint_dir(Path(args.dir))
    lease = None if args.dry_run else _writer_lease(directory, "prune")
    latest = read_latest(directory)
    # Each saver (full checkpoints, weights-only saver, ...) keeps its own N.
    groups: dict[str, list[CheckpointInfo]] = defaultdict(list)
    for info in list_checkpoints(directory):
        # A newer linnaeus' files are never deleted by this one: it cannot judge them.
        if info.committed and info.readable and not info.too_new:
            groups[info.saver].append(info)
    doomed: list[CheckpointInfo] = []
    for infos in groups.values():
        doomed += plan_retention(
            infos, keep_last_n=args.keep_last, keep_best_n=args.keep_best,
            monitor=args.monitor, mode=args.mode, protect={latest} if latest else set(),
        )
    verb = "would delete" if args.dry_run else "deleted"
    for info in doomed:
        if not args.dry_run:
            delete_checkpoint(info.path)
        print(f"{verb} {info.path}")
    if not args.dry_run:
        # Holding the lock, every other process's temp file is a dead writer's, however young.
        for leftover in cleanup_stale(directory):
            print(f"removed leftover {leftover}")
    print(f"{verb} {len(doomed)} checkpoint(s)")
    if lease is not None:
        lease.release()
    return 0


def _writer_lease(directory: Path, command: str) -> WriterLease:
    """The directory's writer lock for a command that deletes or renames there: it refuses, touching
    nothing, while a run writes into the directory (that run's own retention and cleanup are safe)."""
    try:
        return acquire(directory)
    except DirectoryLockedError as e:
        raise DirectoryLockedError(f"refusing to {command} while a run writes there, nothing was touched: {e}") from e


# ----------------------------------------------------------------------------- export
def _check_export_destination(src: Path, out: Path, force: bool) -> None:
    """Refuse, before reading a byte, any OUT whose replacement loses something: a committed checkpoint,
    ``latest``, a sidecar, the lock, or anything inside a sharded checkpoint. ``--force`` replaces only
    a file that is none of these (someone's own file)."""
    def refuse(why: str, what_to_do: str = "Choose another OUT") -> CheckpointError:
        return CheckpointError(f"refusing to export {src} to {out}: {why}; nothing was written. {what_to_do}.")

    if out.name in (LATEST, LOCK_NAME) or out.name.endswith(".sha256"):
        raise refuse(f"'{out.name}' is the checkpoint directory's own bookkeeping (latest pointer, writer "
                      "lock or sidecar), which no export may replace, even with --force")
    inside = next((d for d in (out, *out.parents) if d.is_dir() and format_of(d) is not None), None)
    if inside is not None:
        raise refuse(f"{inside} is a sharded checkpoint, which an export may neither replace nor write into")
    if out.is_dir():
        raise refuse("it is a directory (OUT names the file to write)")
    if sidecar_path(out).exists() and format_of(out) is not None:
        raise refuse("it is a committed checkpoint (it has a sidecar), which an export never replaces, even "
                      "with --force", "Export to another name, or remove that checkpoint and its sidecar first")
    if not force and (out.exists() or sidecar_path(out).exists()):
        raise refuse(f"{out if out.exists() else sidecar_path(out)} exists", "Pass --force to replace it")


def _export_lease(directory: Path) -> WriterLease | None:
    """An export into a run's checkpoint directory holds its writer lock, so it refuses while that run is
    live (the run's cleanup would take the export's temp file for a dead writer's)."""
    if (directory / LOCK_NAME).exists() or (directory / LATEST).exists():
        return _writer_lease(directory, "export into it")
    return None


def cmd_export(args: argparse.Namespace) -> int:
    src, out = Path(args.file), Path(args.out)
    key = "ema" if args.ema else "model"
    fmt = format_of(src)
    if fmt is None:
        raise CheckpointError(f"cannot export {src}: no checkpoint there (a file, or a sharded checkpoint directory).")
    _check_export_destination(src, out, args.force)
    lease = _export_lease(out.parent)
    try:
        return _export(args, src, out, key, fmt)
    finally:
        if lease is not None:
            lease.release()


def _export(args: argparse.Namespace, src: Path, out: Path, key: str, fmt: CheckpointFormat) -> int:
    # Every byte verified; a sharded checkpoint is consolidated here, in one process, whatever world size saved it.
    state = fmt.read_weights(src, use_ema=args.ema)
    if not isinstance(state, Mapping) or not isinstance(state.get(key), Mapping):
        held = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(f"{src} has no '{key}' state (it holds {held}); drop --ema to export the model.")
    weights = model_state_dict(state[key])
    src_meta = state.get("meta", {})
    meta = make_meta(
        kind=KIND_WEIGHTS, saver="export", file=out.name, run_id=str(src_meta.get("run_id", "")),
        run_timestamp=str(src_meta.get("run_timestamp", "")),
        epoch=int(src_meta.get("epoch", -1)), step=int(src_meta.get("step", -1)),
        metrics=src_meta.get("metrics", {}), extra={"exported_from": src.name, "exported_ema": bool(args.ema)},
    )
    taxonomy, tree = stored_taxonomy(state), stored_tree(state)  # so that transfers and predict read it by name
    if args.safetensors:
        from safetensors.torch import save as safetensors_bytes

        tensors = {k: v.contiguous().clone() for k, v in weights.items() if isinstance(v, torch.Tensor)}
        text_meta = {"format": "pt", "linnaeus_meta": json.dumps(meta), "config": state.get("config", "")}
        if taxonomy is not None:
            text_meta[TAXONOMY_METADATA] = json.dumps(taxonomy)
            if tree is not None:
                text_meta[TREE_METADATA] = json.dumps(tree)
        result = commit_file(out.parent, out.name, tensors, update_latest=False,
                             serialize=lambda obj, f: f.write(safetensors_bytes(obj, metadata=text_meta)))
    else:
        payload = {"model": weights, "config": state.get("config", ""), "meta": meta}
        if taxonomy is not None:
            payload[TAXONOMY_KEY] = taxonomy
            if tree is not None:
                payload[TREE_KEY] = tree
        result = commit_file(out.parent, out.name, payload, update_latest=False)
    print(f"exported {'EMA ' if args.ema else ''}weights of {src} to {result.path} ({_human_size(result.size)}, sha256 {result.sha256})")
    return 0


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linnaeus-ckpt", description="Inspect and manage linnaeus checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ls", help="table of the checkpoints in a run dir or checkpoint dir")
    p.add_argument("path", metavar="RUN_OR_DIR")
    p.add_argument("--monitor", default="", help="metric column (default: the run's monitored metric)")
    p.add_argument("--mode", choices=("min", "max"), default="max", help="which value of --monitor is best")
    p.add_argument("--no-verify", action="store_true", help="skip hashing every file")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("inspect", help="what a checkpoint file holds")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="check sha256 and structure; exit 1 if any file is bad")
    p.add_argument("path", metavar="FILE_OR_RUN_OR_DIR")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("prune", help="apply keep-last / keep-best retention to a checkpoint dir")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--keep-last", type=int, required=True, help="keep the N newest (per saver)")
    p.add_argument("--keep-best", type=int, default=0, help="also keep the N best by --monitor")
    p.add_argument("--monitor", default="", help="metric for --keep-best, e.g. val/acc1/species")
    p.add_argument("--mode", choices=("min", "max"), default="max")
    p.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="write a weights-only copy (model, config, meta)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--ema", action="store_true", help="export the EMA weights instead of the model")
    p.add_argument("--safetensors", action="store_true", help="write safetensors instead of a .pth")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT that is not a checkpoint, latest, sidecar or lock")
    p.set_defaults(func=cmd_export)

    lineage_cmds.register(sub, _checkpoint_dir)  # set-aside / adopt
    remote_cmds.register(sub)  # resolve / download / upload
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, OSError) as e:
        print(f"linnaeus-ckpt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from linnaeus.cli.commands import exit_process

    exit_process(main())
