"""Identifiers are data, never flags: what a config value or CLI argument can make rclone do.

Every rclone call is recorded through a wrapper that logs its argv and then execs the real
binary (tests/helpers/rclone_argv.py). The checks: no option our code did not write ever
reaches rclone, no file is written outside the cache / the run dir / the bucket's folder, and
bad input ends in a named error (CheckpointError, ConfigError), never another traceback.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from linnaeus.checkpoint import CheckpointError, resolve
from linnaeus.checkpoint.sources import rclone_binary, run_rclone_bytes
from tests.fixtures_rclone import RcloneServer, rclone_isolated  # noqa: F401  (fixture)
from tests.helpers.rclone_argv import REAL_RCLONE, ArgvLog, foreign_options, record_rclone_argv


@pytest.fixture
def argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rclone_isolated: None) -> Iterator[ArgvLog]:
    log = record_rclone_argv(tmp_path, monkeypatch)
    yield log
    rclone_binary.cache_clear()


def _assert_only_our_options(log: ArgvLog) -> None:
    for argv in log.calls():
        assert not foreign_options(argv), f"rclone got options our code did not write: {argv}"


# ----------------------------------------------------------------------------- the reported case
def test_dash_identifier_never_reaches_rclone_as_an_option(tmp_path: Path, argv_log: ArgvLog) -> None:
    with pytest.raises(CheckpointError) as info:
        resolve("-vv:x.pth", cache_dir=tmp_path / "cache", retries=1)
    assert "-vv:x.pth" in str(info.value)
    _assert_only_our_options(argv_log)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("x.pth"))


# ----------------------------------------------------------------------------- rclone honours "--"
def _dash_files(tmp_path: Path) -> Path:
    (tmp_path / "-src.pth").write_bytes(b"data")
    return tmp_path


# Each subcommand our code runs, with a path that starts with '-' after the options.
_SUBCOMMANDS = {
    "copyto": (["copyto"], ["-src.pth", "-copy.pth"]),
    "moveto": (["moveto"], ["-copy.pth", "-moved.pth"]),
    "rcat": (["rcat"], ["-rcat.pth"]),
    "cat": (["cat", "--count", "3"], ["-src.pth"]),
    "cat --include": (["cat", "--max-depth", "1", "--include", "*.pth"], ["."]),
    "lsjson --stat --hash": (["lsjson", "--stat", "--hash"], ["-src.pth"]),
    "lsjson --files-only": (["lsjson", "--files-only"], ["."]),
    "lsjson -R --hash": (["lsjson", "--files-only", "--hash", "-R"], ["."]),
    "copy --exclude": (["copy", "--exclude", "/manifest.json"], ["-dir", "-dircopy"]),
    "deletefile": (["deletefile"], ["-src.pth"]),
    "purge": (["purge"], ["-dir"]),
}


@pytest.mark.parametrize("sub", list(_SUBCOMMANDS))
def test_installed_rclone_honours_double_dash(sub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              rclone_isolated: None) -> None:
    """The version installed in .venv reads every argument after ``--`` as a path, for each
    subcommand we use: a local file named ``-src.pth`` is a file, not ``-s -r -c ...``."""
    monkeypatch.chdir(_dash_files(tmp_path))
    if sub == "moveto":
        (tmp_path / "-copy.pth").write_bytes(b"data")
    if sub in ("copy --exclude", "purge"):
        (tmp_path / "-dir").mkdir()
        (tmp_path / "-dir" / "shard.distcp").write_bytes(b"data")
        (tmp_path / "-dir" / "manifest.json").write_bytes(b"{}")
    options, paths = _SUBCOMMANDS[sub]
    out = run_rclone_bytes([*options, "--", *paths], what=sub, stdin=b"data" if sub == "rcat" else None)
    if sub.startswith("cat"):
        assert out.startswith(b"dat")
    if sub.startswith("lsjson"):
        assert b'"-src.pth"' in out
    if sub in ("copyto", "moveto", "rcat"):
        assert (tmp_path / paths[-1]).read_bytes() == b"data"
    if sub == "copy --exclude":
        assert sorted(os.listdir(tmp_path / "-dircopy")) == ["shard.distcp"]
    if sub in ("deletefile", "purge"):
        assert not (tmp_path / paths[-1]).exists()
    # Without "--" the same path is parsed as flags: the separator is what makes it a path.
    if paths[0].startswith("-"):
        proc = subprocess.run([REAL_RCLONE, *options, *paths], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode != 0 and ("unknown shorthand flag" in proc.stderr or "arguments" in proc.stderr), proc.stderr


def test_spawn_refuses_an_argv_without_double_dash(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no '--' between options and paths"):
        run_rclone_bytes(["lsjson", str(tmp_path)], what="listing")


def test_upload_of_a_local_file_named_like_an_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     argv_log: ArgvLog) -> None:
    """``linnaeus-ckpt upload -- -vv.pth``: the local source path reaches ``rclone copyto`` after ``--``."""
    from linnaeus.checkpoint import RemoteRun
    from linnaeus.checkpoint.disk import digest_file
    from linnaeus.checkpoint.sources import write_sidecar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "-vv.pth").write_bytes(b"weights")
    write_sidecar(tmp_path / "-vv.pth", digest_file(tmp_path / "-vv.pth"))
    remote = RemoteRun(f":local:{tmp_path / 'bucket'}/")
    assert remote.upload(Path("-vv.pth"))
    assert (tmp_path / "bucket" / "-vv.pth").read_bytes() == b"weights"
    _assert_only_our_options(argv_log)


# ----------------------------------------------------------------------------- the sandbox
@dataclass
class Sandbox:
    """Everything a fuzzed call may touch, under one tmp dir:

    - ``cwd``: the current directory (holds ``local.pth`` and ``-local.pth``);
    - ``cache``: ``CACHE_DIR``, where downloads may land;
    - ``run``: a run dir (``run/checkpoints`` holds a committed checkpoint to upload);
    - ``remote``: the root of the rclone remote ``fz`` (type alias, a local folder) and of a
      real ``rclone serve http`` on 127.0.0.1 (``http``); the bucket is ``bkt``;
    - ``pwned``: a file that exists only if something ran a command a value smuggled in.
    """

    root: Path
    cwd: Path
    cache: Path
    run: Path
    remote: Path
    pwned: Path
    http: str
    log: ArgvLog

    def fill(self, text: str) -> str:
        return text.replace("PWNED", str(self.pwned)).replace("HTTP/", self.http + "/").replace("ROOT/", f"{self.root}/")

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every file and folder under the sandbox except the cache, the run dir and our logs."""
        skip = {self.cache, self.run, self.log.directory, self.root / "logs"}
        seen: dict[str, tuple[int, int]] = {}
        for top, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if Path(top, d) not in skip]
            for n in dirs + files:
                st = os.lstat(os.path.join(top, n))
                seen[os.path.relpath(os.path.join(top, n), self.root)] = (st.st_size, st.st_mtime_ns if n in files else 0)
        return seen


