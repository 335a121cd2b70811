"""linnaeus-eval's figures and report: valid PNGs (and the same figures in TensorBoard), and a
self-contained report.html that a real headless browser (chromium) renders with its tables and with
every figure loaded, offline."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, VENV_BIN, trained_args
from tests.fixtures_chromium import chromium, rendered_dom  # noqa: F401

FIGURES = ("reliability", "risk_coverage", "per_class_accuracy", "accuracy_over_epochs")


def test_the_report_renders_in_a_browser_with_every_figure(tmp_path: Path, toy_root: Path, trained_demo: Path,
                                                           chromium: str) -> None:  # noqa: F811
    args = trained_args(trained_demo, toy_root)
    out = tmp_path / "eval"
    proc = subprocess.run([str(VENV_BIN / "linnaeus-eval"), *args[:2], "--ckpt", "latest", "--out", str(out),
                           "--target-accuracy", "0.9", *args[2:]], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in FIGURES:
        with Image.open(out / f"{name}.png") as png:
            png.verify()  # a complete, valid PNG
            assert png.format == "PNG" and png.size[0] > 300 and png.size[1] > 200
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert set(events.Tags()["images"]) == {f"eval/{name}" for name in FIGURES}

    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # nothing fetched: it opens offline
    dom = rendered_dom(chromium, out / "report.html", tmp_path / "profile")
    for table_id in ("facts", "per-rank", "tree", "worst-classes", "confused-siblings", "selective", "metrics"):
        assert f'<table id="{table_id}">' in dom, table_id
    assert "val/acc1/species" in dom and "checkpoint_epoch_2.pth" in dom
    status = re.search(r'id="images-status" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert status is not None, "the page's script did not run"
    assert status.group(1) == status.group(2) == str(len(FIGURES))  # every figure decoded by the browser
