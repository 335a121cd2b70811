"""``linnaeus-eval`` end to end: a trained run's checkpoint evaluated by the command reproduces the
run's own final validation exactly (same world size), writes one prediction row per validation image
that agrees with the metrics, evaluates the EMA on request, and fails with one line on bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TRAINED_NAME, VENV_BIN, run_train, tiny_args, trained_args

EVAL = VENV_BIN / "linnaeus-eval"


@pytest.fixture(scope="module")
def trained(trained_demo: Path) -> Path:
    return trained_demo


def _eval(out: Path, toy_root: Path, *args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    cmd = [str(EVAL)] if nproc == 1 else [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
                                          str(REPO / "tools" / "eval.py")]
    cfg_args = trained_args(out, toy_root)  # --cfg CFG --opts ...: the run's own config
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd + cfg_args[:2] + list(args) + cfg_args[2:], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def _stored_validation(out: Path) -> dict[str, float]:
    ckpts = out / TRAINED_NAME / "checkpoints"
    state = torch.load(ckpts / (ckpts / "latest").read_text().strip(), weights_only=True)
    return {k: v for k, v in state["metrics"]["history"][-1].items() if k not in ("epoch", "step")}


def test_eval_reproduces_the_runs_validation_and_writes_a_row_per_image(trained: Path, toy_root: Path) -> None:
    proc = _eval(trained, toy_root, "--ckpt", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = trained / TRAINED_NAME / "eval" / "checkpoint_epoch_2"
    record = json.loads((folder / "metrics.json").read_text())
    assert record["metrics"] == _stored_validation(trained)  # exactly: the same evaluation, the same shards
    assert record["checkpoint"].endswith("checkpoint_epoch_2.pth") and record["ema"] is False
    rows = list(csv.DictReader((folder / "predictions.csv").open()))
    assert len(rows) == record["metrics"]["val/samples"] == len({r["path"] for r in rows})
    for level in ("species", "genus", "family"):
        hits = sum(r[f"{level}_pred"] == r[f"{level}_true"] for r in rows)
        assert hits / len(rows) == pytest.approx(record["metrics"][f"val/acc1/{level}"], abs=1e-12)
        for r in rows:
            top = [pair.rsplit(":", 1) for pair in r[f"{level}_top5"].split("|")]
            probs = [float(p) for _, p in top]
            assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-5
            assert Path(r["path"]).is_file()

    # Per class and the confused siblings, as the rows say.
    per_class = list(csv.DictReader((folder / "per_class.csv").open()))
    for entry in per_class:
        mine = [r for r in rows if r[f"{entry['rank']}_true"] == entry["class"]]
        assert int(entry["images"]) == len(mine)
        assert int(entry["right"]) == sum(r[f"{entry['rank']}_pred"] == entry["class"] for r in mine)
    tree = torch.load(folder.parents[1] / "checkpoints" / "checkpoint_epoch_2.pth", weights_only=True)
    parent = {lv: dict(zip(tree["taxonomy"][lv], ups)) for lv, ups in tree["taxonomy_tree"].items()}
    pairs = list(csv.DictReader((folder / "confused_siblings.csv").open()))
    assert pairs, "an undertrained model confuses some siblings"
    for pair in pairs:
        level = pair["rank"]
        assert pair["true"] != pair["predicted"]
        if level in parent:  # the coarsest rank's classes are all siblings
            assert parent[level][pair["true"]] == parent[level][pair["predicted"]] == pair["parent"]
        assert int(pair["images"]) == sum(r[f"{level}_true"] == pair["true"] and r[f"{level}_pred"] == pair["predicted"]
                                          for r in rows)
    worst = record["worst_classes"]["species"]
    assert [w["class"] for w in worst] == [e["class"] for e in per_class if e["rank"] == "species"][:5]
    assert {"val/ece/species", "val/hdist@1", "val/hdist@5"} <= record["metrics"].keys()
    # The training run's end-of-run report named the same worst classes and confused siblings.
    eval_lines = [line.split("] ", 1)[-1] for line in (folder / "log.txt").read_text().splitlines()
                  if ": worst classes " in line]
    run_lines = [line.split("val ", 1)[1] for line in (trained / TRAINED_NAME / "log.txt").read_text().splitlines()
                 if line.startswith("val ") and ": worst classes " in line]
    assert len(eval_lines) == 3 and run_lines[-3:] == eval_lines

    # Two processes: each evaluates its share; the counts are the same, the per-image rows too.
    two = _eval(trained, toy_root, "--ckpt", "latest", "--out", str(trained / "two"), nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    metrics2 = json.loads((trained / "two" / "metrics.json").read_text())["metrics"]
    for k, v in record["metrics"].items():
        # Counts are exact; losses, calibration and distances sum floats, whose last bits depend on the
        # batches (other images together) and on the order the ranks add them.
        counted = any(m in k for m in ("/acc", "/bacc/", "samples", "consistency", "mistake_severity"))
        assert metrics2[k] == (v if counted else pytest.approx(v, rel=1e-6, abs=1e-9)), k
    rows2 = list(csv.DictReader((trained / "two" / "predictions.csv").open()))
    assert [(r["path"], r["species_pred"]) for r in rows2] == [(r["path"], r["species_pred"]) for r in rows]


def test_eval_of_the_ema_and_of_the_best_checkpoint(trained: Path, toy_root: Path) -> None:
    ema = _eval(trained, toy_root, "--ckpt", "latest", "--ema")
    assert ema.returncode == 0, ema.stderr[-3000:]
    assert "from 'ema'" in (trained / TRAINED_NAME / "eval" / "checkpoint_epoch_2_ema" / "log.txt").read_text()
    best = _eval(trained, toy_root, "--ckpt", "best", "--out", str(trained / "best"))
    assert best.returncode == 0, best.stderr[-3000:]
    history = [h for h in torch.load(next((trained / TRAINED_NAME / "checkpoints").glob("checkpoint_epoch_2.pth")),
                                     weights_only=True)["metrics"]["history"]]
    best_epoch = max(history, key=lambda h: h["val/acc1/species"])["epoch"]
    assert json.loads((trained / "best" / "metrics.json").read_text())["checkpoint"].endswith(
        f"checkpoint_epoch_{best_epoch}.pth")


@pytest.mark.parametrize("ckpt, message", [
    ("nowhere.pth", "not found"),
    ("step:999", "step:999: the run's checkpoint at step 999 not found"),
])
def test_eval_of_a_checkpoint_it_cannot_find_fails_with_one_line(trained: Path, toy_root: Path, ckpt: str,
                                                                 message: str, capsys: pytest.CaptureFixture) -> None:
    assert _eval_here(trained_args(trained, toy_root), "--ckpt", ckpt) == 1
    err = capsys.readouterr().err
    assert err.startswith("linnaeus-eval: ") and message in err and "Traceback" not in err


def test_eval_with_ema_of_a_checkpoint_without_one_says_so(tmp_path: Path, toy_root: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    run_train(tmp_path, toy_root, "TRAIN.EPOCHS", "1")
    assert _eval_here(tiny_args(tmp_path, toy_root, "TRAIN.EPOCHS", "1"), "--ckpt", "latest", "--ema") == 1
    assert "holds no EMA weights (--ema)" in capsys.readouterr().err


def _eval_here(cfg_args: list[str], *args: str) -> int:
    """The command's main in this process (the error paths: no training process needed);
    ``cfg_args``: ``--cfg CFG --opts ...``."""
    from linnaeus.cli.eval import main

    return main(cfg_args[:2] + list(args) + cfg_args[2:])


def test_eval_on_a_manifest_labels_it_by_class_name_and_counts_classes_outside_the_taxonomy(
        trained: Path, toy_root: Path, tmp_path: Path) -> None:
    reference = trained / "reference"
    assert _eval(trained, toy_root, "--ckpt", "latest", "--out", str(reference)).returncode == 0
    rows = list(csv.DictReader((reference / "predictions.csv").open()))
    expected = json.loads((reference / "metrics.json").read_text())["metrics"]
    manifest = tmp_path / "split.csv"  # the same images and labels as a CSV manifest, paths under --data-root
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "species", "genus", "family"])
        for i, r in enumerate(rows):
            species = "Species novus" if i < 2 else r["species_true"]  # two images of a species the model lacks
            writer.writerow([Path(r["path"]).relative_to(toy_root), species, r["genus_true"], r["family_true"]])
    proc = _eval(trained, toy_root, "--ckpt", "latest", "--data", str(manifest), "--data-root", str(toy_root),
                 "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["data"] == {"file": str(manifest), "images": len(rows), "outside_taxonomy": {"species": 2}}
    metrics = record["metrics"]
    for k, v in expected.items():  # the other ranks' numbers are the validation split's, exactly
        if "species" not in k and k not in ("val/loss", "val/mistake_severity", "val/hdist@1", "val/hdist@5"):
            assert metrics[k] == v, k
    hits = sum(r["species_pred"] == r["species_true"] for r in rows[2:])
    assert metrics["val/acc1/species"] == pytest.approx(hits / (len(rows) - 2), abs=1e-12)
