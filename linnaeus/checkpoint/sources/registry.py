"""One registry from URI scheme to source factory (timm-style ``register_source``).

Built-ins: ``file``, ``http``, ``https``, ``s3``, ``gs``, ``az``, ``b2``; and any rclone path
``remote:path`` / ``:backend,opts:path`` (no ``//`` after the colon). Users add schemes::

    from linnaeus.checkpoint.sources import register_source, LocalSource
    register_source("nfs", lambda uri: LocalSource("/mnt/nfs/" + uri[len("nfs://"):]))
"""

from __future__ import annotations

import re
from typing import Callable

from ..errors import CheckpointNotFoundError
from .base import Source, redact
from .rclone_source import RcloneSource

SourceFactory = Callable[[str], Source]

_FACTORIES: dict[str, SourceFactory] = {}
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# rclone's own rule: a remote name before the first ':' (letters, digits, _ . - space, or
# an on-the-fly ':backend' with optional ',opts'), and no '/' before that colon.
_RCLONE_RE = re.compile(r"""^(:?[\w.\- ]*[\w.-](,(?:'[^']*'|"[^"]*"|[^:/'"])*)?):""")


def register_source(scheme: str, factory: SourceFactory | None = None, *, overwrite: bool = False):
    """Register ``factory(uri) -> Source`` for ``<scheme>://`` identifiers.

    Usable directly or as a decorator (``@register_source("myscheme")``). Registering a scheme
    twice is an error unless ``overwrite=True`` (so two plugins cannot silently shadow each other).
    """
    scheme = scheme.lower().rstrip(":/")
    if not _SCHEME_RE.match(scheme + "://"):
        raise ValueError(f"invalid URI scheme {scheme!r}: letters, digits, '+', '-', '.'; starting with a letter.")

    def add(fn: SourceFactory) -> SourceFactory:
        if scheme in _FACTORIES and not overwrite and _FACTORIES[scheme] is not fn:
            raise ValueError(f"a source for scheme {scheme!r} is already registered; pass overwrite=True to replace it.")
        _FACTORIES[scheme] = fn
        return fn

    return add(factory) if factory is not None else add


def unregister_source(scheme: str) -> None:
    """Remove a registered scheme (mainly for tests and plugins that clean up)."""
    _FACTORIES.pop(scheme.lower(), None)


def registered_schemes() -> list[str]:
    return sorted(_FACTORIES)


def uri_scheme(identifier: str) -> str | None:
    """``"s3"`` for ``s3://...``; None when the identifier has no ``scheme://``."""
    m = _SCHEME_RE.match(identifier)
    return m.group(1).lower() if m else None


def is_rclone_path(identifier: str) -> bool:
    """True for ``remote:path`` and ``:backend[,opts]:path`` (rclone's syntax)."""
    return uri_scheme(identifier) is None and bool(_RCLONE_RE.match(identifier))


def is_uri(identifier: str) -> bool:
    """Whether ``identifier`` names a remote object (any ``scheme://`` or an rclone path)."""
    return uri_scheme(identifier) is not None or is_rclone_path(identifier)


def get_source(uri: str) -> Source:
    """The :class:`Source` for a URI or rclone path; CheckpointNotFoundError for unknown schemes."""
    scheme = uri_scheme(uri)
    if scheme is None:
        if is_rclone_path(uri):
            return RcloneSource(uri)
        raise ValueError(f"{redact(uri)!r} is not a URI or rclone remote path.")
    factory = _FACTORIES.get(scheme)
    if factory is None:
        raise CheckpointNotFoundError(
            f"{redact(uri)}: no source registered for scheme '{scheme}://'. Registered: "
            f"{', '.join(s + '://' for s in registered_schemes())}, and rclone paths 'remote:path'. "
            "Register one with linnaeus.checkpoint.sources.register_source(scheme, factory)."
        )
    return factory(uri)
