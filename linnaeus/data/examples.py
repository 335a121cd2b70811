"""Small example datasets in the two formats taxonomists bring: iNaturalist JSON and CSV manifests.

The images are the toy dataset's shapes (:mod:`linnaeus.data.toy`) saved as JPEG, given
Latin-looking names over seven ranks so the files look like the real thing::

    kingdom Formae > phylum Geometrica > class Figurae > order Curvales | Rectales
      > family Rotundidae | Angulidae > genus Circulus, Ellipsis, Anulus | Trigonum, Quadratum, Stella
      > species "<Genus> pallidus | obscurus | striatus"                         (18 species)

``inat``: ``root/train.json``, ``root/val.json`` (COCO-style, as iNat 2021 ships them) and
``root/{train,val}/<category dir>/<image id>.jpg``.
``csv``: ``root/train.csv``, ``root/val.csv`` (``path,species,genus,family,order``) and
``root/img/<split>_<i>.jpg``, with some ranks left empty on purpose (unknown for that image);
the first image of every species has all its ranks, so the tree is known.

Generated once per ``(kind, parameters)``; concurrent callers serialise on a file lock and the
folder appears complete or not at all (temp folder + rename, as the toy dataset).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from .taxonomy import DatasetError
from .toy import FAMILIES, VARIANTS, render_toy_image

KINDS = ("inat", "csv")
VERSION = 1  # bump when the files change
MARKER = ".example_complete.json"

GENUS_LATIN = {"circle": "Circulus", "ellipse": "Ellipsis", "ring": "Anulus",
               "triangle": "Trigonum", "square": "Quadratum", "star": "Stella"}
EPITHET = {"light": "pallidus", "dark": "obscurus", "striped": "striatus"}
FAMILY_LATIN = {"round": "Rotundidae", "angular": "Angulidae"}
ORDER_OF_FAMILY = {"round": "Curvales", "angular": "Rectales"}
HIGHER = {"class": "Figurae", "phylum": "Geometrica", "kingdom": "Formae"}


def example_categories() -> list[dict]:
    """iNat-style categories (id = position in sorted species names), with the toy species each draws."""
    rows = []
    for family, genera in FAMILIES.items():
        for genus in genera:
            for variant in VARIANTS:
                rows.append({"name": f"{GENUS_LATIN[genus]} {EPITHET[variant]}", "genus": GENUS_LATIN[genus],
                             "family": FAMILY_LATIN[family], "order": ORDER_OF_FAMILY[family], **HIGHER,
                             "toy_species": f"{genus}_{variant}"})
    rows.sort(key=lambda r: r["name"])
    for i, r in enumerate(rows):
        r["id"] = i
        r["image_dir_name"] = "_".join([f"{i:05d}", r["kingdom"], r["phylum"], r["class"], r["order"],
                                        r["family"], *r["name"].split()])
    return rows


def _save_jpeg(path: Path, toy_species: str, size: int, seed: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_toy_image(toy_species, size, np.random.default_rng(seed))).save(path, quality=90)


def _write_inat(out: Path, per_species: dict[str, int], size: int) -> None:
    cats = example_categories()
    image_id = 0
    for split_no, (split, n) in enumerate(per_species.items()):
        images, annotations = [], []
        for c in cats:
            for j in range(n):
                image_id += 1
                rel = f"{split}/{c['image_dir_name']}/{image_id}.jpg"
                _save_jpeg(out / rel, c["toy_species"], size, [split_no, c["id"], j])
                images.append({"id": image_id, "file_name": rel, "width": size, "height": size})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": c["id"]})
        public = [{k: v for k, v in c.items() if k != "toy_species"} for c in cats]
        doc = {"info": {"description": "linnaeus example (iNaturalist format)"}, "images": images,
               "annotations": annotations, "categories": public}
        (out / f"{split}.json").write_text(json.dumps(doc, indent=1) + "\n")


def _write_csv(out: Path, per_species: dict[str, int], size: int) -> None:
    cats = example_categories()
    for split_no, (split, n) in enumerate(per_species.items()):
        with open(out / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "species", "genus", "family", "order"])
            i = 0
            for j in range(n):  # interleaved species, as a field collection would list them
                for c in cats:
                    rel = f"img/{split}_{i:05d}.jpg"
                    _save_jpeg(out / rel, c["toy_species"], size, [10 + split_no, c["id"], j])
                    # unknown ranks on purpose; j == 0 keeps every species' full path known
                    row = [rel, "" if j % 4 == 1 else c["name"], "" if j % 5 == 2 else c["genus"],
                           "" if j % 7 == 3 else c["family"], c["order"]]
                    w.writerow(row)
                    i += 1


def _params(kind: str, train_per_species: int, val_per_species: int, img_size: int) -> dict:
    return {"kind": kind, "version": VERSION, "train_per_species": train_per_species,
            "val_per_species": val_per_species, "img_size": img_size}


def _is_complete(root: Path, params: dict) -> bool:
    marker = root / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != params:
            raise DatasetError(f"{root} holds an example dataset generated with {found}, but {params} was "
                               "requested. Delete the folder to regenerate it, or point DATA.ROOT elsewhere.")
        return True
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"{root} exists but is not a generated example dataset (no {MARKER}). Point DATA.ROOT "
                           "at an empty or missing folder, or drop DATA.EXAMPLE to train on your own files there.")
    return False


def ensure_example_dataset(root: str | os.PathLike, kind: str, train_per_species: int = 40,
                           val_per_species: int = 4, img_size: int = 64) -> Path:
    """Generate the ``kind`` ("inat" or "csv") example set into ``root`` unless it is there; returns ``root``."""
    if kind not in KINDS:
        raise DatasetError(f"DATA.EXAMPLE must be one of {list(KINDS)} or empty, got {kind!r}.")
    if train_per_species < 1 or val_per_species < 0:
        raise DatasetError("an example set needs at least one training image per species.")
    root = Path(os.path.expanduser(root)).absolute()
    params = _params(kind, int(train_per_species), int(val_per_species), int(img_size))
    if _is_complete(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root.parent / f".{root.name}.lock")):
        if _is_complete(root, params):
            return root
        for stale in root.parent.glob(f".{root.name}.tmp-*"):  # a killed generator's leftovers
            shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            splits = {"train": params["train_per_species"], "val": params["val_per_species"]}
            splits = {k: v for k, v in splits.items() if v > 0}
            (_write_inat if kind == "inat" else _write_csv)(tmp, splits, params["img_size"])
            (tmp / MARKER).write_text(json.dumps(params, sort_keys=True) + "\n")
            os.chmod(tmp, 0o755)
            os.rename(tmp, root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return root
