"""Result lines from ranks that share torchrun's stdout pipe."""

from __future__ import annotations

import os


def say(line: str) -> None:
    """Write ``line`` with one write(2): print() may issue the text and its newline as two writes
    (PYTHONUNBUFFERED), letting another rank's line land in between; a pipe write of at most
    PIPE_BUF bytes is atomic."""
    os.write(1, (line + "\n").encode())
