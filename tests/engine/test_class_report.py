"""The class report counted during training's validation (by index, :class:`ClassTally`) equals the
one ``linnaeus-eval`` derives from its per-image rows, and ranks' unknown labels are left out."""

from __future__ import annotations

import torch

from linnaeus.engine.class_report import ClassTally, confused_siblings, pair_counts, per_class
from linnaeus.engine.loss import IGNORE_INDEX


def test_tally_by_index_equals_the_counts_of_the_rows() -> None:
    names = {"species": ["a1", "a2", "b1"], "genus": ["A", "B"]}
    parents = {"species": {"a1": "A", "a2": "A", "b1": "B"}}
    g = torch.Generator().manual_seed(0)
    tally, rows = ClassTally(["species", "genus"], names), []
    for _ in range(5):
        species = torch.randint(0, 3, (40,), generator=g)
        labels = torch.stack([species, (species == 2).long()], dim=1)
        labels[::7, 0] = IGNORE_INDEX  # species unknown for some images
        preds = torch.stack([torch.randint(0, 3, (40,), generator=g), torch.randint(0, 2, (40,), generator=g)], 1)
        tally(None, preds, labels)
        for lab, pred in zip(labels.tolist(), preds.tolist()):
            rows.append({f"{k}_true": names[k][lab[i]] if lab[i] != IGNORE_INDEX else "" for i, k in enumerate(names)}
                        | {f"{k}_pred": names[k][pred[i]] for i, k in enumerate(names)})
    counts = tally.gather()
    assert counts == pair_counts(rows, ["species", "genus"])
    assert sum(counts["species"].values()) == 200 - 5 * 6  # the unknown ones are not counted
    classes = per_class(counts, ["species", "genus"])
    assert [e["accuracy"] for e in classes if e["rank"] == "species"] == sorted(
        e["accuracy"] for e in classes if e["rank"] == "species")
    pairs = confused_siblings(counts, ["species", "genus"], parents)
    assert {(p["true"], p["predicted"]) for p in pairs if p["rank"] == "species"} == {("a1", "a2"), ("a2", "a1")}
    assert {p["parent"] for p in pairs if p["rank"] == "species"} == {"A"}
