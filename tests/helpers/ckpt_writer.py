"""Fault-injection helper: a process that keeps saving checkpoints, resuming from what is on disk.

Each save ``step`` holds tensors filled with ``step`` so a reader can tell a complete,
consistent checkpoint from a mixture or a partial one.

    python tests/helpers/ckpt_writer.py [--phase-delay S] DIR N_SAVES [FIXED_FILENAME]

With ``--phase-delay S`` this script installs the store's test phase hook
(:func:`linnaeus.checkpoint.testing.install_phase_delay`): every step of a save prints
``linnaeus-test-phase <phase> <bytes>`` to stderr and pauses S seconds, so a test can
``kill -9`` it there. The ``run_writer`` function is also used in forked children with an
in-process phase hook.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from linnaeus.checkpoint import CheckpointManager, CheckpointPolicy, parse_interval  # noqa: E402
from linnaeus.checkpoint.testing import install_phase_delay  # noqa: E402

NUM_TENSORS = 6
TENSOR_NUMEL = 64 * 1024  # 256 KiB each: one "write" phase per tensor
KEEP_LAST_N = 3


def make_policy() -> CheckpointPolicy:
    return CheckpointPolicy(interval=parse_interval("1st"), filename="ckpt_step_{step}.pth", keep_last_n=KEEP_LAST_N)


def expected_model(step: int) -> dict[str, torch.Tensor]:
    return {f"w{i}": torch.full((TENSOR_NUMEL,), float(step)) for i in range(NUM_TENSORS)}


def check_consistent(state: dict) -> int:
    """The step a loaded checkpoint claims, after checking every tensor agrees with it."""
    step = state["progress"]["step"]
    assert state["meta"]["step"] == step
    for name, tensor in state["model"].items():
        assert tensor.shape == (TENSOR_NUMEL,) and bool((tensor == float(step)).all()), f"{name} is not all {step}"
    return step


def run_writer(directory: str | Path, n_saves: int, filename: str | None = None) -> int:
    """Resume from ``directory`` and save ``n_saves`` more checkpoints; returns the last step saved.

    ``filename`` gives every save the same name (like a fixed ``last.pth``), so each save
    after the first overwrites a committed checkpoint.
    """
    torch.set_num_threads(1)
    manager = CheckpointManager(directory, make_policy(), name="writer")
    found = manager.load_resumable()
    step = check_consistent(found[1]) if found else 0
    for _ in range(n_saves):
        step += 1
        with manager.begin(epoch=0, step=step, end_of_epoch=False, filename=filename) as ckpt:
            ckpt["model"] = expected_model(step)
    manager.close()
    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-delay", type=float, default=None, metavar="S",
                        help="print and pause S seconds at every step of a save (for kill tests)")
    parser.add_argument("directory")
    parser.add_argument("n_saves", type=int)
    parser.add_argument("filename", nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.phase_delay is not None:
        install_phase_delay(args.phase_delay)
    print(run_writer(args.directory, args.n_saves, args.filename), flush=True)


if __name__ == "__main__":
    main()