def _seed(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    (folder / (name + ".sha256")).write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv_log: ArgvLog) -> Iterator[Sandbox]:
    root = tmp_path
    (root / "logs").mkdir()
    box = Sandbox(root=root, cwd=root / "cwd", cache=root / "cache", run=root / "run", remote=root / "remote",
                  pwned=root / "pwned", http="", log=argv_log)
    for name in ("model.pth", "-dash.pth", "latest", "a b.pth", "model[1].pth", "\u00fcn\u00ef.pth"):
        _seed(box.remote / "bkt", name, name.encode() * 10)
    _seed(box.remote, "escape.pth", b"outside the bucket")
    _seed(box.cwd, "local.pth", b"local")
    _seed(box.cwd, "-local.pth", b"local")
    _seed(box.run / "checkpoints", "checkpoint_epoch_1.pth", b"epoch 1")
    monkeypatch.chdir(box.cwd)
    monkeypatch.setenv("RCLONE_CONFIG_FZ_TYPE", "alias")
    monkeypatch.setenv("RCLONE_CONFIG_FZ_REMOTE", str(box.remote))
    # s3:// URIs go to a port nobody listens on: refused at once, never the internet.
    for var in ("LINNAEUS_S3_ENDPOINT", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("LINNAEUS_CACHE_DIR", "LINNAEUS_BUCKET_REMOTE", "LINNAEUS_BUCKET_NAME", "LINNAEUS_BUCKET_PREFIX",
                "B2_APPLICATION_KEY_ID", "B2_APPLICATION_KEY"):
        monkeypatch.delenv(var, raising=False)
    server = RcloneServer("http", box.remote, root / "logs" / "http.log").start()
    box.http = server.url
    try:
        yield box
    finally:
        server.stop()
    assert not box.pwned.exists(), "a value made something run a command"


def _fine_message(text: str) -> None:
    """A named error's message: non-empty, and no raw control or bidi character to garble a terminal."""
    assert text.strip()
    assert not any(ch in text for ch in "\x00\x1b\r\u202e\u2066\u200f"), ascii(text)


def _check_writes(box: Sandbox, before: dict, allowed: tuple[Path, ...] = ()) -> None:
    after = box.snapshot()
    changed = [p for p, v in after.items() if before.get(p) != v]
    outside = [p for p in changed if not any((box.root / p).is_relative_to(a) for a in allowed)]
    assert not outside, f"written outside the cache and run dir: {outside}"
    for argv in box.log.calls():
        assert not foreign_options(argv), f"rclone got options our code did not write: {argv}"
    assert not box.pwned.exists(), "a value made something run a command"


# ----------------------------------------------------------------------------- targeted cases
def test_percent_encoded_traversal_in_a_url_stays_out_of_the_filesystem(sandbox: Sandbox) -> None:
    """``..%2F`` decodes to ``../``: the file is stored under its last part, inside the cache."""
    before = sandbox.snapshot()
    path = resolve(sandbox.http + "/bkt/..%2F..%2F..%2Fescape.pth", cache_dir=sandbox.cache, retries=1)
    assert path.is_relative_to(sandbox.cache / "uri") and path.name == "escape.pth"
    _check_writes(sandbox, before)
    assert not (sandbox.root / "escape.pth").exists()
    for name in ("..", "%2E%2E", ".%2E"):  # a URL whose last part is no file name at all
        with pytest.raises(CheckpointError, match="does not end in a file name") as info:
            resolve(f"{sandbox.http}/bkt/{name}", cache_dir=sandbox.cache, retries=1)
        _fine_message(str(info.value))
    _check_writes(sandbox, before)


def test_connection_string_option_that_runs_a_program_is_refused(sandbox: Sandbox) -> None:
    """rclone's webdav backend runs ``bearer_token_command`` (and sftp its ``ssh``): from a YAML value."""
    webdav = f":webdav,url='{sandbox.http}',bearer_token_command='touch {sandbox.pwned}':"
    for ident in (webdav + "bkt/model.pth",
                  f":sftp,host=127.0.0.1,ssh='touch {sandbox.pwned}':model.pth",
                  f':alias,remote="{webdav}":bkt/model.pth',  # nested: alias parses its remote again
                  f"fz,sftp_ssh='touch {sandbox.pwned}':bkt/model.pth"):
        with pytest.raises(CheckpointError, match="runs? a local program"):
            resolve(ident, cache_dir=sandbox.cache, retries=1)
    assert not sandbox.pwned.exists()


def test_bucket_fields_that_climb_or_look_like_options(sandbox: Sandbox) -> None:
    cases = {
        ("-vv", "bkt", ""): "bucket REMOTE",
        ("fz", "--dump=auth", ""): "bucket NAME",
        ("fz", "bkt", "../"): "bucket PATH_PREFIX",
        ("fz", "..", ""): "bucket NAME",
    }
    for (remote, name, prefix), field in cases.items():
        bucket = {"ENABLED": True, "REMOTE": remote, "NAME": name, "PATH_PREFIX": prefix}
        with pytest.raises(CheckpointError, match=field):
            resolve("escape.pth", cache_dir=sandbox.cache, bucket=bucket, retries=1)
    assert not (sandbox.cache / "escape.pth").exists()
    # A name that starts with '-' is still reachable as ./-name, from the bucket into the cache.
    good = {"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": ""}
    assert resolve("./-dash.pth", cache_dir=sandbox.cache, bucket=good, retries=1) == sandbox.cache / "-dash.pth"
    assert (sandbox.cache / "-dash.pth").read_bytes() == b"-dash.pth" * 10


# ----------------------------------------------------------------------------- the fuzz
# Pieces that have broken argv builders, path joins and terminals elsewhere; hypothesis glues
# them together with arbitrary text. PWNED and HTTP/ are filled in per sandbox.
ATOMS = [
    "-vv", "-", "--", "--dump=auth", "--log-file=PWNED", "--config=/dev/null", "-o", "--include=*", "-vv:",
    "..", "../", "..%2F", "%2e%2e%2f", "..\\", "\\", "C:\\", "/", "./", "~", "~/", ".", "%00", "%",
    "latest", "", " ", "model.pth", "-dash.pth", "local.pth", "-local.pth", "bkt/", "model[1].pth", "a b.pth",
    "*", "?", "[!a]", "{a,b}", "**", "$(touch PWNED)", "`touch PWNED`", ";touch PWNED;", "|", "&&", "'", '"',
    "\x00", "\n", "\r", "\t", "\x1b[2J", "\x7f", "\x85", "\u202e", "\u2066", "\u200f", "\ufeff",
    "\u0430", "\uff0f", "\u2215", "e\u0301", "\U0001f600", "\udcff", "\u00fcn\u00ef.pth",
    "fz:", "fz:bkt/", ":local:", "nope:", "fz,ssh=x:", ":local,links:",
    ":webdav,url='HTTP/',bearer_token_command='touch PWNED':", ":sftp,ssh='touch PWNED':",
    ":alias,remote=\":webdav,url='HTTP/',bearer_token_command='touch PWNED':\":",
    "HTTP/", "HTTP/bkt/", "file://", "file:///", "s3://", "s3://bkt/", "unknown://x/",
    "x" * 300, "\u00e9" * 130,
]


def _texts(max_parts: int = 5) -> st.SearchStrategy[str]:
    part = st.one_of(st.sampled_from(ATOMS), st.text(max_size=8))
    return st.lists(part, max_size=max_parts).map("".join)


# Heads that make the rest of a value reach rclone: a remote, a URL, a configured bucket folder.
HEADS = ["fz:bkt/", "fz:", "fz:bkt/sub/", "HTTP/bkt/", "HTTP/", "nope:bkt/", "s3://bkt/", "file://ROOT/remote/bkt/",
         "./", ":local:ROOT/remote/bkt/"]


# Values that name real objects, so that some fuzzed bucket settings still find them.
NAMES = ["model.pth", "fz:bkt/model.pth", "HTTP/bkt/model.pth", "HTTP/bkt/a%20b.pth", "latest", "model[1].pth",
         "./-dash.pth", "local.pth", "./-local.pth", "\u00fcn\u00ef.pth", "sub/../model.pth"]


def _identifiers() -> st.SearchStrategy[str]:
    return st.one_of(_texts(), st.tuples(st.sampled_from(HEADS), _texts(3)).map("".join), st.sampled_from(NAMES))


def _bucket_fields() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "ENABLED": st.sampled_from([True, True, False]),
        "REMOTE": st.one_of(st.just("fz"), _texts(3)),
        "NAME": st.one_of(st.just("bkt"), _texts(3)),
        "PATH_PREFIX": st.one_of(st.just(""), _texts(3)),
    })


