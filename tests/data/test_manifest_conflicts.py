"""Bad data that passes the per-entry checks (#21 item 8): one image named several ways in a CSV,
one file under two iNat image ids, and train and val sharing images. Each test writes its own
small images and manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from linnaeus.config import load_config
from linnaeus.data import DatasetError, build_data
from linnaeus.data.csv_manifest import read_csv_manifest
from linnaeus.data.examples import _save_jpeg
from linnaeus.data.inat import read_inat

KEYS = ["species", "genus"]


def images(root: Path, *names: str) -> None:
    for i, name in enumerate(names):
        _save_jpeg(root / name, "circle_light", 16, [i])


def write_csv(path: Path, *rows: str) -> Path:
    path.write_text("\n".join(["path,species,genus", *rows]) + "\n")
    return path


def bullet(msg: str, start: str) -> str:
    """The one problem line of ``msg`` that begins with ``start``."""
    found = [b for b in msg.splitlines() if b.startswith(f"  - {start}")]
    assert len(found) == 1, (start, msg)
    return found[0]


def refusal(read, *args) -> str:
    with pytest.raises(DatasetError) as e:
        read(*args)
    return str(e.value)


# ------------------------------------------------------------------ CSV: one image, several spellings
def test_csv_one_image_named_four_ways_with_four_species_is_refused_naming_lines_and_path(tmp_path):
    images(tmp_path, "img/a.jpg", "img/b.jpg")
    (tmp_path / "img" / "x").mkdir()
    csv = write_csv(tmp_path / "m.csv",
                    "img/a.jpg,A a,A",       # line 2
                    "./img/a.jpg,A b,A",     # line 3
                    "img//a.jpg,A c,A",      # line 4
                    "img/x/../a.jpg,A d,A",  # line 5
                    "img/b.jpg,B a,B")       # line 6
    msg = refusal(read_csv_manifest, csv, tmp_path, KEYS)
    assert msg.startswith(f"{csv}: 3 problem(s), the run does not start"), msg
    for line, written, species in ((3, "./img/a.jpg", "A b"), (4, "img//a.jpg", "A c"), (5, "img/x/../a.jpg", "A d")):
        b = bullet(msg, f"line {line}: ")
        for part in (repr(written), "'img/a.jpg'", "line 2", "other labels", f"species {species!r}", "'A a'"):
            assert part in b, (part, b)


def test_csv_one_image_named_twice_with_the_same_labels_is_refused_like_an_exact_duplicate(tmp_path):
    images(tmp_path, "img/a.jpg", "img/b.jpg")
    exact = write_csv(tmp_path / "exact.csv", "img/a.jpg,A a,A", "img/b.jpg,B a,B", "img/a.jpg,A a,A")
    assert "line 4: 'img/a.jpg' is listed again (first on line 2)" in refusal(read_csv_manifest, exact, tmp_path, KEYS)
    spelled = write_csv(tmp_path / "spelled.csv", "img/a.jpg,A a,A", "img/b.jpg,B a,B", "img/../img/a.jpg,A a,A")
    msg = refusal(read_csv_manifest, spelled, tmp_path, KEYS)
    b = bullet(msg, "line 4: ")
    assert "'img/../img/a.jpg' is listed again (first on line 2 as 'img/a.jpg'; both are 'img/a.jpg')" in b, b
    assert "1 problem(s)" in msg


def test_csv_a_path_leaving_the_root_through_dotdot_is_still_refused_as_escaping(tmp_path):
    root = tmp_path / "root"
    images(root, "img/a.jpg")
    images(tmp_path, "a.jpg")
    csv = write_csv(root / "m.csv", "img/a.jpg,A a,A", "img/../../a.jpg,A a,A")
    assert "line 3: image path 'img/../../a.jpg' escapes the image root" in refusal(read_csv_manifest, csv, root, KEYS)


# ------------------------------------------------------------------ iNat: one file under two image ids
def write_inat(path: Path, files: list[str], cats: list[int]) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f} for i, f in enumerate(files)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": c} for i, c in enumerate(cats)],
        "categories": [{"id": 10, "name": "A a", "genus": "A"}, {"id": 20, "name": "B b", "genus": "B"}]}))
    return path


def test_inat_one_file_under_two_image_ids_with_two_categories_is_refused_naming_both(tmp_path):
    images(tmp_path, "train/a.jpg", "train/b.jpg")
    ann = write_inat(tmp_path / "train.json", ["train/a.jpg", "train/b.jpg", "train/a.jpg"], [10, 20, 20])
    msg = refusal(read_inat, ann, tmp_path, KEYS)
    assert msg.startswith(f"{ann}: 1 problem(s)"), msg
    b = bullet(msg, "image id 3: ")
    for part in ("'train/a.jpg'", "image id 1", "category id 20", "category id 10", "other label"):
        assert part in b, (part, b)


def test_inat_one_file_under_two_image_ids_with_one_category_is_refused_as_listed_again(tmp_path):
    images(tmp_path, "train/a.jpg", "train/b.jpg")
    ann = write_inat(tmp_path / "train.json", ["train/a.jpg", "train/b.jpg", "train/./a.jpg"], [10, 20, 10])
    b = bullet(refusal(read_inat, ann, tmp_path, KEYS), "image id 3: ")
    assert "'train/./a.jpg' is listed again (first as image id 1, 'train/a.jpg'; both are 'train/a.jpg')" in b, b


# ------------------------------------------------------------------ train and val sharing images
def overlap_cfg(root: Path, *opts: str):
    return load_config(None, ["DATA.ROOT", str(root), "DATA.IMG_SIZE", "16", "DATA.BATCH_SIZE", "2",
                              "DATA.NUM_WORKERS", "0", "DATA.DATASET", "csv", "DATA.TRAIN_ANN", "train.csv",
                              "DATA.VAL_ANN", "val.csv", "DATA.TASK_KEYS", str(KEYS), *opts])


def test_train_and_val_sharing_images_is_refused_naming_them_unless_allowed_then_logged(tmp_path, caplog):
    images(tmp_path, *(f"img/{c}.jpg" for c in "abcde"))
    write_csv(tmp_path / "train.csv", "img/a.jpg,A a,A", "img/b.jpg,A a,A", "img/c.jpg,B a,B", "img/d.jpg,B a,B")
    write_csv(tmp_path / "val.csv", "img/e.jpg,A a,A", "./img/a.jpg,A a,A", "img//c.jpg,B a,B")
    with pytest.raises(DatasetError) as e:
        build_data(overlap_cfg(tmp_path), 0, 1)
    msg = str(e.value)
    assert f"{tmp_path / 'train.csv'} and {tmp_path / 'val.csv'} share 2 image(s)" in msg, msg
    assert f"{tmp_path / 'img' / 'a.jpg'} (train line 2, val line 3)" in msg, msg
    assert f"{tmp_path / 'img' / 'c.jpg'} (train line 4, val line 4)" in msg, msg
    assert "DATA.ALLOW_TRAIN_VAL_OVERLAP True" in msg, msg

    with caplog.at_level(logging.WARNING, logger="linnaeus.data"):
        bundle = build_data(overlap_cfg(tmp_path, "DATA.ALLOW_TRAIN_VAL_OVERLAP", "True"), 0, 1)
    assert len(bundle.train_dataset) == 4 and len(bundle.val_dataset) == 3  # nothing dropped
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "share 2 image(s)" in r.getMessage()]
    assert len(warned) == 1 and "DATA.ALLOW_TRAIN_VAL_OVERLAP" in warned[0].getMessage(), caplog.text


def test_the_overlap_key_defaults_to_refusing():
    assert load_config(None, []).DATA.ALLOW_TRAIN_VAL_OVERLAP is False
