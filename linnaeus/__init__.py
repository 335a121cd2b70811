"""linnaeus: hierarchical image classification runner with a trustworthy checkpoint system."""

import os as _os

__version__ = "0.1.0"

# This process and its parent when the package was first imported: for a torchrun worker, the
# launcher. runner.launcher_watch starts seconds later, after the heavy imports; a launcher that
# died in between has already been replaced as the parent (by init or a subreaper) by then.
_IMPORTED_BY = (_os.getpid(), _os.getppid())
