"""``linnaeus-predict`` end to end: a trained checkpoint and a folder of photos in the formats people
have (PNG, JPEG, WebP, a photo whose EXIF says it is rotated, a corrupt file, a CSV list) → one row per
image, checked row by row; the same probabilities as ``linnaeus-eval`` for the same image; selective
answers along the tree; clear one-line errors for files that lack what prediction needs."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import REPO, TRAINED_NAME, VENV_BIN, trained_args

PREDICT = VENV_BIN / "linnaeus-predict"
RANKS = ("species", "genus", "family")


@pytest.fixture(scope="module")
def trained(trained_demo: Path) -> Path:
    return trained_demo / TRAINED_NAME / "checkpoints" / "checkpoint_epoch_2.pth"


@pytest.fixture(scope="module")
def reference(trained: Path, toy_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """linnaeus-eval's predictions.csv for the trained run (the reference probabilities), computed once."""
    return _eval_rows(trained, toy_root, tmp_path_factory.mktemp("reference"))


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(PREDICT), *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _rows(path: Path) -> dict[str, dict[str, str]]:
    return {Path(r["path"]).name: r for r in csv.DictReader(path.open())}


def _photos(folder: Path, source: Path) -> None:
    """One validation image in every format, plus a rotated-EXIF copy, a corrupt file and a non-image."""
    image = Image.open(source).convert("RGB")
    (folder / "sub").mkdir(parents=True)
    image.save(folder / "a.png")
    image.save(folder / "b.JPG", quality=95)
    image.save(folder / "c.webp", lossless=True)
    image.save(folder / "sub" / "d.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored pixels are to be turned 90 degrees clockwise to be upright
    image.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.png", exif=exif)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")


