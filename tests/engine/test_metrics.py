"""Hierarchy-aware evaluation: the taxonomy's tree, balanced accuracy, consistency, mistake severity,
consistent decoding, masked labels, and the end-of-run report lines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from linnaeus.data.csv_manifest import read_csv_manifest
from linnaeus.data.hierarchy import Hierarchy
from linnaeus.data.manifest import build_taxonomy
from linnaeus.data.taxonomy import IGNORE_INDEX, DatasetError, Taxonomy, tree_conflicts
from linnaeus.engine.evaluator import evaluate, summary_lines
from tests.fixtures_rclone import free_port

KEYS = ("species", "genus", "family", "order")
# order O1 > family F1 > genus G1 > s1, s2 ; genus G2 > s3 ; family F2 > genus G3 > s4
#       O2 > family F3 > genus G4 > s5
TREE = {
    "s1": {"genus": "G1", "family": "F1", "order": "O1"},
    "s2": {"genus": "G1", "family": "F1", "order": "O1"},
    "s3": {"genus": "G2", "family": "F1", "order": "O1"},
    "s4": {"genus": "G3", "family": "F2", "order": "O1"},
    "s5": {"genus": "G4", "family": "F3", "order": "O2"},
}


def taxonomy() -> Taxonomy:
    return Taxonomy(task_keys=KEYS, path=Path("tree"), parents=TREE)


class Fixed(nn.Module):
    """Returns the logits stored for each input row (input = row index)."""

    def __init__(self, logits: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = x[:, 0].long()
        return {k: v[idx] for k, v in self.logits.items()}


def one_hot_logits(preds: list[list[int]]) -> dict[str, torch.Tensor]:
    """Logits whose argmax at each level is ``preds[i][level]``."""
    tax = taxonomy()
    out = {}
    for level, k in enumerate(KEYS):
        t = torch.zeros(len(preds), tax.num_classes[k])
        for i, p in enumerate(preds):
            t[i, p[level]] = 5.0
        out[k] = t
    return out


def run_eval(logits, labels, **kw):
    n = labels.shape[0]
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    loader = DataLoader(list(zip(x, labels)), batch_size=3)
    return evaluate(Fixed(logits), loader, list(KEYS), torch.device("cpu"),
                    hierarchy=Hierarchy.from_taxonomy(taxonomy()), **kw)


def path(species: str) -> list[int]:
    return taxonomy().labels(species)


# ------------------------------------------------------------------ the tree
def test_taxonomy_tree_parents_and_leaf_paths():
    tax = taxonomy()
    assert tax.names("genus") == ["G1", "G2", "G3", "G4"]
    assert tax.parent_indices("species") == [0, 0, 1, 2, 3]
    assert tax.parent_indices("genus") == [0, 0, 1, 2]
    assert tax.parent_indices("family") == [0, 0, 1]
    assert tax.is_complete
    assert tax.leaf_paths()[3] == path("s4") == [3, 2, 1, 0]


def test_partial_taxonomy_knows_what_it_does_not_know_and_refuses_transitive_conflicts(tmp_path):
    partial = Taxonomy(task_keys=KEYS[:3], path=Path("m.csv"), parents={"s1": {"genus": "G1"}, "s2": {"family": "F1"}},
                       branches={"genus": {"G1": {"family": "F1"}, "G9": {}}})
    assert partial.names("genus") == ["G1", "G9"]
    assert partial.labels("s2") == [1, IGNORE_INDEX, 0]
    assert partial.parent_indices("species") == [0, -1] and not partial.is_complete
    assert Hierarchy.from_taxonomy(partial) is None
    # s1 is under G1 (line 2), G1 under F1 (line 4), but s1 is also recorded directly under F2 (line 3)
    root = tmp_path
    for i in range(3):
        (root / f"{i}.jpg").write_bytes(b"")  # existence is all the manifest check needs
    (root / "m.csv").write_text("path,species,genus,family\n0.jpg,s1,G1,\n1.jpg,s1,,F2\n2.jpg,,G1,F1\n")
    with pytest.raises(DatasetError, match=re.escape(
            "species 's1' is under family 'F2' (line 3) and under genus 'G1' (line 2), which is under family 'F1' "
            "(line 4)")):
        build_taxonomy([read_csv_manifest(root / "m.csv", root, KEYS[:3])], KEYS[:3])
    # two ranks deep: s1 > G1 > F1 > O1 by the parents, but s1 recorded under O2
    records = [({"species": "s1", "genus": "G1"}, "line 2"), ({"genus": "G1", "family": "F1"}, "line 3"),
               ({"family": "F1", "order": "O1"}, "line 4"), ({"species": "s1", "order": "O2"}, "line 5")]
    assert tree_conflicts(KEYS, records)[0] == [
        "species 's1' is under order 'O2' (line 5) and under genus 'G1' (line 2), which is under order 'O1' "
        "(through its parents)"]
    assert tree_conflicts(KEYS, records[:3] + [({"species": "s1", "order": "O1"}, "line 5")])[0] == []


# ------------------------------------------------------------------ metrics
def test_consistency_and_mistake_severity_are_exact():
    truth = ["s1", "s1", "s1", "s1", "s1", "s5"]
    predicted = [
        path("s1"),  # right: not a mistake
        path("s2"),  # same genus: severity 1
        path("s3"),  # same family, other genus: 2
        path("s4"),  # same order, other family: 3
        path("s5"),  # no common ancestor among the 4 levels: 4
        [1, 1, 0, 0],  # s2 under G2? no (s2 is under G1): inconsistent, severity 4 (s2 vs s5)
    ]
    labels = torch.tensor([path(s) for s in truth])
    out = run_eval(one_hot_logits(predicted), labels)
    assert out["val/consistency"] == pytest.approx(5 / 6)
    assert out["val/mistake_severity"] == pytest.approx((1 + 2 + 3 + 4 + 4) / 5)
    assert out["val/acc1/species"] == pytest.approx(1 / 6)


def test_balanced_accuracy_weights_every_class_equally():
    # 8 images of s1 all right, 2 of s5 both wrong: top-1 80 %, balanced 50 %
    labels = torch.tensor([path("s1")] * 8 + [path("s5")] * 2)
    out = run_eval(one_hot_logits([path("s1")] * 10), labels)
    assert out["val/acc1/species"] == pytest.approx(0.8)
    assert out["val/bacc/species"] == pytest.approx(0.5)
    assert out["val/bacc/order"] == pytest.approx(0.5)


def test_unknown_labels_are_left_out_of_each_levels_accuracy_and_loss():
    labels = torch.tensor([path("s1"), path("s2"), [IGNORE_INDEX, 0, 0, 0], [IGNORE_INDEX, IGNORE_INDEX, 2, 1]])
    preds = [path("s1"), path("s1"), path("s3"), path("s5")]
    logits = one_hot_logits(preds)
    out = run_eval(logits, labels)
    assert out["val/acc1/species"] == pytest.approx(1 / 2)  # 2 known species labels, 1 right
    assert out["val/acc1/genus"] == pytest.approx(2 / 3)  # G1, G1 (right), G1 vs G2 (wrong)
    assert out["val/acc1/family"] == pytest.approx(1.0)
    expected = torch.nn.functional.cross_entropy(logits["species"][:2], labels[:2, 0]).item()
    assert out["val/loss/species"] == pytest.approx(expected)
    assert out["val/mistake_severity"] == pytest.approx(1.0)  # s2 predicted as s1; unknown leaves are not errors
    assert out["val/samples"] == 4


def test_consistent_decoding_picks_the_most_probable_path():
    torch.manual_seed(0)
    n = 40
    logits = {k: torch.randn(n, taxonomy().num_classes[k]) * 3 for k in KEYS}
    labels = torch.tensor([path("s1")] * n)
    tree = Hierarchy.from_taxonomy(taxonomy())
    decoded = tree.decode(logits)
    logp = {k: torch.log_softmax(v, -1) for k, v in logits.items()}
    paths = [path(s) for s in TREE]
    for i in range(n):  # brute force over every leaf's path
        best = max(paths, key=lambda p: sum(logp[k][i, p[j]].item() for j, k in enumerate(KEYS)))
        assert decoded[i].tolist() == best
    independent = run_eval(logits, labels)
    consistent = run_eval(logits, labels, consistent_decoding=True)
    assert independent["val/consistency"] < 1.0  # random logits disagree across levels
    assert consistent["val/consistency"] == 1.0
    assert consistent["val/acc5/species"] == independent["val/acc5/species"]  # top-5 stays per level
    # a case where the levels outvote the leaf: species says s3, genus/family/order say s1's path
    crafted = one_hot_logits([path("s1")])
    crafted["species"] = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    assert tree.decode(crafted)[0, 0].item() in (0, 1)  # s1 or s2 (tie), both under G1


def test_consistent_decoding_needs_a_tree():
    loader = DataLoader([(torch.zeros(1), torch.zeros(4, dtype=torch.long))], batch_size=1)
    with pytest.raises(ValueError, match="consistent_decoding needs the taxonomy's tree"):
        evaluate(Fixed(one_hot_logits([path("s1")])), loader, list(KEYS), torch.device("cpu"),
                 consistent_decoding=True)


def test_report_lines_show_balanced_accuracy_consistency_and_severity():
    labels = torch.tensor([path("s1"), path("s2")])
    out = run_eval(one_hot_logits([path("s1"), path("s1")]), labels)
    lines = summary_lines(out, list(KEYS), taxonomy().num_classes)
    assert lines[0].startswith("val top-1    species: 50.0%   top-5: 100.0%   balanced: 50.0%")
    assert any(line.startswith("val consistency:      100.0%") for line in lines)
    assert any(line.startswith("val mistake severity: 1.00 levels") for line in lines)
    old = {"val/acc1/species": 0.5, "val/acc5/species": 1.0}  # metrics of a checkpoint from before
    assert summary_lines(old, ["species"], {"species": 5}) == [
        "val top-1    species: 50.0%   top-5: 100.0%   (chance 20.0%)"]
    # nothing to average is no key at all (NaN would break comparisons of saved metric histories)
    perfect = run_eval(one_hot_logits([path("s1")]), torch.tensor([path("s1")]))
    assert "val/mistake_severity" not in perfect and "val mistake severity: no species errors" in \
        summary_lines(perfect, list(KEYS), taxonomy().num_classes)
    unlabeled = run_eval(one_hot_logits([path("s1")]), torch.tensor([[IGNORE_INDEX, 0, 0, 0]]))
    assert "val/acc1/species" not in unlabeled and "val/bacc/species" not in unlabeled
    assert unlabeled["val/loss"] == pytest.approx(sum(unlabeled[f"val/loss/{k}"] for k in KEYS[1:]))


# ------------------------------------------------------------------ across ranks
def _preds_and_labels(n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    species = list(TREE)
    truth = [species[i % 5] for i in range(n)]
    guess = [species[(i * 3) % 5] for i in range(n)]
    return one_hot_logits([path(s) for s in guess]), torch.tensor([path(s) for s in truth])


def _eval_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from linnaeus.data.sampler import ShardedEvalSampler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        out = {}
        for n in (7, 1):  # 4 + 3 samples; then 1 + 0: rank 1 has no batch at all
            logits, labels = _preds_and_labels(n)
            x = torch.arange(n, dtype=torch.float32).unsqueeze(1)
            loader = DataLoader(list(zip(x, labels)), batch_size=2, sampler=ShardedEvalSampler(n, world_size, rank))
            out[n] = evaluate(Fixed(logits), loader, list(KEYS), torch.device("cpu"),
                              hierarchy=Hierarchy.from_taxonomy(taxonomy()))
        torch.save(out, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_metrics_are_exact_across_ranks_even_for_a_rank_without_samples(tmp_path):
    import time

    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.start_processes(_eval_worker, args=(2, port, str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "evaluation across 2 ranks hung"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    for n in (7, 1):
        logits, labels = _preds_and_labels(n)
        single = run_eval(logits, labels)
        assert r0[n] == r1[n]
        assert r0[n].keys() == single.keys(), n
        for k, v in single.items():
            assert r0[n][k] == pytest.approx(v), (n, k)


# ------------------------------------------------------------------ what a taxonomist reads
def test_hierarchical_distance_at_k_is_the_mean_lca_height_of_the_k_best_guesses():
    tax = taxonomy()
    species = tax.num_classes["species"]
    # One image of s1: its leaf head ranks s2 (same genus, 1), s1 (right, 0), s4 (other family, 3), s3 (2), s5 (4).
    order = ["s2", "s1", "s4", "s3", "s5"]
    logits = one_hot_logits([path("s2")])
    logits["species"] = torch.zeros(1, species)
    for rank, name in enumerate(order):
        logits["species"][0, tax.labels(name)[0]] = 10.0 - rank
    out = run_eval(logits, torch.tensor([path("s1")]))
    assert out["val/hdist@1"] == pytest.approx(1.0)
    assert out["val/hdist@5"] == pytest.approx((1 + 0 + 3 + 2 + 4) / 5)


def test_expected_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    tax = taxonomy()
    truth = ["s1", "s1", "s1", "s1"]
    # Species probabilities of the predicted class: 0.9 (right), 0.9 (wrong), 0.3 (right), 0.3 (wrong).
    logits = one_hot_logits([path("s1")] * 4)
    n = tax.num_classes["species"]
    rows = []
    for p, cls in ((0.9, "s1"), (0.9, "s2"), (0.3, "s1"), (0.3, "s2")):
        probs = torch.full((n,), (1 - p) / (n - 1))
        probs[tax.labels(cls)[0]] = p
        rows.append(probs.log())
    logits["species"] = torch.stack(rows)
    out = run_eval(logits, torch.tensor([path(s) for s in truth]))
    # bin 0.9: confidence 0.9, accuracy 0.5 (gap 0.4); bin 0.3: confidence 0.3, accuracy 0.5 (gap 0.2); equal weight
    assert out["val/ece/species"] == pytest.approx((0.4 + 0.2) / 2, abs=1e-6)
    assert out["val/ece/genus"] >= 0 and "calibration error" in "\n".join(
        summary_lines(out, list(KEYS), tax.num_classes))
