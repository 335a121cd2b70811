"""iNaturalist-JSON and CSV datasets: parsing, stable class indices, masked unknown ranks, every
bad-data case refused with file and line/id, a real run refusing a broken manifest, and exact
resume (kill -9 and relaunch) of a real run on the generated iNat-format set."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from linnaeus.config import ConfigError, load_config
from linnaeus.data import DatasetError, build_data
from linnaeus.data.csv_manifest import read_csv_manifest
from linnaeus.data.examples import ensure_example_dataset, example_categories
from linnaeus.data.inat import read_inat
from linnaeus.data.manifest import build_taxonomy, manifest_dataset
from linnaeus.data.taxonomy import IGNORE_INDEX
from linnaeus.engine.loss import MultiLevelLoss
from tests.conftest import REPO, run_train, tiny_args, train_cmd

KEYS = ["species", "genus", "family", "order"]
INAT_OPTS = ("DATA.DATASET", "inat", "DATA.TRAIN_ANN", "train.json", "DATA.VAL_ANN", "val.json",
             "DATA.TASK_KEYS", str(KEYS))


@pytest.fixture(scope="session")
def inat_root(tmp_path_factory) -> Path:
    # 72 train images (4 per species) and 18 val images at 32 px: small enough for a few-second run
    return ensure_example_dataset(tmp_path_factory.mktemp("inat") / "inat", "inat", 4, 1, 32)


@pytest.fixture(scope="session")
def csv_root(tmp_path_factory) -> Path:
    return ensure_example_dataset(tmp_path_factory.mktemp("csv") / "csv", "csv", 4, 4, 32)


def copy_of(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / root.name
    shutil.copytree(root, out)
    return out


def edit_json(path: Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def cfg_for(root: Path, *opts: str):
    return load_config(None, ["DATA.ROOT", str(root), "DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE", "4",
                              "DATA.NUM_WORKERS", "0", *opts])


# ------------------------------------------------------------------ iNat format
def test_inat_classes_are_sorted_names_per_rank_and_labels_follow_categories(inat_root):
    bundle = build_data(cfg_for(inat_root, *INAT_OPTS), 0, 1)
    tax = bundle.taxonomy
    cats = {c["id"]: c for c in json.loads((inat_root / "train.json").read_text())["categories"]}
    assert tax.task_keys == tuple(KEYS)
    assert tax.num_classes == {"species": 18, "genus": 6, "family": 2, "order": 2}
    assert tax.names("species") == sorted(c["name"] for c in cats.values())  # species reads "name"
    assert tax.names("genus") == sorted({c["genus"] for c in cats.values()})
    assert len(bundle.train_dataset) == 72 and len(bundle.val_dataset) == 18
    # every image's label row is its category's names at each rank
    images = json.loads((inat_root / "train.json").read_text())
    cat_of = {a["image_id"]: a["category_id"] for a in images["annotations"]}
    for im, row in zip(images["images"], bundle.train_dataset.targets.tolist()):
        c = cats[cat_of[im["id"]]]
        assert [tax.names(k)[i] for k, i in zip(KEYS, row)] == [c["name"], c["genus"], c["family"], c["order"]]
    assert bundle.hierarchy is not None and tax.is_complete
    # the same file read for a subset of ranks keeps each rank's indices
    sub = build_taxonomy([read_inat(inat_root / "train.json", inat_root, ["genus", "order"])], ["genus", "order"])
    assert sub.names("genus") == tax.names("genus")


def test_inat_task_keys_must_be_ranks_from_finest_to_coarsest(inat_root):
    with pytest.raises(DatasetError, match=r"\['subspecies'\] are not iNaturalist ranks"):
        read_inat(inat_root / "train.json", inat_root, ["subspecies", "genus"])
    with pytest.raises(DatasetError, match="from finest to coarsest"):
        read_inat(inat_root / "train.json", inat_root, ["family", "genus"])
    with pytest.raises(ConfigError, match="needs DATA.TRAIN_ANN"):
        cfg_for(inat_root, "DATA.DATASET", "inat")


def test_inat_homonyms_across_kingdoms_are_qualified_not_merged(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)

    def plant_homonym(doc):  # a plant genus spelled like an animal one (Morus: gannets and mulberries)
        c = dict(doc["categories"][0], id=999, name="Anulus plantae", family="Plantidae", order="Plantales",
                 kingdom="Plantae")
        doc["categories"].append(c)

    edit_json(root / "train.json", plant_homonym)
    tax = build_taxonomy([read_inat(root / "train.json", root, KEYS)], KEYS)
    assert "Anulus (Formae)" in tax.names("genus") and "Anulus (Plantae)" in tax.names("genus")
    assert "Anulus" not in tax.names("genus")


# ------------------------------------------------------------------ CSV manifests
def test_csv_empty_cells_are_ignore_index_and_counted_in_the_log(csv_root, caplog):
    opts = ("DATA.DATASET", "csv", "DATA.TRAIN_ANN", "train.csv", "DATA.VAL_ANN", "val.csv",
            "DATA.TASK_KEYS", str(KEYS))
    with caplog.at_level(logging.INFO, logger="linnaeus.data"):
        bundle = build_data(cfg_for(csv_root, *opts), 0, 1)
    rows = list(csv_rows(csv_root / "train.csv"))
    targets = bundle.train_dataset.targets
    for row, t in zip(rows, targets.tolist()):
        for k, cell, label in zip(KEYS, (row["species"], row["genus"], row["family"], row["order"]), t):
            assert (label == IGNORE_INDEX) == (cell == ""), (row, k)
            if cell:
                assert bundle.taxonomy.names(k)[label] == cell
    known = (targets != IGNORE_INDEX).sum(0).tolist()
    assert known[0] < len(rows) and known[3] == len(rows)  # the example leaves species empty on some rows
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("train ("))
    assert f"{len(rows)} images; labels per level: species {known[0]} (" in line
    assert bundle.hierarchy is not None  # every species has one complete row: the tree is known


def csv_rows(path: Path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def test_masked_labels_leave_the_loss_and_an_all_unknown_batch_gives_zero_not_nan():
    torch.manual_seed(0)
    outputs = {"species": torch.randn(4, 5, requires_grad=True), "genus": torch.randn(4, 3)}
    labels = torch.tensor([[1, 0], [IGNORE_INDEX, 2], [3, 1], [IGNORE_INDEX, 1]])
    total, per_level = MultiLevelLoss(["species", "genus"])(outputs, labels)
    known = labels[:, 0] != IGNORE_INDEX
    torch.testing.assert_close(per_level["species"], F.cross_entropy(outputs["species"][known], labels[known, 0]))
    torch.testing.assert_close(per_level["genus"], F.cross_entropy(outputs["genus"], labels[:, 1]))
    none_known = torch.tensor([[IGNORE_INDEX, 0]] * 4)
    total, per_level = MultiLevelLoss(["species", "genus"])(outputs, none_known)
    assert per_level["species"].item() == 0.0 and torch.isfinite(total)
    total.backward()
    assert torch.count_nonzero(outputs["species"].grad) == 0  # unknown labels contribute no gradient


# ------------------------------------------------------------------ bad data: one test per case
def test_missing_image_names_file_and_image_id_and_counts_all_problems(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)
    images = json.loads((root / "train.json").read_text())["images"]
    for im in images[:12]:
        (root / im["file_name"]).unlink()
    with pytest.raises(DatasetError) as e:
        read_inat(root / "train.json", root, KEYS)
    msg = str(e.value)
    assert f"{root / 'train.json'}: 12 problem(s), the run does not start" in msg
    assert f"image id {images[0]['id']}: image file {root / images[0]['file_name']} does not exist" in msg
    assert "... and 2 more" in msg  # the first 10 named, the count covers all


def test_unreadable_image_stops_loading_naming_file_and_manifest_entry(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)
    doc = json.loads((root / "train.json").read_text())
    bad = root / doc["images"][3]["file_name"]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG: exists, does not decode
    m = read_inat(root / "train.json", root, KEYS)  # existence is checked up front, decoding lazily
    ds = manifest_dataset(m, build_taxonomy([m], KEYS), None, 0)
    with pytest.raises(DatasetError, match=re.escape(f"cannot read image {bad} ({root / 'train.json'} image id "
                                                     f"{doc['images'][3]['id']})")):
        next(iter(DataLoader(ds, sampler=[(0, 3)], batch_size=1)))


def test_category_without_a_rank_is_named_by_id(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)
    edit_json(root / "train.json", lambda d: d["categories"][5].pop("genus"))
    with pytest.raises(DatasetError, match=r"category id 5 has no 'genus' \(needed by DATA.TASK_KEYS"):
        read_inat(root / "train.json", root, KEYS)
    # with genus not asked for, the same file is fine
    read_inat(root / "train.json", root, ["species", "family"])


def test_annotation_problems_are_named_by_id(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)

    def break_annotations(doc):
        doc["annotations"][0]["category_id"] = 777  # no such category
        doc["annotations"].append(dict(doc["annotations"][1], id=9001))  # image 2: a second annotation
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != 3]  # image 3: none
        doc["images"].append(dict(doc["images"][4]))  # image 5 listed twice

    edit_json(root / "train.json", break_annotations)
    with pytest.raises(DatasetError) as e:
        read_inat(root / "train.json", root, KEYS)
    msg = str(e.value)
    assert "4 problem(s)" in msg
    for expected in ("annotation id 1 (image id 1) refers to category id 777, which is not in categories",
                     "image id 2 has more than one annotation", "image id 3 (train/", ") has no annotation",
                     "image id 5 is listed twice"):
        assert expected in msg, msg


def test_paths_escaping_the_root_are_refused(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)
    outside = tmp_path / "outside.jpg"
    shutil.copy(root / json.loads((root / "train.json").read_text())["images"][0]["file_name"], outside)

    def escape(doc):
        doc["images"][0]["file_name"] = "../outside.jpg"
        doc["images"][1]["file_name"] = str(outside)

    edit_json(root / "train.json", escape)
    with pytest.raises(DatasetError) as e:
        read_inat(root / "train.json", root, KEYS)
    assert "2 problem(s)" in str(e.value)
    assert "image id 1: image path '../outside.jpg' escapes the image root" in str(e.value)
    assert f"image id 2: image path '{outside}' escapes the image root" in str(e.value)


def test_species_under_two_genera_names_both_category_ids(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)
    cats = example_categories()
    other = next(c for c in cats if c["genus"] != cats[0]["genus"])

    def duplicate(doc):
        doc["categories"].append(dict(doc["categories"][0], id=500, genus=other["genus"]))

    edit_json(root / "train.json", duplicate)
    with pytest.raises(DatasetError) as e:
        build_taxonomy([read_inat(root / "train.json", root, KEYS)], KEYS)
    assert (f"species {cats[0]['name']!r} is under genus {cats[0]['genus']!r} (category id 0) and under genus "
            f"{other['genus']!r} (category id 500)") in str(e.value)


def test_a_taxonomy_json_with_a_genus_in_two_families_is_refused_naming_both_entries(tmp_path):
    from linnaeus.data import load_taxonomy

    (tmp_path / "taxonomy.json").write_text(json.dumps({
        "parus_major": {"genus": "parus", "family": "paridae"},
        "parus_minor": {"genus": "parus", "family": "turdidae"}}))
    with pytest.raises(DatasetError, match=re.escape(
            "genus 'parus' is under family 'paridae' (entry 'parus_major') and under family 'turdidae' "
            "(entry 'parus_minor')")):
        load_taxonomy(tmp_path / "taxonomy.json", ["species", "genus", "family"])


def test_csv_disagreeing_rows_bad_header_and_empty_rows_name_the_lines(tmp_path, csv_root):
    root = copy_of(csv_root, tmp_path)
    lines = (root / "train.csv").read_text().splitlines()
    orig = list(lines)
    path, species, genus, family, order = lines[1].split(",")
    lines.append(f"{lines[2].split(',')[0]}x,{species},Wronggenus,{family},{order}")  # line 74: 2nd genus
    lines.append("img/train_00003.jpg,,,,")  # line 75: nothing known
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as e:
        build_taxonomy([read_csv_manifest(root / "train.csv", root, KEYS)], KEYS)
    msg = str(e.value)
    assert "line 75: no rank known for 'img/train_00003.jpg'" in msg
    assert "line 74: image file" in msg  # the extra row's file does not exist either
    (root / "bad.csv").write_text("\n".join(orig[:1] + [f"{orig[2].split(',')[0]},{species},Wronggenus,"
                                                        f"{family},{order}"] + orig[3:]) + "\n")
    with pytest.raises(DatasetError, match=(f"species {species!r} is under genus 'Wronggenus' \\(line 2\\) and "
                                            f"under genus {genus!r} \\(line \\d+\\)")):
        build_taxonomy([read_csv_manifest(root / "bad.csv", root, KEYS)], KEYS)
    (root / "nohead.csv").write_text("file,species,genus\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['family', 'order', 'path'\]"):
        read_csv_manifest(root / "nohead.csv", root, KEYS)


def test_a_run_refuses_to_start_on_a_broken_manifest(tmp_path, inat_root):
    root = copy_of(inat_root, tmp_path)
    first = json.loads((root / "val.json").read_text())["images"][0]
    (root / first["file_name"]).unlink()
    proc = run_train(tmp_path, root, *INAT_OPTS, check=False, timeout=120)
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert f"{root / 'val.json'}: 1 problem(s), the run does not start" in err
    assert not list((tmp_path / "tiny" / "checkpoints").glob("*.pth"))


# ------------------------------------------------------------------ exact resume on the iNat-format set
# JPEG decode and augmentation in a DataLoader worker, as real runs do
STEP_OPTS = (*INAT_OPTS, "DATA.NUM_WORKERS", "1", "CHECKPOINT.INTERVAL", "5st",
             "CHECKPOINT.FILENAME", "checkpoint_step_{step}.pth")


def _final_state(run: Path) -> dict:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    return torch.load(run / "checkpoints" / latest, weights_only=True, map_location="cpu")


def test_kill9_mid_epoch_then_relaunch_is_bit_identical_on_inat_data(tmp_path, inat_root):
    ref = run_train(tmp_path / "ref", inat_root, *STEP_OPTS)
    assert "val/consistency=" in ref.stdout + ref.stderr and "mistake severity" in ref.stdout + ref.stderr
    reference = _final_state(tmp_path / "ref" / "tiny")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "ref" / "tiny" / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/acc1/species", "val/bacc/species", "val/consistency", "val/mistake_severity"} <= scalars

    out = tmp_path / "killed"
    out.mkdir()
    ckpts = out / "tiny" / "checkpoints"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(out / "launch.log", "w") as log:
        proc = subprocess.Popen(train_cmd(1) + tiny_args(out, inat_root, *STEP_OPTS), cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 72 images / batch 8 = 9 steps per epoch: step 10 is one step into epoch 2
        deadline = time.monotonic() + 120
        while not (ckpts / "checkpoint_step_10.pth").exists():
            assert proc.poll() is None, (out / "launch.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "timed out waiting for checkpoint_step_10.pth"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert _final_state(out / "tiny")["progress"]["step"] < reference["progress"]["step"], "killed after the end"
    relaunch = run_train(out, inat_root, *STEP_OPTS)
    resumed = re.search(r"Resumed from \S+ \(epoch (\d+), step (\d+)\)", relaunch.stdout + relaunch.stderr)
    assert resumed and int(resumed.group(2)) >= 10 and int(resumed.group(2)) % 9 != 0, "not a mid-epoch resume"
    final = _final_state(out / "tiny")
    assert final["progress"] == reference["progress"]
    for k in reference["model"]:
        assert torch.equal(final["model"][k], reference["model"][k]), f"model tensor {k} differs"
    assert final["metrics"]["history"] == reference["metrics"]["history"]


def test_a_resume_with_another_training_manifest_is_reported_as_a_data_order_change():
    from linnaeus.runner.config_diff import DATA_ORDER, HONOURED, config_changes

    old = "DATA:\n  TRAIN_ANN: train2018.json\n  VAL_ANN: val2018.json\n"
    new = "DATA:\n  TRAIN_ANN: train2021.json\n  VAL_ANN: val2021.json\n"
    got = {c.key: c.action for c in config_changes(old, new)}
    assert got == {"DATA.TRAIN_ANN": DATA_ORDER, "DATA.VAL_ANN": HONOURED}


def test_check_data_decodes_every_image_up_front_and_names_each_bad_one(tmp_path, inat_root, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_data", REPO / "tools" / "check_data.py")
    check_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_data)
    root = copy_of(inat_root, tmp_path)
    args = ["--cfg", str(REPO / "tests" / "configs" / "tiny.yaml"), "--workers", "2", "--opts", "DATA.ROOT",
            str(root), *INAT_OPTS]
    assert check_data.main(args) == 0
    assert "all 90 images decode" in capsys.readouterr().out
    train, val = (json.loads((root / f).read_text())["images"] for f in ("train.json", "val.json"))
    (root / train[5]["file_name"]).write_bytes(b"not a jpeg")
    (root / val[0]["file_name"]).write_bytes((root / val[0]["file_name"]).read_bytes()[:150])
    assert check_data.main(args) == 1
    err = capsys.readouterr().err
    assert "2 of 90 images do not decode" in err
    assert f"cannot read image {root / train[5]['file_name']} ({root / 'train.json'} image id {train[5]['id']})" in err
    assert f"cannot read image {root / val[0]['file_name']} ({root / 'val.json'} image id {val[0]['id']})" in err
    (root / train[6]["file_name"]).unlink()
    assert check_data.main(args) == 2  # the manifest checks of a run's start refuse it first
    assert "1 problem(s), the run does not start" in capsys.readouterr().err


def test_an_incomplete_tree_trains_without_hierarchy_metrics_and_refuses_consistent_decoding(tmp_path, caplog):
    from linnaeus.data.examples import _save_jpeg

    rows = ["path,species,genus,family"]
    for i in range(8):  # 'B b' never has its genus: the tree above it is unknown
        _save_jpeg(tmp_path / f"{i}.jpg", "circle_light", 16, [i])
        rows.append(f"{i}.jpg,A a,A,F" if i % 2 else f"{i}.jpg,B b,,F")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    opts = ("DATA.DATASET", "csv", "DATA.TRAIN_ANN", "m.csv", "DATA.VAL_FRACTION", "0", "DATA.BATCH_SIZE", "2",
            "DATA.TASK_KEYS", "[species, genus, family]")
    with caplog.at_level(logging.WARNING, logger="linnaeus.data"):
        bundle = build_data(cfg_for(tmp_path, *opts), 0, 1)
    assert bundle.hierarchy is None and not bundle.taxonomy.is_complete
    assert "never gives the parent rank of {'species': 1, 'genus': 0} classes" in caplog.text
    with pytest.raises(DatasetError, match="EVAL.CONSISTENT_DECODING needs the whole tree"):
        build_data(cfg_for(tmp_path, *opts, "EVAL.CONSISTENT_DECODING", "True"), 0, 1)


def test_labeled_images_give_back_every_path_exactly():
    from linnaeus.data import LabeledImages

    files = ["a/Parus major/1.jpg", "b/Ærø/ü ß.jpg", "c/" + "x" * 300 + ".jpg", "d/2.jpg"]
    ds = LabeledImages(files, torch.zeros(4, 2, dtype=torch.long))
    assert len(ds) == 4 and [ds.path(i) for i in range(4)] == files
    assert len(LabeledImages([], torch.zeros(0, 2, dtype=torch.long))) == 0
