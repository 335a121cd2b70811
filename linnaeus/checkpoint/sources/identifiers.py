"""Identifiers are data, never flags: the checks every identifier passes before it is used.

A checkpoint identifier, a bucket field or a CLI argument may come from a shared config that
someone else wrote. rclone reads an argument starting with ``-`` as an option (``-vv:x.pth``
made it print its usage; ``--dump=auth:...`` or ``--log-file=...`` would print credentials or
write a file where the value says), and an on-the-fly remote's connection string can set
options that make rclone run a local program (``:webdav,bearer_token_command='...':x``;
checked: rclone 1.75 runs it). Our rclone calls put ``--`` between options and paths
(:mod:`.rclone`); on top of that, values are refused here, with an error naming the value, when:

- they start with ``-`` (a local file named so is still reachable as ``./-name``);
- they hold control characters (NUL cannot even be passed to a program; the others make a
  log line or a file name lie), bidirectional-formatting characters (the name shown is not
  the name used), or unpaired surrogates (bytes that are not valid UTF-8);
- they are longer than any real identifier (:data:`MAX_IDENTIFIER_BYTES`), or name a file
  longer than the file system allows next to its sidecar and lock (:data:`MAX_NAME_BYTES`);
- a remote name breaks rclone's rule for remote names, or a connection string sets an option
  that runs a local program (:data:`COMMAND_OPTIONS`);
- a bucket name or path prefix climbs out of the bucket (``..``).

The functions raise :class:`UnsafeIdentifierError`; the config layer turns them into a
``ConfigError`` naming the key (``linnaeus/config/identifiers.py``).
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import CheckpointError
from .base import redact

MAX_IDENTIFIER_BYTES = 2048
# NAME_MAX is 255 bytes; the cache also holds <name>.sha256 and .<name>.lock next to the file.
MAX_NAME_BYTES = 240

# Bidirectional formatting (LRE..RLO, LRI..PDI, LRM/RLM/ALM): invisible, and they reorder what is shown.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
# rclone's rule, as rclone 1.75 states it when it refuses a name: letters, digits, '_', '-', '.',
# '+', '@' and space; not starting with '-' or space, not ending with space.
_REMOTE_NAME = re.compile(r"^[\w.+@][\w.+@ -]*(?<! )$")
_BACKEND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: Connection-string options that make rclone start a local program (sftp ``ssh``, webdav
#: ``bearer_token_command``, sftp ``*sum_command`` / ``server_command``), also with a backend
#: prefix (``sftp_ssh``). A remote that needs one is configured in rclone.conf, which a shared
#: YAML value cannot change.
COMMAND_OPTIONS = re.compile(r"^(.*_)?ssh$|command$")
# Every option of a connection string follows a ',', also inside another option's value: wrapping
# backends (alias, crypt, union, combine, chunker, hasher...) parse ``remote=':webdav,...:'`` again.
_ANY_OPTION = re.compile(r",\s*([A-Za-z0-9_ -]+?)\s*(?=[=,:'\"]|$)")


class UnsafeIdentifierError(CheckpointError):
    """An identifier, file name or remote that is refused before anything uses it."""


def _shown(value: str) -> str:
    # repr() shows control, invisible and bidi characters as escapes; long values are cut.
    text = repr(redact(value))
    return text if len(text) <= 160 else text[:150] + "...'"


def check_text(value: str, what: str) -> str:
    """Refuse control, bidirectional-formatting and surrogate characters, and excessive length.

    ``what`` says what the value is ("checkpoint identifier", "ENV.INPUT.BUCKET.NAME", ...).
    Returns ``value``."""
    for i, ch in enumerate(value):
        cat = unicodedata.category(ch)
        if cat == "Cc" or ch in _BIDI or cat == "Cs":
            kind = ("a bidirectional-formatting character" if ch in _BIDI else
                    "an unpaired surrogate (bytes that are not valid UTF-8)" if cat == "Cs" else "a control character")
            raise UnsafeIdentifierError(
                f"{what} {_shown(value)} contains {kind} (U+{ord(ch):04X} at position {i}). Identifiers are "
                "file names, paths and URIs, which never need one; remove it."
            )
    size = len(value.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise UnsafeIdentifierError(
            f"{what} {_shown(value)} is {size} bytes long, more than the {MAX_IDENTIFIER_BYTES} bytes any "
            "path, URI or remote path needs."
        )
    return value


def check_not_option(value: str, what: str, hint: str | None = None) -> str:
    """Refuse a value that starts with ``-``: rclone (and most programs) would read it as an option.
    ``hint`` says what to do instead (default: the ``./-name`` spelling of a local file)."""
    if value.startswith("-"):
        hint = hint or "for a local file whose name starts with '-', write './" + value[:40] + "'."
        raise UnsafeIdentifierError(
            f"{what} {_shown(value)} starts with '-', which rclone would read as an option, not a name; {hint}"
        )
    return value


def check_identifier(value: str, what: str = "checkpoint identifier") -> str:
    """The checks every identifier passes (:func:`check_text`, :func:`check_not_option`)."""
    return check_not_option(check_text(value, what), what)


def check_file_name(name: str, where: str) -> str:
    """``name`` is one usable file name (what a download is stored as): not empty, not ``.`` or
    ``..``, no ``/``, short enough for the file system next to its sidecar. ``where`` names the
    object it came from."""
    check_text(name, f"file name of {where}:")
    if name in ("", ".", "..") or "/" in name:
        raise UnsafeIdentifierError(
            f"{where} does not end in a file name (its last part is {_shown(name)}); give the path of a file."
        )
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeIdentifierError(
            f"{where}: file name {_shown(name)} is longer than {MAX_NAME_BYTES} bytes, more than the file system "
            "allows for the file and its .sha256 sidecar. Rename the object."
        )
    return name


def check_path_parts(path: str, what: str) -> str:
    """Every ``/``-separated part of a local or bucket path fits a file name (:data:`MAX_NAME_BYTES`)."""
    for part in path.split("/"):
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise UnsafeIdentifierError(
                f"{what} {_shown(path)} has a part longer than {MAX_NAME_BYTES} bytes, more than the file system "
                "allows for a file and its .sha256 sidecar."
            )
    return path


def _split_options(spec: str) -> tuple[str, list[str]]:
    """``name,opt=v,opt2='a,b'`` -> (``name``, [``opt``, ``opt2``]); quotes as rclone reads them."""
    parts, current, quote = [], "", ""
    for ch in spec:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    keys = [p.split("=", 1)[0].strip().lower().replace("-", "_") for p in parts[1:]]
    return parts[0], keys


def check_remote(remote: str, where: str) -> str:
    """``remote`` (``name``, ``name,opts`` or ``:backend[,opts]``, with or without the trailing
    ``:``) follows rclone's naming rule and sets no option that runs a local program."""
    check_text(remote, where)  # a leading '-' breaks the name rule below, which says so
    spec = remote[:-1] if remote.endswith(":") else remote
    head, keys = _split_options(spec)
    if head.startswith(":"):
        if not _BACKEND_NAME.match(head[1:]):
            raise UnsafeIdentifierError(
                f"{where}: {_shown(head)} is not an rclone backend name (letters, digits, '_', '.', '-')."
            )
    elif not _REMOTE_NAME.match(head):
        raise UnsafeIdentifierError(
            f"{where}: {_shown(head)} is not a valid rclone remote name: letters, digits, '_', '-', '.', '+', '@' "
            "and space, not starting with '-' or space and not ending with space (rclone's rule)."
        )
    nested = [k.strip().lower().replace("-", "_") for k in _ANY_OPTION.findall(spec)]
    running = [k for k in (*keys, *nested) if COMMAND_OPTIONS.search(k)]
    if running:
        raise UnsafeIdentifierError(
            f"{where}: the connection-string option {running[0]!r} makes rclone run a local program, which an "
            "identifier may not do. Configure such a remote in rclone.conf and name it instead."
        )
    return remote


def check_bucket_path(value: str, what: str) -> str:
    """A bucket name or path prefix: an identifier that stays inside the bucket (no ``..`` part)."""
    check_not_option(check_text(value, what), what, "bucket and folder names never do; rename it.")
    if ".." in value.replace("\\", "/").split("/"):
        raise UnsafeIdentifierError(
            f"{what} {_shown(value)} has a '..' part, which would leave the bucket's folder. Name the folder directly."
        )
    return value


def check_bucket(remote: str, name: str, path_prefix: str,
                 labels: tuple[str, str, str] = ("bucket REMOTE", "bucket NAME", "bucket PATH_PREFIX")) -> None:
    """A bucket's REMOTE (empty allowed: the caller's default), NAME and PATH_PREFIX; each error
    starts with the field's label (the config layer passes its keys, ``ENV.INPUT.BUCKET.REMOTE``...)."""
    if remote.strip():
        check_remote(remote.strip(), labels[0])
    check_bucket_path(name, labels[1])
    check_bucket_path(path_prefix, labels[2])
