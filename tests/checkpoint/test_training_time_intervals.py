"""Training-time checkpoint intervals (``"90s"``, ``"30min"``, ``"2h"``) and lists of intervals
(``["1ep", "30min"]``): what they parse to, when they are due, and how a config spells them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from linnaeus.checkpoint import CheckpointPolicy, Interval, Schedule, parse_interval
from linnaeus.checkpoint.errors import InvalidPolicyError
from linnaeus.config import ConfigError, build_policy, build_weights_policy, load_config


def test_durations_parse_to_seconds_and_print_as_written() -> None:
    assert parse_interval("90s") == Interval(90, "s")
    assert parse_interval("30min") == Interval(1800, "s") and str(parse_interval("30min")) == "30min"
    assert parse_interval("2h") == Interval(7200, "s") and str(parse_interval("2h")) == "2h"
    assert parse_interval("120min") == parse_interval("2h")
    for bad in ("0min", "5d", "min", "", [], ["1ep", "often"], True):
        with pytest.raises(InvalidPolicyError, match=r"'<N>min' or '<N>h' \(training time\)"):
            parse_interval(bad)


def test_a_list_is_due_when_any_of_its_intervals_is() -> None:
    for spelling in (["1ep", "30min"], "1ep,30min", "[1ep, 30min]", ("1ep", "1800s")):
        assert parse_interval(spelling) == Schedule((Interval(1, "ep"), Interval(1800, "s"))), spelling
    both = parse_interval(["1ep", "30min"])
    assert str(both) == "1ep,30min" and both.by_time and not both.by_steps
    assert both.due(epoch=1, step=8, end_of_epoch=True)  # the epoch's end
    assert both.due(epoch=0, step=5, end_of_epoch=False, elapsed_ms=(1_799_000, 1_801_000))  # 30 min passed
    assert not both.due(epoch=0, step=6, end_of_epoch=False, elapsed_ms=(1_801_000, 1_803_000))
    assert parse_interval(["2h", "120min"]) == Interval(7200, "s")  # one interval twice is one interval


def test_training_time_is_due_at_the_first_step_past_each_multiple() -> None:
    every_3s = parse_interval("3s")
    steps = [(before, now) for before, now in zip(range(0, 10_000, 1000), range(1000, 11_000, 1000))]
    assert [now for before, now in steps if every_3s.due(epoch=0, step=0, end_of_epoch=False,
                                                         elapsed_ms=(before, now))] == [3000, 6000, 9000]
    # A long step (or a validation between epochs) that passes two multiples saves once.
    assert every_3s.due(epoch=0, step=1, end_of_epoch=False, elapsed_ms=(2000, 7000))
    # Never at an epoch's end by itself, nor before any training time passed.
    assert not every_3s.due(epoch=1, step=8, end_of_epoch=True)
    assert not every_3s.due(epoch=0, step=0, end_of_epoch=False, elapsed_ms=(0, 0))


def test_time_saves_are_named_as_mid_epoch_saves_and_need_no_step_field() -> None:
    policy = CheckpointPolicy(interval=parse_interval("30min"))  # the default epoch-named FILENAME
    assert policy.filename == "checkpoint_epoch_{epoch}.pth" and not policy.interval.by_steps
    with pytest.raises(InvalidPolicyError, match=r"\{step\}"):  # a step term still needs {step}
        CheckpointPolicy(interval=parse_interval(["1ep", "500st"]))


def test_a_config_takes_a_yaml_list_or_an_opts_string(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"CHECKPOINT": {"INTERVAL": ["1ep", "30min"],
                                                       "WEIGHTS_SAVER": {"ENABLED": True, "INTERVAL": "2h"}}}))
    cfg = load_config(str(cfg_file))
    assert cfg.CHECKPOINT.INTERVAL == "1ep,30min"  # kept as one string: the dumped config reloads
    assert build_policy(cfg).interval == parse_interval(["1ep", "30min"])
    assert build_weights_policy(cfg).interval == Interval(7200, "s")
    assert build_policy(load_config(None, ["CHECKPOINT.INTERVAL", "[1ep,30min]"])).interval == \
        parse_interval(["1ep", "30min"])
    with pytest.raises(ConfigError, match=r"CHECKPOINT.INTERVAL.*'<N>min'"):
        load_config(None, ["CHECKPOINT.INTERVAL", "[1ep,5days]"])


def test_metric_named_files_accept_a_training_time_term() -> None:
    # Time saves use MID_EPOCH_FILENAME, so only the epoch term must land on validated epochs.
    name = "ckpt_{epoch}_{val_acc1_species:.3f}.pth"
    load_config(None, ["CHECKPOINT.FILENAME", name, "CHECKPOINT.INTERVAL", "[1ep,30min]"])
    with pytest.raises(ConfigError, match=r"saves after epoch 3, which is not validated"):
        load_config(None, ["CHECKPOINT.FILENAME", name, "EVAL.INTERVAL", "2", "CHECKPOINT.INTERVAL", "[3ep,30min]"])


def test_the_weights_saver_names_its_time_saves_apart_from_the_main_savers() -> None:
    cfg = load_config(None, ["CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True", "CHECKPOINT.WEIGHTS_SAVER.INTERVAL", "30min",
                             "CHECKPOINT.INTERVAL", "30min"])
    main, weights = build_policy(cfg), build_weights_policy(cfg)
    assert weights.mid_epoch_filename == "weights_epoch_{epoch}_step_{step}.pth" != main.mid_epoch_filename
    # Metric fields cannot name a save made in the middle of an epoch.
    with pytest.raises(ConfigError, match=r"WEIGHTS_SAVER.INTERVAL '30min' also saves by training time"):
        load_config(None, ["CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True", "CHECKPOINT.WEIGHTS_SAVER.INTERVAL", "30min",
                           "CHECKPOINT.WEIGHTS_SAVER.FILENAME", "w_{epoch}_{val_acc1_species:.3f}.pth"])