# derandomize: a fixed seed, the same examples on every run (no example database); each test
# bounds its own max_examples to keep the file well under a minute on 2 cores.
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _inside(path: Path, folder: Path) -> bool:
    return os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)


@settings(FUZZ, max_examples=100)
@example(ident="-vv:x.pth", bucket={"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": ""})
@example(ident="model.pth", bucket={"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": ""})
@example(ident="HTTP/bkt/a b.pth", bucket={"ENABLED": False, "REMOTE": "", "NAME": "", "PATH_PREFIX": ""})
@example(ident="fz:bkt/model[1].pth", bucket={"ENABLED": False, "REMOTE": "", "NAME": "", "PATH_PREFIX": ""})
@example(ident="latest", bucket={"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": ""})
@example(ident="x.pth", bucket={"ENABLED": True, "REMOTE": "--dump=auth", "NAME": "bkt", "PATH_PREFIX": "../"})
@given(ident=_identifiers(), bucket=_bucket_fields())
def test_fuzz_resolve(sandbox: Sandbox, ident: str, bucket: dict) -> None:
    ident = sandbox.fill(ident)
    bucket = {k: sandbox.fill(v) if isinstance(v, str) else v for k, v in bucket.items()}
    sandbox.log.clear()
    before = sandbox.snapshot()
    try:
        path = resolve(ident, cache_dir=sandbox.cache, bucket=bucket, retries=1, progress=False)
    except CheckpointError as e:
        _fine_message(str(e))
        event(f"{type(e).__name__}" + (" after rclone" if sandbox.log.calls() else ""))
    else:
        event("resolved" + (" via rclone" if sandbox.log.calls() else ""))
        assert path.is_file()
        named = Path(os.path.expanduser(ident.strip())).absolute()  # a local path names itself
        assert _inside(path, sandbox.cache) or path == named, (ident, path)
    _check_writes(sandbox, before, allowed=(sandbox.cache,))


