"""Data: taxonomy files, image folders, the toy generator, seeded augmentation, build_data."""

import hashlib
import json
import multiprocessing as mp
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from linnaeus.config import load_config
from linnaeus.data import (
    DatasetError,
    HierarchicalImageFolder,
    ResumableDistributedSampler,
    build_data,
    build_train_transform,
    ensure_toy_dataset,
    load_taxonomy,
    split_per_class,
    toy_taxonomy,
)
from linnaeus.data.toy import MARKER

KEYS = ["species", "genus", "family"]
TAXONOMY = {
    "parus_major": {"genus": "parus", "family": "paridae"},
    "cyanistes_caeruleus": {"genus": "cyanistes", "family": "paridae"},
    "turdus_merula": {"genus": "turdus", "family": "turdidae"},
}


def write_png(path: Path, seed: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def make_folder(root: Path, per_class: int = 3, taxonomy: dict = TAXONOMY) -> Path:
    """root/<leaf>/<i>.png for every leaf, plus root/taxonomy.json."""
    for c, leaf in enumerate(sorted(taxonomy)):
        for i in range(per_class):
            write_png(root / leaf / f"{i}.png", seed=100 * c + i)
    (root / "taxonomy.json").write_text(json.dumps(taxonomy))
    return root


# ------------------------------------------------------------------ taxonomy
def test_taxonomy_indices_are_sorted_names_per_level(tmp_path):
    tax = load_taxonomy(make_folder(tmp_path) / "taxonomy.json", KEYS)
    assert tax.num_classes == {"species": 3, "genus": 3, "family": 2}
    assert tax.names("species") == ["cyanistes_caeruleus", "parus_major", "turdus_merula"]
    assert tax.names("family") == ["paridae", "turdidae"]
    assert tax.labels("parus_major") == [1, 1, 0]
    assert tax.labels("turdus_merula") == [2, 2, 1]
    # a subset of levels keeps the same per-level indices
    assert load_taxonomy(tmp_path / "taxonomy.json", ["species", "family"]).labels("turdus_merula") == [2, 1]


def test_taxonomy_file_errors_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json.*DATA.TAXONOMY_FILE"):
        load_taxonomy(missing, KEYS)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": {"genus": "x",')
    with pytest.raises(DatasetError, match="bad.json is not valid JSON"):
        load_taxonomy(bad_json, KEYS)

    no_family = tmp_path / "nofamily.json"
    no_family.write_text(json.dumps({"a": {"genus": "x", "family": "f"}, "b": {"genus": "y"}}))
    with pytest.raises(DatasetError, match=r"nofamily.json.*'b' lacks level\(s\) \['family'\]"):
        load_taxonomy(no_family, KEYS)

    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="list.json.*expected a non-empty JSON object"):
        load_taxonomy(not_object, KEYS)


def test_class_folder_without_taxonomy_entry_names_folder_file_and_fix(tmp_path):
    root = make_folder(tmp_path)
    write_png(root / "erithacus_rubecula" / "0.png", seed=1)
    tax = load_taxonomy(root / "taxonomy.json", KEYS)
    with pytest.raises(DatasetError) as e:
        HierarchicalImageFolder(root, tax)
    msg = str(e.value)
    assert "'erithacus_rubecula'" in msg and str(root / "taxonomy.json") in msg
    assert 'Add "erithacus_rubecula": {"genus": "...", "family": "..."}' in msg


def test_empty_class_folder_is_named(tmp_path):
    root = make_folder(tmp_path)
    for f in (root / "parus_major").iterdir():
        f.unlink()
    (root / "parus_major" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"class folder .*parus_major contains no images"):
        HierarchicalImageFolder(root, load_taxonomy(root / "taxonomy.json", KEYS))


def test_corrupt_image_error_names_the_file(tmp_path):
    root = make_folder(tmp_path)
    garbage = root / "parus_major" / "1.png"
    garbage.write_bytes(b"definitely not a png")
    truncated = root / "turdus_merula" / "2.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    ds = HierarchicalImageFolder(root, load_taxonomy(root / "taxonomy.json", KEYS), build_train_transform(16))
    # (a failed worker makes torch's DataLoader teardown wait 5 s, so only one case runs in a worker)
    for bad, workers in ((garbage, 0), (truncated, 0), (truncated, 1)):
        index = [p for p, _ in ds.samples].index(bad)
        loader = DataLoader(ds, sampler=[(0, index)], batch_size=1, num_workers=workers)
        with pytest.raises(Exception) as e:
            next(iter(loader))
        assert f"cannot read image {bad}" in str(e.value)
        assert "Replace or delete the file" in str(e.value)


