"""Where checkpoint bytes come from, and how they land safely in a local file.

- :mod:`.base`: the :class:`Source` interface, :func:`redact`
- :mod:`.registry`: ``register_source(scheme, factory)``, ``get_source(uri)``
- :mod:`.local`, :mod:`.rclone`, :mod:`.cloud`: built-in sources
- :mod:`.download`: verified, locked, retried, atomic download into a directory
- :mod:`.identifiers`: which identifiers and remotes are refused before use (:class:`UnsafeIdentifierError`)
"""

from linnaeus.checkpoint.sources.base import RemoteObject, Source, TransientSourceError, redact
from linnaeus.checkpoint.sources.cloud import azure_source, b2_source, gcs_source, http_source, s3_source
from linnaeus.checkpoint.sources.download import DownloadOptions, cleanup_stale_temps, download
from linnaeus.checkpoint.sources.identifiers import UnsafeIdentifierError
from linnaeus.checkpoint.sources.local import LocalSource
from linnaeus.checkpoint.sources.rclone import RcloneSource, rclone_binary
from linnaeus.checkpoint.sources.registry import (
    get_source,
    is_rclone_path,
    is_uri,
    register_source,
    registered_schemes,
    unregister_source,
    uri_scheme,
)

for _scheme, _factory in (
    ("file", LocalSource.from_uri),
    ("http", http_source),
    ("https", http_source),
    ("s3", s3_source),
    ("gs", gcs_source),
    ("az", azure_source),
    ("b2", b2_source),
):
    register_source(_scheme, _factory, overwrite=True)

__all__ = [
    "DownloadOptions",
    "LocalSource",
    "RcloneSource",
    "RemoteObject",
    "Source",
    "TransientSourceError",
    "UnsafeIdentifierError",
    "cleanup_stale_temps",
    "download",
    "get_source",
    "is_rclone_path",
    "is_uri",
    "rclone_binary",
    "redact",
    "register_source",
    "registered_schemes",
    "unregister_source",
    "uri_scheme",
]
