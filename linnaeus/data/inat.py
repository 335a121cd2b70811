"""iNaturalist-format annotations (the COCO-style JSON of iNat 2017/2018/2021).

::

    {"images":      [{"id": 1, "file_name": "train/03938_Animalia_..._Parus_major/1.jpg", ...}, ...],
     "annotations": [{"id": 1, "image_id": 1, "category_id": 3938}, ...],
     "categories":  [{"id": 3938, "name": "Parus major", "genus": "Parus", "family": "Paridae",
                      "order": "Passeriformes", "class": "Aves", "phylum": "Chordata",
                      "kingdom": "Animalia"}, ...]}

``file_name`` is relative to ``DATA.ROOT``. ``DATA.TASK_KEYS`` picks the ranks, finest first
(``species`` reads the ``name`` field). Every image needs exactly one annotation (test files,
which have none, are not a training or validation set), and every file one image id: a file
named again, however spelled (``train/a.jpg``, ``train/./a.jpg``), is refused naming both ids
and, where their categories differ, both categories.

The botanical and zoological codes are independent, so one genus name can be a plant and an
animal (*Morus*: mulberries and gannets). A name found under several kingdoms is therefore
qualified by its kingdom (``"Morus (Animalia)"``); within one kingdom a name under two parents
is an error naming both category ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .manifest import Manifest, Problems, image_key, image_path
from .taxonomy import DatasetError

RANKS = ("name", "genus", "family", "order", "class", "phylum", "kingdom")  # finest first
ALIASES = {"species": "name"}


def rank_fields(task_keys: Sequence[str]) -> list[str]:
    """The category field each task key reads; refuses unknown ranks and a coarse-to-fine order."""
    fields = [ALIASES.get(k, k) for k in task_keys]
    unknown = [k for k, f in zip(task_keys, fields) if f not in RANKS]
    if unknown:
        raise DatasetError(f"DATA.TASK_KEYS {list(task_keys)}: {unknown} are not iNaturalist ranks; use "
                           f"{list(RANKS)} (or 'species' for 'name').")
    order = [RANKS.index(f) for f in fields]
    if order != sorted(set(order)):
        raise DatasetError(f"DATA.TASK_KEYS {list(task_keys)} must list distinct ranks from finest to coarsest "
                           f"(e.g. [species, genus, family, order]).")
    return fields


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"iNaturalist annotation file not found: {path}. Set DATA.TRAIN_ANN / "
                                "DATA.VAL_ANN (relative paths are under DATA.ROOT).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON: {e}. Fix or re-download the file.") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict)
               or not isinstance(data.get(k), list)]
    if missing:
        raise DatasetError(f"{path}: expected an iNaturalist annotation object with lists {missing} "
                           "(images, annotations, categories).")
    return data


def _categories(data: dict[str, Any], task_keys: Sequence[str], fields: Sequence[str],
                problems: Problems) -> dict[Any, dict[str, str]]:
    """category id → {task key: name}, names qualified by kingdom where they span several."""
    raw: dict[Any, dict[str, str]] = {}
    kingdom_of: dict[Any, str] = {}
    for i, c in enumerate(data["categories"]):
        cid = c.get("id") if isinstance(c, dict) else None
        if cid is None:
            problems.add(f"categories[{i}] has no id")
            continue
        absent = [k for k, f in zip(task_keys, fields) if not isinstance(c.get(f), str) or not c.get(f).strip()]
        if absent:
            problems.add(f"category id {cid} has no {' / '.join(repr(a) for a in absent)} "
                         f"(needed by DATA.TASK_KEYS {list(task_keys)})")
            continue
        if cid in raw:
            problems.add(f"category id {cid} is listed twice")
            continue
        raw[cid] = {k: c[f].strip() for k, f in zip(task_keys, fields)}
        kingdom_of[cid] = c["kingdom"].strip() if isinstance(c.get("kingdom"), str) else ""
    kingdoms: dict[tuple[str, str], set[str]] = {}
    for cid, cat in raw.items():
        for k in task_keys:
            kingdoms.setdefault((k, cat[k]), set()).add(kingdom_of[cid])
    return {cid: {k: f"{n} ({kingdom_of[cid]})" if len(kingdoms[(k, n)]) > 1 and k != "kingdom" else n
                  for k, n in cat.items()}
            for cid, cat in raw.items()}


def _named_again(iid: Any, name: str, key: str, first: dict[str, Any], category: Any, first_category: Any) -> str:
    if category != first_category:
        that_is = f" (that is {key!r})" if name != key else ""
        return (f"image id {iid}: {name!r}{that_is} is the file of image id {first['id']} too, with another label: "
                f"category id {category} here, category id {first_category} there; an image has one label: keep the "
                "right image entry and delete the other with its annotation")
    as_first = f", {first['file_name']!r}; both are {key!r}" if first["file_name"] != name else ""
    return f"image id {iid}: {name!r} is listed again (first as image id {first['id']}{as_first})"


def read_inat(path: str | Path, root: str | Path, task_keys: Sequence[str]) -> Manifest:
    """Parse and check one iNaturalist annotation file; refuses it listing the first problems."""
    path, root = Path(path), Path(root)
    fields = rank_fields(task_keys)
    data = _load_json(path)
    problems = Problems(path)
    cats = _categories(data, task_keys, fields, problems)
    # every sample's ranks are its category's: the category records alone describe the tree
    manifest = Manifest(file=path, kind="image id", sample_records=False)
    manifest.records = [(cat, f"category id {cid}") for cid, cat in cats.items()]

    label_of: dict[Any, Any] = {}
    listed = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    annotated: set[Any] = set()  # images with an annotation, kept or refused (then reported once)
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a:
            problems.add(f"annotations[{i}] needs image_id and category_id")
            continue
        annotated.add(a["image_id"])
        if a["category_id"] not in cats:
            if a["category_id"] not in listed:
                problems.add(f"annotation id {a.get('id', i)} (image id {a['image_id']}) refers to category id "
                             f"{a['category_id']}, which is not in categories")
            continue  # a category already reported as incomplete
        if a["image_id"] in label_of:
            problems.add(f"image id {a['image_id']} has more than one annotation; classification needs one")
            continue
        label_of[a["image_id"]] = a["category_id"]

    seen: set[Any] = set()
    # image_key → position in images of its first entry: an int, not a copy, over millions of images
    first_of: dict[str, int] = {}
    for i, im in enumerate(data["images"]):
        iid = im.get("id") if isinstance(im, dict) else None
        if iid is None:
            problems.add(f"images[{i}] has no id")
            continue
        if iid in seen:
            problems.add(f"image id {iid} is listed twice")
            continue
        seen.add(iid)
        if iid not in label_of:
            if iid not in annotated:
                problems.add(f"image id {iid} ({im.get('file_name')}) has no annotation")
            continue
        key = image_key(im.get("file_name"))
        if key is not None:
            if key in first_of:
                first = data["images"][first_of[key]]
                problems.add(_named_again(iid, im["file_name"], key, first, label_of[iid], label_of[first["id"]]))
                continue
            first_of[key] = i
        file = image_path(root, im.get("file_name", ""), f"image id {iid}", problems)
        if file is None or label_of[iid] not in cats:
            continue
        manifest.files.append(file)
        manifest.known.append(cats[label_of[iid]])
        manifest.numbers.append(iid)
    for iid in annotated - seen:
        problems.add(f"an annotation refers to image id {iid}, which is not in images")
    problems.raise_if_any()
    if not manifest.files:
        raise DatasetError(f"{path} lists no images. Point DATA.TRAIN_ANN / DATA.VAL_ANN at a train or val file.")
    return manifest
