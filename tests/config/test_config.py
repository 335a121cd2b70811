"""Config loading: defaults, _BASE_ inheritance, --opts, and the errors users see."""

from pathlib import Path

import pytest
import yaml

from linnaeus.config import ConfigError, dump_config, get_default_config, load_config, run_dir
from tests.conftest import REPO


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_default_key_has_a_comment():
    src = (REPO / "linnaeus" / "config" / "defaults.py").read_text().splitlines()
    for i, line in enumerate(src):
        stripped = line.strip()
        if stripped.startswith("_C.") and "= CN()" not in stripped and "=" in stripped:
            assert src[i - 1].strip().startswith("#"), f"config key without a comment: {stripped}"


def test_base_inheritance_is_recursive_relative_and_overridable(tmp_path):
    write(tmp_path / "a" / "root.yaml", {"TRAIN": {"EPOCHS": 3, "ACCUM_STEPS": 2}, "EXPERIMENT": {"NAME": "root"}})
    write(tmp_path / "a" / "mid.yaml", {"_BASE_": "root.yaml", "TRAIN": {"EPOCHS": 5}})
    write(tmp_path / "other.yaml", {"DATA": {"BATCH_SIZE": 7}})
    child = write(tmp_path / "exp.yaml", {"_BASE_": ["a/mid.yaml", "other.yaml"], "EXPERIMENT": {"NAME": "child"}})
    cfg = load_config(str(child))
    assert cfg.TRAIN.EPOCHS == 5  # mid overrides root
    assert cfg.TRAIN.ACCUM_STEPS == 2  # inherited from root through mid
    assert cfg.DATA.BATCH_SIZE == 7  # second base
    assert cfg.EXPERIMENT.NAME == "child"  # the file itself wins over its bases
    assert cfg.is_frozen()