CONFIG_KEYS = ["TRAIN.RESUME", "MODEL.PRETRAINED", "MODEL.PRETRAINED_CONVNEXT", "MODEL.PRETRAINED_ROPEVIT",
               *(f"ENV.{side}.BUCKET.{field}" for side in ("INPUT", "OUTPUT") for field in ("REMOTE", "NAME", "PATH_PREFIX"))]


@settings(FUZZ, max_examples=200)
@example(key="TRAIN.RESUME", value="-vv:x.pth")
@example(key="ENV.INPUT.BUCKET.REMOTE", value=":webdav,bearer_token_command='touch x':")
@example(key="ENV.OUTPUT.BUCKET.PATH_PREFIX", value="ckpts/../../")
@given(key=st.sampled_from(CONFIG_KEYS), value=_texts())
def test_fuzz_config_keys(key: str, value: str) -> None:
    """Each identifier key and bucket field: a ConfigError naming the key, or a value the
    library accepts as it is (what the config lets through never fails later as unsafe)."""
    from linnaeus.checkpoint import BucketConfig
    from linnaeus.checkpoint.sources import UnsafeIdentifierError, check_identifier
    from linnaeus.config.defaults import get_default_config
    from linnaeus.config.errors import ConfigError
    from linnaeus.config.validate import validate

    cfg = get_default_config()
    cfg.defrost()
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value
    try:
        validate(cfg)
    except ConfigError as e:
        assert str(e).startswith(key), str(e)
        _fine_message(str(e))
        return
    try:
        if "BUCKET" in key:
            BucketConfig.from_any(node).folder()
        elif value.strip():
            check_identifier(value.strip())
    except UnsafeIdentifierError as e:
        pytest.fail(f"config accepted {key}={value!r}, the library refuses it: {e}")
    except CheckpointError:
        pass  # not about safety (a blank REMOTE is Backblaze B2, whose variables are not set here)


