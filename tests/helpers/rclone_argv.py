"""Record every argv our code gives rclone, while the real rclone binary still runs.

``record_rclone_argv(tmp_path, monkeypatch)`` writes a wrapper script, points ``LINNAEUS_RCLONE``
at it and clears :func:`rclone_binary`'s cache. The wrapper writes its arguments (NUL-separated,
one file per invocation, so no record can be mistaken for another) and then ``exec``s the real
``<venv>/bin/rclone`` with the same arguments. :meth:`ArgvLog.calls` reads them back.

:func:`foreign_options` is the check the fuzz tests make: the options (everything before ``--``)
of each invocation must be ones our code writes, and ``--`` must be there.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REAL_RCLONE = str(Path(sys.executable).parent / "rclone")

# Every option token linnaeus' rclone calls put before ``--`` (subcommands, flags, flag values).
OUR_TOKENS = frozenset({
    "--ask-password=false",
    "lsjson", "--stat", "--hash", "--files-only",
    "cat", "--count", "--max-depth", "1", "--include", "*.sha256",
    "copyto", "moveto", "rcat",
})


@dataclass
class ArgvLog:
    directory: Path

    def calls(self) -> list[list[str]]:
        """The argv (without the binary) of every rclone invocation so far, oldest first."""
        files = sorted(self.directory.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        out = []
        for f in files:
            raw = f.read_bytes()
            # printf '%s\0' ends every argument with NUL: the last split is the empty tail.
            out.append([os.fsdecode(a) for a in raw.split(b"\0")[:-1]])
        return out

    def clear(self) -> None:
        for f in self.directory.iterdir():
            f.unlink()


def record_rclone_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArgvLog:
    """Install the recording wrapper for the rest of the test (undone by ``monkeypatch``)."""
    from linnaeus.checkpoint.sources import rclone_binary

    log_dir = tmp_path / "rclone-argv"
    log_dir.mkdir()
    wrapper = tmp_path / "rclone-recording"
    wrapper.write_text(
        "#!/bin/bash\n"
        f"f=$(mktemp '{log_dir}/call.XXXXXXXX') || exit 97\n"
        'printf \'%s\\0\' "$@" > "$f" || exit 97\n'
        f'exec \'{REAL_RCLONE}\' "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("LINNAEUS_RCLONE", str(wrapper))
    rclone_binary.cache_clear()  # the caller clears it again when the test ends
    return ArgvLog(log_dir)


def foreign_options(argv: list[str]) -> list[str]:
    """Option tokens of ``argv`` that our code does not write (``["<no -->"]`` if ``--`` is
    missing, in which case every argument could be read as an option)."""
    if "--" not in argv:
        return ["<no -->"] + [a for a in argv if a not in OUR_TOKENS]
    head = argv[: argv.index("--")]
    # --count's value is a number our code computes (max_bytes + 1).
    return [a for i, a in enumerate(head) if a not in OUR_TOKENS and not (a.isdigit() and i and head[i - 1] == "--count")]