def test_base_cycle_is_rejected(tmp_path):
    write(tmp_path / "x.yaml", {"_BASE_": "y.yaml"})
    write(tmp_path / "y.yaml", {"_BASE_": "x.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "x.yaml"))


def test_missing_base_names_the_referencing_file(tmp_path):
    f = write(tmp_path / "x.yaml", {"_BASE_": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"nope\.yaml.*referenced from .*x\.yaml"):
        load_config(str(f))


def test_opts_override_file_with_type_coercion(tmp_path):
    f = write(tmp_path / "x.yaml", {"TRAIN": {"EPOCHS": 3}})
    cfg = load_config(str(f), ["TRAIN.EPOCHS", "120", "TRAIN.RESUME", "checkpoint_epoch_100.pth",
                               "TRAIN.OPTIMIZER.LR", "1", "DATA.TASK_KEYS", "[species,genus]"])
    assert cfg.TRAIN.EPOCHS == 120
    assert cfg.TRAIN.RESUME == "checkpoint_epoch_100.pth"
    assert cfg.TRAIN.OPTIMIZER.LR == 1.0 and isinstance(cfg.TRAIN.OPTIMIZER.LR, float)
    assert list(cfg.DATA.TASK_KEYS) == ["species", "genus"]


def test_unknown_key_names_it_and_suggests_close_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'TRAIN.EPOCH'.*TRAIN.EPOCHS"):
        load_config(None, ["TRAIN.EPOCH", "3"])
    f = write(tmp_path / "x.yaml", {"CHECKPOINT": {"KEEP_LAST": 3}})
    with pytest.raises(ConfigError, match=r"x\.yaml.*CHECKPOINT.KEEP_LAST'.*CHECKPOINT.KEEP_LAST_N"):
        load_config(str(f))


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'TRAIN.EPOCHS' expects int"):
        load_config(None, ["TRAIN.EPOCHS", "many"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["TRAIN.EPOCHS"])


def test_checkpoint_interval_forms_and_colliding_template():
    assert load_config(None, ["CHECKPOINT.INTERVAL", "2"]).CHECKPOINT.INTERVAL == "2"
    load_config(None, ["CHECKPOINT.INTERVAL", "500st", "CHECKPOINT.FILENAME", "ckpt_{step}.pth"])
    with pytest.raises(ConfigError, match=r"\{step\}"):
        load_config(None, ["CHECKPOINT.INTERVAL", "500st"])
    with pytest.raises(ConfigError, match="neither"):
        load_config(None, ["CHECKPOINT.FILENAME", "last.pth"])
    with pytest.raises(ConfigError, match="INTERVAL"):
        load_config(None, ["CHECKPOINT.INTERVAL", "often"])
    with pytest.raises(ConfigError, match="MONITOR"):
        load_config(None, ["CHECKPOINT.KEEP_BEST_N", "2"])


def test_resolved_config_dump_roundtrips(tmp_path):
    cfg = load_config(None, ["EXPERIMENT.NAME", "x", "ENV.OUTPUT.BASE_DIR", str(tmp_path)])
    assert run_dir(cfg) == tmp_path / "x"
    dump_config(cfg, run_dir(cfg) / "config.yaml")
    again = load_config(str(run_dir(cfg) / "config.yaml"))
    assert again == cfg


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}``."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _lookup(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_shipped_configs_load():
    # Every config a user is pointed at (configs/, examples/) and the ones the tests train with.
    shipped = sorted([*(REPO / "configs").rglob("*.yaml"), *(REPO / "examples").rglob("*.yaml"),
                      *(REPO / "tests" / "configs").rglob("*.yaml")])
    assert any(f.parent == REPO / "configs" for f in shipped), "no configs/*.yaml found"
    for f in shipped:
        cfg = load_config(str(f))  # merges its _BASE_ chain and validates, or raises ConfigError
        own = _leaves(yaml.safe_load(f.read_text()) or {})
        own.pop("_BASE_", None)
        assert own, f"{f} sets no keys"
        for key, value in own.items():
            loaded = _lookup(cfg, key)
            if isinstance(value, list):
                loaded = list(loaded)
            if isinstance(loaded, str) and isinstance(value, int):  # INTERVAL: 2 is read as "2"
                value = str(value)
            assert loaded == value, f"{f}: {key} is {value!r} in the file but {loaded!r} once loaded"


def test_auto_resume_is_on_by_default():
    assert get_default_config().TRAIN.AUTO_RESUME is True


def test_credentials_in_identifiers_are_not_written(tmp_path):
    from linnaeus.config import config_yaml, dump_config, load_config

    cfg = load_config(None, ["MODEL.PRETRAINED", "https://alice:s3cr3t-pw@example.org/w.pth?X-Amz-Signature=abcdef123",
                             "TRAIN.RESUME", ":s3,access_key_id=AKIAXXXX,secret_access_key=TOPSECRET:bkt/c.pth"])
    dump_config(cfg, tmp_path / "config.yaml")
    for text in ((tmp_path / "config.yaml").read_text(), config_yaml(cfg)):
        for secret in ("alice", "s3cr3t-pw", "abcdef123", "AKIAXXXX", "TOPSECRET"):
            assert secret not in text
        assert "example.org/w.pth" in text and "bkt/c.pth" in text
    assert cfg.MODEL.PRETRAINED.startswith("https://alice")  # the live config is untouched


METRIC_NAME = "ckpt_{epoch}_{val_acc1_species:.3f}.pth"


def test_metric_fields_need_a_validation_before_every_save():
    # The reported failure: saving every epoch, validating every 2nd one.
    with pytest.raises(ConfigError) as err:
        load_config(None, ["CHECKPOINT.FILENAME", METRIC_NAME, "EVAL.INTERVAL", "2"])
    text = str(err.value)
    assert "CHECKPOINT.FILENAME" in text and "CHECKPOINT.INTERVAL '1ep'" in text and "EVAL.INTERVAL 2" in text
    assert "after epoch 1" in text and "multiple of EVAL.INTERVAL (2), e.g. '2ep'" in text
    with pytest.raises(ConfigError, match=r"CHECKPOINT.INTERVAL '3ep' saves after epoch 3"):
        load_config(None, ["CHECKPOINT.FILENAME", METRIC_NAME, "EVAL.INTERVAL", "2", "CHECKPOINT.INTERVAL", "3ep"])
    for interval in ("2ep", "4", "6ep"):
        load_config(None, ["CHECKPOINT.FILENAME", METRIC_NAME, "EVAL.INTERVAL", "2", "CHECKPOINT.INTERVAL", interval])
    load_config(None, ["CHECKPOINT.FILENAME", METRIC_NAME])  # defaults: both every epoch
    # SAVE_LAST_ONLY saves only after the last epoch, which is always validated.
    load_config(None, ["CHECKPOINT.FILENAME", METRIC_NAME, "EVAL.INTERVAL", "2", "CHECKPOINT.SAVE_LAST_ONLY", "True"])


def test_metric_fields_are_rejected_where_saves_have_no_metrics():
    with pytest.raises(ConfigError, match=r"CHECKPOINT.INTERVAL '500st' saves every 500 optimizer steps"):
        load_config(None, ["CHECKPOINT.INTERVAL", "500st", "CHECKPOINT.FILENAME", "c_{step}_{val_loss:.2f}.pth"])
    with pytest.raises(ConfigError, match=r"CHECKPOINT.MID_EPOCH_FILENAME .*preemption saves"):
        load_config(None, ["CHECKPOINT.MID_EPOCH_FILENAME", "c_{epoch}_{step}_{val_loss:.2f}.pth"])
    with pytest.raises(ConfigError, match=r"CHECKPOINT.WEIGHTS_SAVER.FILENAME .*WEIGHTS_SAVER.INTERVAL '1ep'"):
        load_config(None, ["CHECKPOINT.WEIGHTS_SAVER.ENABLED", "True", "EVAL.INTERVAL", "2",
                           "CHECKPOINT.WEIGHTS_SAVER.FILENAME", "w_{epoch}_{val_loss:.2f}.pth",
                           "CHECKPOINT.INTERVAL", "2ep"])
    with pytest.raises(ConfigError, match=r"DATA.VAL_FRACTION 0"):
        load_config(None, ["CHECKPOINT.FILENAME", METRIC_NAME, "DATA.VAL_FRACTION", "0.0"])


def test_metric_field_typos_and_bad_format_specs_fail_at_load():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["CHECKPOINT.FILENAME", "c_{epoch}_{val_acc1_specis:.3f}.pth"])
    assert "val_acc1_specis" in str(err.value) and "'val_acc1_species'" in str(err.value)
    with pytest.raises(ConfigError, match=r"CHECKPOINT\.FILENAME: filename template .*cannot be rendered"):
        load_config(None, ["CHECKPOINT.FILENAME", "c_{epoch}_{val_loss:d}.pth"])
    with pytest.raises(ConfigError, match=r"EVAL.INTERVAL must be >= 1"):
        load_config(None, ["EVAL.INTERVAL", "0"])


def test_checkpoint_policy_errors_name_the_config_key():
    from linnaeus.checkpoint import CheckpointPolicy, InvalidPolicyError
    from linnaeus.config import build_policy, build_weights_policy

    # The library names its own field, never a config key ...
    with pytest.raises(InvalidPolicyError) as err:
        CheckpointPolicy(keep_best_n=2)
    assert err.value.field == "keep_best_n" and err.value.related == ("monitor",)
    assert "CHECKPOINT" not in str(err.value)
    # ... and the config layer, which builds the same policies the runner saves with, adds the key.
    # Negative retention used to pass load_config and fail only when the runner built its savers.
    with pytest.raises(ConfigError, match=r"^CHECKPOINT\.KEEP_LAST_N: keep_last_n must be an int >= 0"):
        load_config(None, ["CHECKPOINT.KEEP_LAST_N", "-1"])
    with pytest.raises(ConfigError, match=r"^CHECKPOINT\.WEIGHTS_SAVER\.KEEP_LAST_N: "):
        load_config(None, ["CHECKPOINT.WEIGHTS_SAVER.KEEP_LAST_N", "-1"])
    with pytest.raises(ConfigError, match=r"^CHECKPOINT\.MODE: mode must be 'min' or 'max'"):
        load_config(None, ["CHECKPOINT.MODE", "best"])
    with pytest.raises(ConfigError, match=r"^CHECKPOINT\.WEIGHTS_SAVER\.INTERVAL: interval expects"):
        load_config(None, ["CHECKPOINT.WEIGHTS_SAVER.INTERVAL", "0ep"])
    with pytest.raises(ConfigError) as err:
        load_config(None, ["CHECKPOINT.INTERVAL", "500st"])
    assert "filename is CHECKPOINT.FILENAME, interval is CHECKPOINT.INTERVAL" in str(err.value)
    cfg = load_config(None, ["CHECKPOINT.INTERVAL", "500st", "CHECKPOINT.FILENAME", "s_{step}.pth",
                             "CHECKPOINT.KEEP_BEST_N", "1", "CHECKPOINT.MONITOR", "val/loss", "CHECKPOINT.MODE", "min"])
    policy = build_policy(cfg)
    assert (str(policy.interval), policy.filename, policy.keep_best_n, policy.monitor, policy.mode) == \
        ("500st", "s_{step}.pth", 1, "val/loss", "min")
    weights = build_weights_policy(cfg)
    assert weights.weights_only and weights.filename == cfg.CHECKPOINT.WEIGHTS_SAVER.FILENAME
