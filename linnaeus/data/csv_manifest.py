"""CSV manifests: one image per row, a ``path`` column and one column per rank.

::

    path,species,genus,family
    img/0001.jpg,Parus major,Parus,Paridae
    img/0002.jpg,,Parus,Paridae          <- species unknown for this image
    img/0003.jpg,,,Turdidae              <- only the family is known

``path`` is relative to ``DATA.ROOT``; the rank columns are named by ``DATA.TASK_KEYS`` (a
``species`` key also reads a ``name`` column). An empty cell means the rank is unknown for that
image: its label is ``IGNORE_INDEX`` and it is left out of that level's loss and metrics, not
made into a class. Other columns are ignored. Lines are numbered as in the file (header = 1).

An image is listed once: a second row for it, however its path is spelled (``img/a.jpg``,
``./img/a.jpg``, ``img//a.jpg``, ``img/x/../a.jpg``), is refused naming both lines and, where the
labels differ, both labels (which one is right is the user's call, not the reader's).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .manifest import Manifest, Problems, image_key, image_path
from .taxonomy import DatasetError

PATH_COLUMN = "path"


def _columns(header: Sequence[str], task_keys: Sequence[str], path: Path) -> dict[str, str]:
    """task key → column name; refuses a header that lacks ``path`` or a rank."""
    names = [h.strip() for h in header]
    columns = {k: k if k in names else ("name" if k == "species" and "name" in names else "") for k in task_keys}
    missing = [k for k, c in columns.items() if not c] + ([PATH_COLUMN] if PATH_COLUMN not in names else [])
    if missing:
        raise DatasetError(f"{path}: the header {names} lacks column(s) {missing}. A manifest needs a "
                           f"'{PATH_COLUMN}' column and one column per DATA.TASK_KEYS rank {list(task_keys)}.")
    return columns


def _listed_again(line: int, rel: str, key: str, first: tuple[int, str, dict[str, str]],
                  known: dict[str, str], task_keys: Sequence[str]) -> str:
    first_line, first_rel, first_known = first
    differ = [k for k in task_keys if known.get(k) != first_known.get(k)]
    if not differ:
        as_first = f" as {first_rel!r}; both are {key!r}" if rel != first_rel else ""
        return f"line {line}: {rel!r} is listed again (first on line {first_line}{as_first})"
    def cell(ranks: dict[str, str], k: str) -> str:
        return repr(ranks[k]) if k in ranks else "empty"

    labels = ", ".join(f"{k} {cell(known, k)} here, {cell(first_known, k)} on line {first_line}" for k in differ)
    that_is = f" (that is {key!r})" if rel != key else ""
    as_first = f" as {first_rel!r}" if first_rel not in (rel, key) else ""
    return (f"line {line}: {rel!r}{that_is} is already on line {first_line}{as_first} with other labels ({labels}); "
            "an image has one label per rank: keep the right row and delete the other(s)")


def read_csv_manifest(path: str | Path, root: str | Path, task_keys: Sequence[str]) -> Manifest:
    """Parse and check one CSV manifest; refuses it listing the first problems."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise FileNotFoundError(f"CSV manifest not found: {path}. Set DATA.TRAIN_ANN / DATA.VAL_ANN "
                                "(relative paths are under DATA.ROOT).")
    problems = Problems(path)
    manifest = Manifest(file=path, kind="line")
    seen: dict[str, tuple[int, str, dict[str, str]]] = {}  # image_key → its first row (line, path, ranks)
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets often write a BOM
        reader = csv.DictReader(f, skipinitialspace=True)
        try:
            if reader.fieldnames is None:
                raise DatasetError(f"{path} is empty; expected a header line '{PATH_COLUMN},{','.join(task_keys)}'.")
            columns = _columns(reader.fieldnames, task_keys, path)
            stripped = {h.strip(): h for h in reader.fieldnames}
            for row in reader:
                line = reader.line_num
                if None in row or any(v is None for v in row.values()):
                    problems.add(f"line {line}: {len(reader.fieldnames)} columns expected, found a different number")
                    continue
                known = {k: row[stripped[c]].strip() for k, c in columns.items() if row[stripped[c]].strip()}
                rel = row[stripped[PATH_COLUMN]].strip()
                if not known:
                    problems.add(f"line {line}: no rank known for {rel!r}; fill at least one of {list(task_keys)} "
                                 "or remove the row")
                    continue
                key = image_key(rel)
                if key is not None:
                    if key in seen:
                        problems.add(_listed_again(line, rel, key, seen[key], known, task_keys))
                        continue
                    seen[key] = (line, rel, known)
                file = image_path(root, rel, f"line {line}", problems)
                if file is None:
                    continue
                manifest.files.append(file)
                manifest.known.append(known)
                manifest.numbers.append(line)
        except (csv.Error, UnicodeDecodeError) as e:
            raise DatasetError(f"{path} line {reader.line_num}: not readable as CSV ({e}). Save it as UTF-8 CSV.") \
                from None
    problems.raise_if_any()
    if not manifest.files:
        raise DatasetError(f"{path} lists no images; expected one row per image after the header.")
    return manifest