def test_folder_lists_samples_sorted_with_labels(tmp_path):
    root = make_folder(tmp_path, per_class=2)
    (root / "parus_major" / ".hidden.png").write_bytes(b"ignored")
    ds = HierarchicalImageFolder(root, load_taxonomy(root / "taxonomy.json", KEYS), build_train_transform(16))
    assert [(p.parent.name, p.name) for p, _ in ds.samples] == [
        (leaf, f"{i}.png") for leaf in sorted(TAXONOMY) for i in range(2)
    ]
    image, labels = ds[(0, 2)]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert labels.dtype == torch.long and labels.tolist() == [1, 1, 0]  # parus_major


def test_per_class_split_is_deterministic_disjoint_and_keeps_every_class(tmp_path):
    root = make_folder(tmp_path, per_class=5)
    ds = HierarchicalImageFolder(root, load_taxonomy(root / "taxonomy.json", KEYS))
    train, val = split_per_class(ds.samples, 0.2)
    assert split_per_class(list(reversed(ds.samples)), 0.2) == (train, val)
    assert not set(train) & set(val) and len(train) + len(val) == len(ds)
    assert sorted({leaf for _, leaf in val}) == sorted(TAXONOMY)  # one val image per class
    assert sorted({leaf for _, leaf in train}) == sorted(TAXONOMY)
    with pytest.raises(DatasetError, match="VAL_FRACTION"):
        split_per_class(ds.samples, 1.0)


# ------------------------------------------------------------------ augmentation
def collect(ds, keys, workers):
    loader = DataLoader(ds, sampler=keys, batch_size=3, num_workers=workers)
    return torch.cat([x for x, _ in loader])


def test_augmentation_depends_only_on_seed_epoch_index(tmp_path):
    root = make_folder(tmp_path, per_class=3)
    tax = load_taxonomy(root / "taxonomy.json", KEYS)
    ds = HierarchicalImageFolder(root, tax, build_train_transform(16, scale_min=0.2), seed=5)
    sampler = ResumableDistributedSampler(len(ds), 1, 0, seed=5)
    sampler.set_epoch(3)
    keys = list(sampler)

    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    direct = torch.stack([ds[k][0] for k in keys])
    assert torch.equal(torch.get_rng_state(), before[0]), "__getitem__ consumed the caller's torch RNG"
    assert random.getstate() == before[1] and np.array_equal(np.random.get_state()[1], before[2])

    serial = collect(ds, keys, workers=0)
    assert torch.equal(serial, direct)
    parallel = collect(ds, keys, workers=2)
    assert torch.equal(serial, parallel)
    # reading in another order gives each (epoch, index) the same tensor
    backwards = collect(ds, keys[::-1], workers=0)
    assert torch.equal(serial, backwards.flip(0))
    # another epoch augments the same image differently
    other_epoch = torch.stack([ds[(4, i)][0] for _, i in keys])
    assert not torch.equal(serial, other_epoch)
    # another seed too
    ds2 = HierarchicalImageFolder(root, tax, build_train_transform(16, scale_min=0.2), seed=6)
    assert not torch.equal(serial, torch.stack([ds2[k][0] for k in keys]))


