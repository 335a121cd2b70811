"""The single-file format: one ``torch.save`` pickle and its ``.sha256`` sidecar (see :mod:`.format`)."""

from .commit import commit_file, commit_written
from .format import FileFormat
from .names import is_pending_sidecar_name
from .weights import TAXONOMY_METADATA, TREE_METADATA

__all__ = ["FileFormat", "TAXONOMY_METADATA", "TREE_METADATA", "commit_file", "commit_written", "is_pending_sidecar_name"]
