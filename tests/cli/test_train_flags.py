"""``tools/train.py --print-config``: the resolved config, credentials redacted, nothing created."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from linnaeus.config import config_yaml, load_config
from tests.conftest import REPO, TINY_CFG


def test_print_config_prints_the_resolved_yaml_redacted_and_creates_nothing(tmp_path: Path) -> None:
    opts = ["ENV.OUTPUT.BASE_DIR", str(tmp_path / "out"), "TRAIN.EPOCHS", "7",
            "ENV.INPUT.BUCKET.REMOTE", ":s3,access_key_id=AKIAEXAMPLE,secret_access_key=SECRETEXAMPLE:"]
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--cfg", str(TINY_CFG), "--print-config",
                           "--opts", *opts], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["TRAIN"]["EPOCHS"] == 7 and printed["EXPERIMENT"]["SEED"] == 7  # the override, the file's value
    assert "SECRETEXAMPLE" not in proc.stdout and "AKIAEXAMPLE" not in proc.stdout
    assert proc.stdout == config_yaml(load_config(str(TINY_CFG), opts))
    assert not (tmp_path / "out").exists()  # no run dir, no log, no lock