# ------------------------------------------------------------------ toy dataset
def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_toy_dataset_is_deterministic_and_complete(tmp_path):
    a = ensure_toy_dataset(tmp_path / "a", num_samples=40, img_size=64, seed=0)
    b = ensure_toy_dataset(tmp_path / "b", num_samples=40, img_size=64, seed=0)
    digest = tree_digest(a)
    assert digest == tree_digest(b)
    assert len([k for k in digest if k.endswith(".png")]) == 40
    assert json.loads((a / "taxonomy.json").read_text()) == toy_taxonomy()
    assert len(toy_taxonomy()) >= 12
    families = {v["family"] for v in toy_taxonomy().values()}
    assert families == {"round", "angular"}
    for family in families:
        assert len({v["genus"] for v in toy_taxonomy().values() if v["family"] == family}) >= 2
    with Image.open(next(a.glob("*/*.png"))) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    # calling again reuses it untouched
    mtime = (a / MARKER).stat().st_mtime_ns
    ensure_toy_dataset(tmp_path / "a", num_samples=40, img_size=64, seed=0)
    assert (a / MARKER).stat().st_mtime_ns == mtime
    # another seed is another dataset
    c = ensure_toy_dataset(tmp_path / "c", num_samples=40, img_size=64, seed=1)
    assert tree_digest(c) != digest


def test_toy_dataset_refuses_mismatched_or_foreign_folders(tmp_path):
    ensure_toy_dataset(tmp_path / "toy", num_samples=36, img_size=64)
    with pytest.raises(DatasetError, match=r"toy.*'num_samples': 36.*Delete the folder"):
        ensure_toy_dataset(tmp_path / "toy", num_samples=72, img_size=64)
    # a dataset drawn by an older generator is refused with the reason, not silently reused
    marker = tmp_path / "toy" / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "generator_version": 1}))
    with pytest.raises(DatasetError, match=r"toy generator version 1; this linnaeus draws version \d+.*Delete the folder"):
        ensure_toy_dataset(tmp_path / "toy", num_samples=36, img_size=64)
    (tmp_path / "mine" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="mine exists but is not a complete toy dataset"):
        ensure_toy_dataset(tmp_path / "mine", num_samples=36)
    # an empty placeholder folder is fine, and a killed generator's temp folder is cleaned up
    (tmp_path / "empty").mkdir()
    stale = tmp_path / ".empty.tmp-killed"
    (stale / "circle_light").mkdir(parents=True)
    ensure_toy_dataset(tmp_path / "empty", num_samples=36)
    assert (tmp_path / "empty" / MARKER).is_file() and not stale.exists()


def _concurrent_ensure(root: str, start, out) -> None:
    start.wait()
    try:
        path = ensure_toy_dataset(root, num_samples=54, img_size=64)
    except Exception as e:
        out.put((os.getpid(), "error", repr(e), 0))  # report instead of leaving the parent waiting
        raise
    marker = os.stat(Path(path) / MARKER)
    out.put((os.getpid(), marker.st_ino, marker.st_mtime_ns, len(list(Path(path).glob("*/*.png")))))


def test_concurrent_creation_by_several_processes_makes_one_dataset(tmp_path):
    ctx = mp.get_context("fork")  # spawn would re-import torch in every child: seconds each on 2 cores
    n = 4
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_ensure, args=(str(tmp_path / "toy"), start, out)) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in range(n)]
    finally:
        for p in procs:
            p.join(timeout=30)
    assert [p.exitcode for p in procs] == [0] * n
    assert len({pid for pid, *_ in results}) == n
    # every process saw the same marker file (one generation, one rename) and a complete dataset
    assert len({(ino, mtime) for _, ino, mtime, _ in results}) == 1
    assert {count for *_, count in results} == {54}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


# ------------------------------------------------------------------ build_data
def tiny_cfg(root: Path, *opts):
    return load_config(
        None,
        ["DATA.ROOT", str(root), "DATA.TOY_NUM_SAMPLES", "72", "DATA.IMG_SIZE", "32",
         "DATA.BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0", *opts],
    )


def test_build_data_on_the_toy_dataset(tmp_path):
    cfg = tiny_cfg(tmp_path / "toy", "EVAL.BATCH_SIZE", "5")
    bundle = build_data(cfg, rank=0, world_size=1)
    assert bundle.taxonomy.num_classes == {"species": 18, "genus": 6, "family": 2}
    assert len(bundle.train_dataset) + len(bundle.val_dataset) == 72
    train_files = {p for p, _ in bundle.train_dataset.samples}
    assert not train_files & {p for p, _ in bundle.val_dataset.samples}
    rng = torch.get_rng_state()
    x, y = next(iter(bundle.train_loader))
    assert torch.equal(torch.get_rng_state(), rng), "loading data consumed the training RNG"
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 3) and y.dtype == torch.long
    assert len(bundle.train_loader) == len(bundle.train_dataset) // 4  # full batches only
    xv, yv = next(iter(bundle.val_loader))
    assert xv.shape == (5, 3, 32, 32)
    # labels agree with the folder names through the taxonomy
    tax = bundle.taxonomy
    for (path, leaf), labels in zip(bundle.train_dataset.samples, bundle.train_dataset.targets.tolist()):
        assert path.parent.name == leaf
        genus, family = tax.names("genus")[labels[1]], tax.names("family")[labels[2]]
        assert leaf.startswith(genus + "_") and toy_taxonomy()[leaf]["family"] == family
    assert bundle.train_sampler.state_dict()["seed"] == cfg.EXPERIMENT.SEED


