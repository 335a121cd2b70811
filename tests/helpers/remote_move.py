#!/usr/bin/env python
"""A move aside in a bucket folder, in a process of its own: ``remote_move.py FOLDER DEST NAME...``.

Moves the committed checkpoints NAME... of the rclone folder FOLDER into its sub-folder DEST, as a
restart does (``RemoteRun.move_aside``). The test kills it with ``kill -9`` at the Nth rclone call
that writes or deletes (tests/checkpoint/remote/test_move_aside_kill.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from linnaeus.checkpoint.remote import RemoteRun  # noqa: E402


def main() -> None:
    folder, dest, *names = sys.argv[1:]
    RemoteRun(folder).move_aside(names, dest)


if __name__ == "__main__":
    main()