def test_config_file_with_a_dash_identifier_names_the_key(tmp_path: Path) -> None:
    from linnaeus.config import load_config
    from linnaeus.config.errors import ConfigError

    cfg = tmp_path / "shared.yaml"
    cfg.write_text("TRAIN:\n  RESUME: '--log-file=/tmp/x:y.pth'\n")
    with pytest.raises(ConfigError, match=r"^TRAIN\.RESUME .*starts with '-'"):
        load_config(str(cfg))


# ----------------------------------------------------------------------------- linnaeus-ckpt
CLI_COMMANDS = ["resolve", "download", "upload", "verify", "inspect"]


def _cli(text: str) -> str:
    return text.replace("\x00", "")  # a command line cannot carry NUL (execve's strings end there)


@settings(FUZZ, max_examples=80)
@example(command="resolve", value="-vv:x.pth", bucket={"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": ""},
         flag=False)
@example(command="download", value="model.pth", bucket={"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": ""},
         flag=True)
@example(command="upload", value="", bucket={"ENABLED": True, "REMOTE": "fz", "NAME": "bkt", "PATH_PREFIX": "up/"},
         flag=True)
@example(command="upload", value="--dump=auth", bucket={"ENABLED": True, "REMOTE": "--dump=auth", "NAME": "bkt",
                                                         "PATH_PREFIX": ""}, flag=True)
