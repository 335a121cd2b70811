"""The architecture holds: import-linter's contracts (.importlinter: the checkpoint library's layers,
its faces, no cycles, nothing of the runner imported by the library) are kept, each one catches
the violation it is about, and no module of linnaeus grows past 400 lines."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO, VENV_BIN

MAX_LINES = 400


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(VENV_BIN / "lint-imports"), "--no-cache", "--config", str(root / ".importlinter")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_contract_is_kept() -> None:
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout, proc.stdout


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_each_contract_catches_its_violation(tmp_path: Path) -> None:
    shutil.copytree(REPO / "linnaeus", tmp_path / "linnaeus", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    ck = tmp_path / "linnaeus" / "checkpoint"
    _append(ck / "disk" / "durable.py", "from ..formats import format_of  # noqa")  # up a layer, and a cycle
    _append(ck / "errors.py", "import linnaeus.config  # noqa")  # the library importing the runner
    _append(tmp_path / "linnaeus" / "runner" / "seed.py",
            "from linnaeus.checkpoint.formats.file.commit import commit_file  # noqa")  # past a face
    _append(ck / "formats" / "file" / "names.py",
            "from ..sharded.manifest import MANIFEST  # noqa")  # one format importing the other
    proc = _lint(tmp_path)
    out = " ".join((proc.stdout + proc.stderr).split())  # the report wraps long contract names
    assert proc.returncode != 0, out
    for contract, offence in (
            ("The checkpoint library's layers import only downward", "linnaeus.checkpoint.disk.durable"),
            ("No import cycles anywhere in the checkpoint library", "linnaeus.checkpoint.disk"),
            ("The checkpoint library imports nothing of the runner around it", "linnaeus.config"),
            ("enters it through its faces", "linnaeus.checkpoint.formats.file.commit"),
            ("formats: the registry over two independent formats", "linnaeus.checkpoint.formats.sharded")):
        assert f"{contract}" in out and offence in out, (contract, out[-4000:])
    assert out.count("BROKEN") >= 5, out[-4000:]


def test_no_module_is_longer_than_400_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in sorted((REPO / "linnaeus").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (each with one job its name says): {long}"