def test_predict_on_a_folder_of_photos_row_by_row(trained: Path, reference: Path, tmp_path: Path) -> None:
    val_image = Path(next(csv.DictReader(reference.open()))["path"])
    _photos(tmp_path / "photos", val_image)
    listed = tmp_path / "list.csv"
    listed.write_text("path,comment\nphotos/a.png,relative to the CSV\n")
    out = tmp_path / "preds.csv"
    proc = _predict("--ckpt", str(trained), "--images", str(tmp_path / "photos"), str(listed), "--out", str(out),
                    "--min-confidence", "species=0.99,genus=0.5,family=0.0", "--workers", "1", "--batch-size", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    names = [Path(r["path"]).name for r in rows]
    assert names == ["a.png", "b.JPG", "c.webp", "corrupt.jpg", "rotated.png", "d.png", "a.png"]  # sorted, then the CSV
    by_name = _rows(out)
    good = [r for r in rows if not r["error"]]
    assert len(good) == 6 and re.match(r"\w+Error: .+", by_name["corrupt.jpg"]["error"])  # why, on its row
    assert all(by_name["corrupt.jpg"][c] == "" for c in ("species", "confident_rank", "path_family"))
    # EXIF orientation honoured: the rotated photo is the upright one, pixel for pixel.
    same = [c for c in by_name["a.png"] if c not in ("path",)]
    assert {c: by_name["rotated.png"][c] for c in same} == {c: by_name["a.png"][c] for c in same}
    assert {c: by_name["c.webp"][c] for c in same} == {c: by_name["a.png"][c] for c in same}  # lossless
    tree = torch.load(trained, weights_only=True)["taxonomy_tree"]
    names_of = torch.load(trained, weights_only=True)["taxonomy"]
    thresholds = {"species": 0.99, "genus": 0.5, "family": 0.0}
    for r in good:
        # the path is one lineage of the stored tree
        assert tree["species"][names_of["species"].index(r["path_species"])] == r["path_genus"]
        assert tree["genus"][names_of["genus"].index(r["path_genus"])] == r["path_family"]
        # the answer: the finest rank whose class on the path has its threshold
        probs = {k: dict((n, float(p)) for n, p in (x.rsplit(":", 1) for x in r[f"{k}_top5"].split("|")))
                 for k in RANKS}
        answered = next(k for k in RANKS if probs[k].get(r[f"path_{k}"], 0.0) >= thresholds[k])
        assert (r["confident_rank"], r["confident_name"]) == (answered, r[f"path_{answered}"])
        for k in RANKS:
            top = r[f"{k}_top5"].split("|")[0].rsplit(":", 1)
            assert (r[k], r[f"{k}_prob"]) == (top[0], top[1])


def _eval_rows(trained: Path, toy_root: Path, tmp_path: Path) -> Path:
    """linnaeus-eval's predictions.csv for the trained run (the reference probabilities)."""
    out = trained.parents[2]
    args = trained_args(out, toy_root)
    proc = subprocess.run([str(VENV_BIN / "linnaeus-eval"), *args[:2], "--ckpt", str(trained), "--out",
                           str(tmp_path / "eval"), *args[2:]], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "eval" / "predictions.csv"


def test_predict_gives_evals_probabilities_for_a_validation_image(trained: Path, reference: Path,
                                                                  tmp_path: Path) -> None:
    reference = next(csv.DictReader(reference.open()))  # type: ignore[assignment]
    out = tmp_path / "one.csv"
    proc = _predict("--ckpt", str(trained), "--images", reference["path"], "--out", str(out), "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = csv.DictReader(out.open())
    for k in RANKS:
        mine = [(n, float(p)) for n, p in (x.rsplit(":", 1) for x in row[f"{k}_top5"].split("|"))]
        theirs = [(n, float(p)) for n, p in (x.rsplit(":", 1) for x in reference[f"{k}_top5"].split("|"))]
        assert [n for n, _ in mine] == [n for n, _ in theirs]
        assert [p for _, p in mine] == pytest.approx([p for _, p in theirs], abs=2e-6)
    assert row["confident_rank"] == "species"  # the default threshold 0 answers at the finest rank


def _json(path: Path, species_t: float, **more: object) -> Path:
    path.write_text(json.dumps({"temperatures": {"species": species_t}, **more}))
    return path


def test_a_file_without_what_prediction_needs_is_refused_in_one_line(trained: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    """In-process (the command's main): exit status 1 and one line on stderr naming what is missing."""
    from linnaeus.cli.predict import main

    bare = tmp_path / "bare.pth"
    torch.save(torch.load(trained, weights_only=True)["model"], bare)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(image)
    out = ["--out", str(tmp_path / "o.csv")]
    cases = [
        (["--ckpt", str(bare), "--images", str(image)], ["records no config", "--cfg FILE"]),
        (["--ckpt", str(bare), "--images", str(image), "--cfg", str(REPO / "tests" / "configs" / "tiny.yaml")],
         ["records no taxonomy"]),
        (["--ckpt", str(trained), "--images", str(tmp_path / "nowhere")], ["no such image, folder or CSV file"]),
        (["--ckpt", str(trained), "--images", str(image), "--min-confidence", "kingdom=0.9"],
         ["'kingdom' is not a rank of this model"]),
        (["--ckpt", str(trained), "--images", str(image), "--temperature", str(tmp_path / "x.png")],
         ["x.png: expected the temperature.json linnaeus-eval --calibrate writes"]),
        (["--ckpt", str(trained), "--images", str(image), "--temperature", str(_json(tmp_path / "t1.json", 1.5)),
          "--min-confidence", f"@{_json(tmp_path / 't2.json', 2.0, thresholds={'species': 0.5})}"],
         ["were solved with {'species': 2.0}", "t1.json gives {'species': 1.5}"]),
    ]
    for args, expected in cases:
        assert main(args + out) == 1, args
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("linnaeus-predict: ")]
        assert len(errors) == 1 and all(e in errors[0] for e in expected), err[-2000:]
        assert "Traceback" not in err


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_predict_from_an_export_matches_the_checkpoint(trained: Path, tmp_path: Path, suffix: str) -> None:
    """An exported weights file carries the config, the taxonomy and its tree: predict needs nothing else."""
    exported = tmp_path / f"weights{suffix}"
    export = subprocess.run([str(VENV_BIN / "linnaeus-ckpt"), "export", str(trained), str(exported),
                             *(["--safetensors"] if suffix == ".safetensors" else [])],
                            capture_output=True, text=True, timeout=120)
    assert export.returncode == 0, export.stderr
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, level in enumerate(("circle", "square")):
        Image.new("RGB", (48, 40), (40 * i, 90, 160)).save(photos / f"{level}.png")
    outs = []
    for source in (trained, exported):
        outs.append(tmp_path / f"{source.name}.csv")
        proc = _predict("--ckpt", str(source), "--images", str(photos), "--out", str(outs[-1]),
                        "--min-confidence", "0.3", "--workers", "0")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert outs[0].read_text() == outs[1].read_text()
    assert "path_species" in outs[1].read_text().splitlines()[0]  # the tree came along


@pytest.mark.parametrize("calibrate", [False, True], ids=["raw", "calibrated"])
def test_thresholds_solved_by_eval_answer_the_same_images_the_same_way_in_predict(trained: Path, toy_root: Path,
                                                                                 reference: Path, tmp_path: Path,
                                                                                 calibrate: bool) -> None:
    out = trained.parents[2]
    args = trained_args(out, toy_root)
    proc = subprocess.run([str(VENV_BIN / "linnaeus-eval"), *args[:2], "--ckpt", str(trained), "--out",
                           str(tmp_path / "eval"), "--target-accuracy", "0.9", *(["--calibrate"] if calibrate else []),
                           *args[2:]], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    report = record["selective"]
    solved = json.loads((tmp_path / "eval" / "thresholds.json").read_text())
    assert solved["target_accuracy"] == 0.9 and solved["thresholds"] == report["thresholds"]
    if calibrate:  # fitted on the same images: their loss falls (what the fit minimises), top-1 stays
        temperatures = json.loads((tmp_path / "eval" / "temperature.json").read_text())["temperatures"]
        assert solved["temperatures"] == temperatures == record["calibration"]["temperatures"]
        raw = json.loads((reference.parent / "metrics.json").read_text())["metrics"]
        for rank in RANKS:
            assert record["metrics"][f"val/loss/{rank}"] <= raw[f"val/loss/{rank}"] + 1e-9, rank
            assert record["metrics"][f"val/acc1/{rank}"] == raw[f"val/acc1/{rank}"], rank
            assert record["calibration"]["ece_before"][rank] == raw[f"val/ece/{rank}"]
            assert 0.05 < temperatures[rank] < 20 and temperatures[rank] != 1.0
    else:
        assert "temperatures" not in solved and not (tmp_path / "eval" / "temperature.json").exists()
    assert sum(report["share"].values()) == pytest.approx(1.0)
    for rank, accuracy in report["accuracy"].items():  # on the data solved on, each answered rank meets it
        assert accuracy >= 0.9 or report["share"][rank] == 0, (rank, report)
    # predict over the same images with those thresholds gives the same answers
    listed = tmp_path / "val.csv"
    listed.write_text("path\n" + "".join(r["path"] + "\n" for r in
                                         csv.DictReader((tmp_path / "eval" / "predictions.csv").open())))
    preds = tmp_path / "preds.csv"
    run = _predict("--ckpt", str(trained), "--images", str(listed), "--out", str(preds), "--workers", "0",
                   "--min-confidence", f"@{tmp_path / 'eval' / 'thresholds.json'}")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = list(csv.DictReader(preds.open()))
    shares = {rank: sum(r["confident_rank"] == rank for r in rows) / len(rows) for rank in RANKS}
    shares["none"] = sum(r["confident_rank"] == "" for r in rows) / len(rows)
    assert shares == pytest.approx(report["share"], abs=1.5 / len(rows))  # a confidence at a threshold may round
    if calibrate:  # the thresholds' temperatures came along: each family probability is the raw one, tempered
        t = temperatures["family"]
        raw_rows = {r["path"]: float(r["family_top5"].split("|")[0].rsplit(":", 1)[1])
                    for r in csv.DictReader(reference.open())}
        for r in rows:  # two families: p' = p^(1/T) / (p^(1/T) + (1 - p)^(1/T))
            p = raw_rows[r["path"]]
            assert float(r["family_prob"]) == pytest.approx(p ** (1 / t) / (p ** (1 / t) + (1 - p) ** (1 / t)),
                                                            abs=1e-5)
        assert "Temperature scaling" in run.stderr