@given(command=st.sampled_from(CLI_COMMANDS), value=_identifiers(), bucket=_bucket_fields(), flag=st.booleans())
def test_fuzz_ckpt_cli(sandbox: Sandbox, capsys: pytest.CaptureFixture, restore_linnaeus_logger: None,
                       command: str, value: str, bucket: dict, flag: bool) -> None:
    """``linnaeus-ckpt <command>`` in-process with generated names and remotes: exit 0, or a clean
    non-zero with its message, never a traceback; rclone only ever gets our own options."""
    from linnaeus.cli import ckpt

    value = _cli(sandbox.fill(value))
    b = {k: _cli(sandbox.fill(v)) if isinstance(v, str) else v for k, v in bucket.items()}
    where = [f"--remote={b['REMOTE']}", f"--bucket={b['NAME']}", f"--prefix={b['PATH_PREFIX']}"]
    allowed = [sandbox.cache, sandbox.run]
    if command in ("resolve", "download"):
        argv = [command, *where, f"--cache-dir={sandbox.cache}", "--retries=1", "--no-progress"]
        argv += [] if b["ENABLED"] else ["--no-bucket"]
        argv += [f"--to={sandbox.run / 'dl'}"] if command == "download" and flag else []
        argv += ["--", value]
    elif command == "upload":
        # flag: upload the run's committed checkpoint; else whatever the value names.
        path = str(sandbox.run / "checkpoints" / "checkpoint_epoch_1.pth") if flag else value
        argv = ["upload", *where, f"--experiment={'' if flag else _cli(value)[:40]}", "--", path]
        allowed.append(sandbox.remote)  # the bucket is where an upload writes
    else:
        argv = [command, "--", value]
    sandbox.log.clear()
    before = sandbox.snapshot()
    try:
        rc = ckpt.main(argv)
    except SystemExit as e:  # argparse's own usage error
        rc = e.code
    out, err = capsys.readouterr()
    event(f"{command} exit {rc}")
    assert rc in (0, 1, 2), (argv, rc, err)
    assert "Traceback" not in out + err
    if rc != 0:
        # One error line says what is wrong (a not-found error then lists the places it looked).
        message = [ln for ln in (out + err).splitlines() if ln.strip() and not ln.startswith(("usage:", " "))]
        assert message, (argv, out, err)
        first = ("error: ",) if command in ("resolve", "download", "upload") else (
            f"linnaeus-ckpt {command}: error: ", "BAD ", "no checkpoint files in ")
        assert message[0].startswith(first) or message[0].startswith(f"linnaeus-ckpt {command}: error: "), message
        if command in ("resolve", "download"):
            # (upload/verify/inspect echo a local path as given: the user's own input, not checked here)
            _fine_message(out + err)
    _check_writes(sandbox, before, allowed=tuple(allowed))


def test_ckpt_cli_refuses_a_shared_config_or_variable_that_smuggles_options(
        sandbox: Sandbox, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
        restore_linnaeus_logger: None) -> None:
    from linnaeus.cli import ckpt

    shared = sandbox.root / "logs" / "shared.yaml"
    shared.write_text("ENV:\n  INPUT:\n    BUCKET:\n      ENABLED: true\n      REMOTE: '--dump=auth'\n      NAME: bkt\n")
    assert ckpt.main(["resolve", f"--cfg={shared}", f"--cache-dir={sandbox.cache}", "--", "model.pth"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ENV.INPUT.BUCKET.REMOTE") and len(err.strip().splitlines()) == 1, err
    monkeypatch.setenv("LINNAEUS_BUCKET_REMOTE", "-vv")
    assert ckpt.main(["download", "--bucket=bkt", f"--to={sandbox.run}", "--", "model.pth"]) == 1
    err = capsys.readouterr().err
    assert "bucket REMOTE: '-vv' is not a valid rclone remote name" in err and len(err.strip().splitlines()) == 1, err
    assert sandbox.log.calls() == []  # refused before any rclone call