def test_build_data_ranks_share_out_train_and_val(tmp_path):
    cfg = tiny_cfg(tmp_path / "toy")
    bundles = [build_data(cfg, rank=r, world_size=2) for r in range(2)]
    train = [[i for _, i in b.train_sampler] for b in bundles]
    val = [list(b.val_loader.sampler) for b in bundles]
    assert not set(train[0]) & set(train[1]) and len(train[0]) == len(train[1])
    assert sorted(val[0] + val[1]) == list(range(len(bundles[0].val_dataset)))


def test_build_data_with_train_val_folders_and_absolute_taxonomy(tmp_path):
    root = tmp_path / "birds"
    make_folder(root / "train", per_class=3)
    make_folder(root / "val", per_class=1)
    tax_file = root / "train" / "taxonomy.json"
    cfg = load_config(None, ["DATA.DATASET", "imagefolder", "DATA.ROOT", str(root), "DATA.TAXONOMY_FILE",
                             str(tax_file), "DATA.IMG_SIZE", "16", "DATA.BATCH_SIZE", "2",
                             "DATA.NUM_WORKERS", "1", "DATA.VAL_FRACTION", "0.5"])
    bundle = build_data(cfg, 0, 1)
    assert len(bundle.train_dataset) == 9 and len(bundle.val_dataset) == 3  # folders win over VAL_FRACTION
    assert all(p.parent.parent.name == "val" for p, _ in bundle.val_dataset.samples)
    assert bundle.train_loader.persistent_workers
    assert next(iter(bundle.train_loader))[0].shape == (2, 3, 16, 16)


def test_build_data_errors_are_actionable(tmp_path):
    with pytest.raises(DatasetError, match="fewer than one batch.*DATA.BATCH_SIZE 64"):
        build_data(tiny_cfg(tmp_path / "toy", "DATA.BATCH_SIZE", "64"), 0, 1)
    root = make_folder(tmp_path / "birds")
    cfg = load_config(None, ["DATA.DATASET", "imagefolder", "DATA.ROOT", str(root),
                             "DATA.TAXONOMY_FILE", "meta/tax.json"])
    with pytest.raises(FileNotFoundError, match=str(root / "meta" / "tax.json")):
        build_data(cfg, 0, 1)


def test_toy_genera_share_a_hue_so_relatives_look_alike():
    # The demo relies on this: each genus's colour clusters around its own hue (round genera
    # warm, angular cool), and the species variants differ in shade or pattern.
    import colorsys

    import numpy as np

    from linnaeus.data.toy import GENUS_HUES, _foreground

    def mean_hue(genus: str, variant: str, i: int) -> float:
        texture = _foreground(genus, variant, 32, np.random.default_rng([7, i]))
        return colorsys.rgb_to_hsv(*(texture.reshape(-1, 3).mean(0) / 255.0))[0] * 360.0

    for genus, hue in GENUS_HUES.items():
        for variant in ("light", "dark", "striped"):
            hues = [mean_hue(genus, variant, i) for i in range(50)]
            dist = np.array([min(abs(h - hue), 360 - abs(h - hue)) for h in hues])
            assert np.median(dist) < 10 and dist.max() < 40, (genus, variant, hues)
    warm = [GENUS_HUES[g] for g in ("circle", "ellipse", "ring")]
    cool = [GENUS_HUES[g] for g in ("triangle", "square", "star")]
    assert all((h >= 330 or h <= 90) for h in warm) and all(150 <= h <= 270 for h in cool)
