#!/usr/bin/env python
"""``tools/train.py`` over a poisoned training set (a test instrument; nothing else changes).

``LINNAEUS_TEST_POISON=I,J,...`` names dataset indices of the training set whose images are filled
with ``LINNAEUS_TEST_POISON_VALUE`` (default ``nan``: NaN pixels; a large finite value such as
``1e4`` makes a loss spike instead), whenever and on whichever rank they are loaded.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from linnaeus.cli.commands import exit_process, pause_gc, resume_gc  # noqa: E402

pause_gc()  # the imports below as tools/train.py makes them
from linnaeus.data.folder import LabeledImages  # noqa: E402
from linnaeus.main import cli  # noqa: E402
resume_gc()

_POISONED = {int(i) for i in os.environ.get("LINNAEUS_TEST_POISON", "").split(",") if i}
_VALUE = float(os.environ.get("LINNAEUS_TEST_POISON_VALUE", "nan"))
_getitem = LabeledImages.__getitem__


def _poisoned_getitem(self, key):  # type: ignore[no-untyped-def]
    image, labels = _getitem(self, key)
    index = key[1] if isinstance(key, tuple) else key
    if self is _TRAIN[0] and index in _POISONED:
        image = image.clone().fill_(_VALUE)
    return image, labels


_TRAIN: list = [None]
_init = LabeledImages.__init__


def _init_recording(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _init(self, *args, **kwargs)
    if _TRAIN[0] is None:  # build_data makes the training set first
        _TRAIN[0] = self


LabeledImages.__init__ = _init_recording
LabeledImages.__getitem__ = _poisoned_getitem

if __name__ == "__main__":
    exit_process(cli())  # as tools/train.py ends
