"""Where checkpoint bytes come from, and how they land safely in a local file.

- :mod:`.base`: the :class:`Source` interface, :func:`redact`
- :mod:`.registry`: ``register_source(scheme, factory)``, ``get_source(uri)``
- :mod:`.local`, :mod:`.rclone_source`, :mod:`.cloud`: built-in sources
- :mod:`.rclone`: the one place that runs the rclone binary (argv with ``--`` before paths)
- :mod:`.download`: verified, locked, retried, atomic download into a directory
- :mod:`.identifiers`: which identifiers and remotes are refused before use (:class:`UnsafeIdentifierError`)
"""

from .base import RemoteObject, Source, TransientSourceError, redact
from .cloud import (
    B2_DEFAULT_REMOTE,
    azure_source,
    b2_env,
    b2_source,
    gcs_source,
    http_source,
    missing_b2_credentials,
    s3_source,
)
from .download import (
    DownloadOptions,
    cleanup_stale_temps,
    download,
    lock_path_for,
    parse_remote_sidecar,
    temp_path_for,
    write_sidecar,
)
from .identifiers import (
    UnsafeIdentifierError,
    check_bucket,
    check_bucket_path,
    check_file_name,
    check_identifier,
    check_path_parts,
    check_remote,
    check_text,
)
from .local import LocalSource
from .rclone import (
    cat_matching,
    copy_within,
    copyto,
    delete_within,
    list_files,
    rcat,
    rclone_args,
    rclone_binary,
    run_rclone,
    run_rclone_bytes,
)
from .rclone_source import RcloneSource
from .registry import (
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
    "B2_DEFAULT_REMOTE", "DownloadOptions", "LocalSource", "RcloneSource", "RemoteObject", "Source",
    "TransientSourceError", "UnsafeIdentifierError", "azure_source", "b2_env", "b2_source", "cat_matching",
    "check_bucket", "check_bucket_path", "check_file_name", "check_identifier", "check_path_parts", "check_remote",
    "check_text", "cleanup_stale_temps", "copy_within", "copyto", "delete_within", "download", "gcs_source", "get_source", "http_source",
    "is_rclone_path", "is_uri", "list_files", "lock_path_for", "missing_b2_credentials",
    "parse_remote_sidecar", "rcat", "rclone_args", "rclone_binary", "redact", "register_source",
    "registered_schemes", "run_rclone", "run_rclone_bytes", "s3_source", "temp_path_for", "unregister_source",
    "uri_scheme", "write_sidecar",
]
