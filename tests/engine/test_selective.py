"""Selective prediction's arithmetic: thresholds solved for a target accuracy, and the hierarchical
answers they give (the finest rank that reaches its threshold)."""

from __future__ import annotations

import pytest

from linnaeus.engine.prediction import parse_thresholds
from linnaeus.engine.selective import answered, solve_thresholds

RANKS = ["species", "genus"]


def _outcomes(species: list[tuple[float, bool | None]], genus: list[tuple[float, bool | None]]):
    return [[s, g] for s, g in zip(species, genus)]


def test_the_threshold_is_the_largest_coverage_that_meets_the_target():
    species = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.5, False)]
    genus = [(0.99, True)] * 5
    outcomes = _outcomes(species, genus)
    assert solve_thresholds(outcomes, RANKS, 0.75) == {"species": 0.6, "genus": 0.99}  # 3 of the 4 at >= 0.6
    assert solve_thresholds(outcomes, RANKS, 1.0) == {"species": 0.8, "genus": 0.99}
    # every image wrong at a rank: that rank is never answered
    assert "species" not in solve_thresholds(_outcomes([(0.9, False)] * 3, [(0.9, True)] * 3), RANKS, 0.5)
    # a threshold takes every image at its value: no cut between two equal confidences
    assert "species" not in solve_thresholds(_outcomes([(0.9, True), (0.9, False), (0.5, True)],
                                                       [(0.9, True)] * 3), RANKS, 1.0)
    # unknown classes at a rank do not count either way
    assert solve_thresholds(_outcomes([(0.9, None), (0.8, True)], [(0.9, True)] * 2), RANKS, 1.0)["species"] == 0.8
    with pytest.raises(ValueError, match="target accuracy"):
        solve_thresholds(outcomes, RANKS, 0.0)


def test_each_image_is_answered_at_the_finest_rank_that_reaches_its_threshold():
    outcomes = _outcomes([(0.95, True), (0.5, False), (0.5, False), (0.2, False)],
                         [(0.99, True), (0.9, True), (0.7, False), (0.3, True)])
    report = answered(outcomes, RANKS, {"species": 0.9, "genus": 0.8})
    assert report["share"] == {"species": 0.25, "genus": 0.25, "none": 0.5}
    assert report["accuracy"] == {"species": 1.0, "genus": 1.0} and report["answered_accuracy"] == 1.0
    assert report["coverage"] == 0.5


def test_thresholds_from_a_file_and_per_rank(tmp_path):
    path = tmp_path / "thresholds.json"
    path.write_text('{"target_accuracy": 0.99, "thresholds": {"genus": 0.8}}')
    assert parse_thresholds(f"@{path}", RANKS) == {"genus": 0.8}  # species left out: never answered
    assert parse_thresholds("0.3", RANKS) == {"species": 0.3, "genus": 0.3}
    assert parse_thresholds("species=0.95, genus=0.5", RANKS) == {"species": 0.95, "genus": 0.5}
    with pytest.raises(ValueError, match="expected the thresholds.json"):
        parse_thresholds(f"@{tmp_path / 'missing.json'}", RANKS)
    with pytest.raises(ValueError, match="between 0 and 1"):
        parse_thresholds("1.5", RANKS)
