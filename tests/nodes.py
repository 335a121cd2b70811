"""Several torchrun launchers on 127.0.0.1 standing in for the nodes of one multi-node job (static
rendezvous, one process per node), each with its own run dir: the stage of the node-local tests."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from tests.conftest import REPO, TINY_CFG, VENV_BIN, run_train, wait_for_line
from tests.fixtures_rclone import free_port

# A constant LR: relaunches that raise TRAIN.EPOCHS then train exactly as one run of the final length.
SHORT = ("TRAIN.MAX_STEPS_PER_EPOCH", "3", "TRAIN.SCHEDULER.NAME", "none")


def node_commands(base_dirs: list[Path], toy_root: Path, *opts: str, same_path: Path | None = None,
                  node_opts: Sequence[Sequence[str]] = (), script: Path | None = None) -> list[list[str]]:
    """The command of each node of one training job of len(base_dirs) nodes, one process each: node n
    (rank n, static rendezvous) keeps its run dir under base_dirs[n] and adds ``node_opts[n]`` to its
    --opts. With ``same_path``, each node runs in its own mount namespace where base_dirs[n] is mounted
    at ``same_path``, the ENV.OUTPUT.BASE_DIR of every node: one path, a different disk on each node,
    as node-local disks are. ``script``: another script than tools/train.py, taking its arguments."""
    port = free_port()

    def command(n: int, base: Path) -> list[str]:
        out = same_path or base
        torchrun = [str(VENV_BIN / "torchrun"), f"--nnodes={len(base_dirs)}", f"--node-rank={n}",
                    "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
                    str(script or REPO / "tools" / "train.py"), "--cfg", str(TINY_CFG), "--opts", "ENV.OUTPUT.BASE_DIR",
                    str(out), "DATA.ROOT", str(toy_root), "ENV.INPUT.CACHE_DIR", str(out / "cache"), *SHORT, *opts,
                    *(node_opts[n] if n < len(node_opts) else ())]
        if same_path is None:
            return torchrun
        base.mkdir(parents=True, exist_ok=True)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind "{base}" "{same_path}" && exec "$0" "$@"', *torchrun]

    return [command(n, base) for n, base in enumerate(base_dirs)]


NODE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def launch_nodes(base_dirs: list[Path], toy_root: Path, *opts: str, same_path: Path | None = None,
                 node_opts: Sequence[Sequence[str]] = ()) -> list[subprocess.CompletedProcess]:
    """Run the job of :func:`node_commands` to its end; each result's stdout holds the node's stdout
    and stderr."""
    commands = node_commands(base_dirs, toy_root, *opts, same_path=same_path, node_opts=node_opts)
    # Files, not pipes: a node blocked on a full pipe would stall the others in their collectives.
    logs = [tempfile.TemporaryFile(mode="w+") for _ in base_dirs]
    procs = [subprocess.Popen(command, cwd=REPO, env={**os.environ, **NODE_ENV}, stdout=log,
                              stderr=subprocess.STDOUT, text=True)
             for command, log in zip(commands, logs)]
    try:
        codes = [p.wait(timeout=240) for p in procs]
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read())
        return [subprocess.CompletedProcess(p.args, code, out, "") for p, code, out in zip(procs, codes, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


# (data, epochs, options, processes) -> the checkpoint directory of that run, uninterrupted: one run serves every
# test of a worker that compares with it (the runs are deterministic).
_REFERENCES: dict[tuple[str, int, tuple[str, ...], int], Path] = {}


def reference_checkpoints(tmp_path: Path, toy_root: Path, epochs: int, *opts: str, nproc: int = 2) -> Path:
    """The checkpoint directory of the run uninterrupted for ``epochs`` (``opts`` added), ``nproc`` ranks
    on one machine; made once per worker process."""
    key = (str(toy_root), epochs, opts, nproc)
    if key not in _REFERENCES or not _REFERENCES[key].is_dir():
        run_train(tmp_path / "reference", toy_root, *SHORT, *opts, "TRAIN.EPOCHS", str(epochs), nproc=nproc)
        _REFERENCES[key] = tmp_path / "reference" / "tiny" / "checkpoints"
    return _REFERENCES[key]


def reference_run(tmp_path: Path, toy_root: Path, epochs: int) -> Path:
    """The final checkpoint of the same run uninterrupted, 2 ranks on one machine."""
    return reference_checkpoints(tmp_path, toy_root, epochs) / f"checkpoint_epoch_{epochs}.pth"


def assert_same_training(path: Path, reference: Path) -> None:
    mine, theirs = (torch.load(p, weights_only=True) for p in (path, reference))
    assert mine["progress"] == theirs["progress"]
    for part in ("model", "optimizer"):
        flat, ref = _tensors(mine[part]), _tensors(theirs[part])
        assert flat.keys() == ref.keys()
        for k in ref:
            assert torch.equal(flat[k], ref[k]), (part, k)


def _tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _tensors(sub, f"{prefix}/{i}").items()}
    return {}


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            kids = [int(k) for k in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for kid in kids:
            found += [kid, *_descendants(kid)]
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


def start_nodes(commands: list[list[str]], logs: list[Path]) -> list[subprocess.Popen]:
    """Start each node's command of :func:`node_commands`, its output into its log file (files, not pipes:
    a node blocked on a full pipe would stall the others in their collectives)."""
    procs = []
    for command, log in zip(commands, logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(command, cwd=REPO, env={**os.environ, **NODE_ENV}, stdout=out,
                                          stderr=subprocess.STDOUT))
    return procs


def kill_nodes(procs: list[subprocess.Popen]) -> None:
    """:func:`kill_node` on each node still running, in order."""
    for proc in procs:
        if proc.poll() is None:
            kill_node(proc)
        proc.wait()


def await_resume(log: Path, procs: list[subprocess.Popen], newest: int) -> None:
    """A kill storm's relaunch: it starts fresh when no step was ``newest`` (-1), else resumes exactly
    step ``newest`` (rank 0's ``log``)."""
    if newest < 0:
        wait_for_line(r"starting fresh", log, procs)
        return
    m = wait_for_line(r"Resumed from (\S+) \(epoch \d+, step (\d+)\)", log, procs)
    assert int(m.group(2)) == newest, f"the relaunch resumed step {m.group(2)}, the nodes held step {newest}"


def kill_node(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGKILL a node's launcher and every process under it (torchrun starts its workers in sessions of
    their own), by pid, as a machine that disappears; returns once none of them runs."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in reversed(pids):  # the workers first: none outlives its launcher to notice it gone
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + timeout
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"processes {pids} still run {timeout} s after SIGKILL"
        time.sleep(0.01)
