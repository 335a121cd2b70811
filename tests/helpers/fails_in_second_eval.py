"""``tools/train.py`` whose second validation raises (nothing else changes): the run fails after
it has committed the first epoch's checkpoint, as a data or model error in the next epoch would.

Usage: python fails_in_second_eval.py <tools/train.py args...>
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from linnaeus.cli.commands import exit_process, pause_gc, resume_gc  # noqa: E402

pause_gc()  # the imports below as tools/train.py makes them
import linnaeus.main as main  # noqa: E402
resume_gc()

_evaluate, _calls = main.evaluate, [0]


def _failing_second(*args: object, **kwargs: object) -> object:
    _calls[0] += 1
    if _calls[0] == 2:
        raise RuntimeError("injected failure in the second validation")
    return _evaluate(*args, **kwargs)


main.evaluate = _failing_second  # type: ignore[assignment]

if __name__ == "__main__":
    exit_process(main.cli(sys.argv[1:]))  # as tools/train.py ends
