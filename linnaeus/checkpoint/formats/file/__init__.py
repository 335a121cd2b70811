"""The single-file format: one ``torch.save`` pickle and its ``.sha256`` sidecar (see :mod:`.format`)."""

from .commit import commit_file
from .format import FileFormat
from .names import is_pending_sidecar_name

__all__ = ["FileFormat", "commit_file", "is_pending_sidecar_name"]
