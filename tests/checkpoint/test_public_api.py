"""Every import path the README and docs name keeps working, whatever moves inside the library."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCUMENTED = [
    ("linnaeus.checkpoint", ["CheckpointManager", "CheckpointPolicy", "CheckpointTransaction", "load_model",
                             "register_strategy", "registered_strategies", "unregister_strategy", "resolve",
                             "BucketConfig", "find_resume_point", "start_timeline", "verify_checkpoint", "load_verified",
                             "list_checkpoints", "read_latest", "RemoteRun", "Stateful", "build_state",
                             "restore_state", "collect_rng_state", "restore_rng_state", "unwrap_model",
                             "CheckpointFormat", "format_of", "register_format", "testing"]),
    ("linnaeus.checkpoint.resolve", ["resolve", "BucketConfig"]),
    ("linnaeus.checkpoint.sources", ["LocalSource", "RcloneSource", "register_source", "registered_schemes",
                                     "DownloadOptions", "download"]),
    ("linnaeus.checkpoint.sources.download", ["download", "DownloadOptions"]),
    ("linnaeus.checkpoint.loading", ["read_weights", "load_weights"]),
    ("linnaeus.checkpoint.load_report", ["Expect", "write_load_reports", "LoadReport"]),
    ("linnaeus.checkpoint.resume", ["find_resume_point", "ResumePoint", "start_timeline"]),
    ("linnaeus.checkpoint.formats", ["CheckpointFormat", "format_of", "register_format", "verify_checkpoint",
                                     "load_verified", "read_info", "commit_file"]),
    ("linnaeus.utils.checkpoint_utils", ["resolve_checkpoint_path", "input_resolver"]),
]


@pytest.mark.parametrize("module,names", DOCUMENTED, ids=[m for m, _ in DOCUMENTED])
def test_documented_import_paths(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    missing = [n for n in names if not hasattr(imported, n)]
    assert not missing, f"{module} lost {missing}"


def test_every_module_path_the_docs_name_imports() -> None:
    """``linnaeus.checkpoint.x.y`` written in README.md or docs/*.md names a module or an attribute."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named = {m for path in texts for m in re.findall(r"\blinnaeus\.checkpoint(?:\.[A-Za-z_]+)+", Path(path).read_text())}
    broken = []
    for dotted in sorted(named):
        module, _, attr = dotted.rpartition(".")
        try:
            importlib.import_module(dotted)
        except ImportError:
            try:
                if not hasattr(importlib.import_module(module), attr):
                    broken.append(dotted)
            except ImportError:
                broken.append(dotted)
    assert not broken, f"the docs name paths that do not import: {broken}"


def test_the_formats_package_is_what_its_name_imports() -> None:
    """The docs name ``linnaeus.checkpoint.formats`` as a package (``formats.commit_file``); every
    way of importing it gives that package, and its modules import by their dotted names."""
    package = importlib.import_module("linnaeus.checkpoint.formats")
    from linnaeus.checkpoint import formats

    import linnaeus.checkpoint.formats as aliased
    import linnaeus.checkpoint.formats.sharded.save as save_module

    assert formats is package and aliased is package, f"linnaeus.checkpoint.formats is {formats!r}, not the package"
    assert formats.commit_file is package.commit_file
    assert save_module is importlib.import_module("linnaeus.checkpoint.formats.sharded.save")
