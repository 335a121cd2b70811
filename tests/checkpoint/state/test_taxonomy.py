"""Checkpoints record their taxonomy; resume refuses a changed one; transfer maps heads by class name
(issue 12, item 7). Two toy taxonomies that overlap in part, real files, real hybrid models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from linnaeus.checkpoint import CheckpointIncompatibleError, CheckpointManager, CheckpointPolicy
from linnaeus.checkpoint.load_report import write_load_reports
from linnaeus.data.taxonomy import load_taxonomy
from linnaeus.models import HybridConvNeXtRoPEViT
from linnaeus.models.pretrained import load_pretrained
from linnaeus.runner.taxonomy_record import taxonomy_levels
from tests.conftest import TINY_CFG
from tests.fixtures_rclone import BUCKET, REMOTE, RcloneServer, put, rclone_isolated, s3_server  # noqa: F401

LEVELS = ("species", "genus")
# B drops s1, adds s5 and s6, and splits genus g2 (s4 moves to the new genus g3).
TAXONOMY_A = {"s1": {"genus": "g1"}, "s2": {"genus": "g1"}, "s3": {"genus": "g2"}, "s4": {"genus": "g2"}}
TAXONOMY_B = {"s2": {"genus": "g1"}, "s3": {"genus": "g2"}, "s4": {"genus": "g3"}, "s5": {"genus": "g3"},
              "s6": {"genus": "g1"}}
# As many species as A (the head has A's shape), but other classes: s0 in, s4 out, so every row shifts.
TAXONOMY_C = {"s0": {"genus": "g1"}, "s1": {"genus": "g1"}, "s2": {"genus": "g1"}, "s3": {"genus": "g2"}}


def _taxonomy(tmp_path: Path, name: str, entries: dict):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(entries))
    return load_taxonomy(path, LEVELS)


def _model(taxonomy, seed: int) -> HybridConvNeXtRoPEViT:
    torch.manual_seed(seed)
    return HybridConvNeXtRoPEViT(taxonomy.num_classes, conv_stages=1, vit_depth=1, vit_dim=32, vit_heads=2,
                                 img_size=32)


def _saved(tmp_path: Path, taxonomy, *, weights_only: bool = False) -> tuple[Path, HybridConvNeXtRoPEViT]:
    model = _model(taxonomy, seed=0)
    manager = CheckpointManager(tmp_path / "run_a", CheckpointPolicy(weights_only=weights_only))
    manager.taxonomy = taxonomy_levels(taxonomy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = manager.save(epoch=1, step=2, model=model, optimizer=optimizer)
    manager.close()
    return path, model


def _row(model, level: str, name: str, taxonomy) -> torch.Tensor:
    head = model.heads[level]
    i = taxonomy.names(level).index(name)
    return torch.cat([head.weight[i], head.bias[i:i + 1]]).detach()


@pytest.mark.parametrize("weights_only", [False, True])
def test_checkpoints_record_each_levels_class_names_in_order(tmp_path: Path, weights_only: bool) -> None:
    a = _taxonomy(tmp_path, "a", TAXONOMY_A)
    path, _ = _saved(tmp_path, a, weights_only=weights_only)
    state = torch.load(path, weights_only=True)
    assert state["taxonomy"] == {"species": ["s1", "s2", "s3", "s4"], "genus": ["g1", "g2"]}
    assert list(state["taxonomy"]) == list(LEVELS)


def test_an_exported_weights_file_keeps_the_taxonomy_for_transfer(tmp_path: Path) -> None:
    from linnaeus.cli.ckpt import main as ckpt

    a, b = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "b", TAXONOMY_B)
    path, old = _saved(tmp_path, a)
    assert ckpt(["export", str(path), str(tmp_path / "export" / "a.pth")]) == 0
    new = _model(b, seed=1)
    [report] = load_pretrained(new, pretrained=str(tmp_path / "export" / "a.pth"), strategy="transfer",
                               taxonomy=taxonomy_levels(b))
    assert report.classes["species"] == {"kept": ["s2", "s3", "s4"], "added": ["s5", "s6"], "dropped": ["s1"]}
    assert torch.equal(_row(new, "species", "s4", b), _row(old, "species", "s4", a))


def test_resume_refuses_a_changed_taxonomy_listing_the_differences(tmp_path: Path) -> None:
    from linnaeus.config import load_config
    from linnaeus.engine.trainer import Progress
    from linnaeus.runner.checkpoints import RunCheckpoints

    a, b = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "b", TAXONOMY_B)
    cfg = load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path)])

    def attached(taxonomy, seed: int):
        ck, progress, model = RunCheckpoints(cfg, tmp_path / "tiny"), Progress(), _model(taxonomy, seed)
        ck.attach(progress=progress, model=model, taxonomy=taxonomy)
        return ck, progress, model

    ck, progress, _ = attached(a, 0)
    assert ck.find_resume_point() is None
    progress.epoch, progress.step = 1, 2
    ck.maybe_save_epoch(progress, {}, is_last=True)
    ck.close()

    ck, progress, model = attached(b, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    point = ck.find_resume_point()
    with pytest.raises(CheckpointIncompatibleError) as info:
        ck.begin(point)
    ck.close()
    msg = str(info.value)
    assert "was trained on another taxonomy than this run's" in msg, msg
    assert "species: 3 kept, 2 added (s5, s6), 1 dropped (s1)" in msg, msg
    assert "genus: 2 kept, 1 added (g3)" in msg, msg
    assert "MODEL.PRETRAINED_STRATEGY transfer" in msg, msg
    assert progress.step == 0 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    ck, progress, _ = attached(a, 2)  # the same taxonomy resumes
    ck.begin(ck.find_resume_point())
    ck.close()
    assert progress.step == 2


def test_transfer_maps_heads_by_class_name_and_reports_kept_added_dropped(tmp_path: Path) -> None:
    a, b = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "b", TAXONOMY_B)
    path, old = _saved(tmp_path, a)
    new = _model(b, seed=1)
    init = {n: _row(new, "species", n, b) for n in b.names("species")}
    [report] = load_pretrained(new, pretrained=str(path), strategy="transfer", taxonomy=taxonomy_levels(b))

    for name in ("s2", "s3", "s4"):  # kept: the old model's row for that class, wherever it now sits
        assert torch.equal(_row(new, "species", name, b), _row(old, "species", name, a)), name
    for name in ("s5", "s6"):  # added: initialised
        assert torch.equal(_row(new, "species", name, b), init[name]), name
    for name in ("g1", "g2"):
        assert torch.equal(_row(new, "genus", name, b), _row(old, "genus", name, a)), name
    assert report.classes == {"species": {"kept": ["s2", "s3", "s4"], "added": ["s5", "s6"], "dropped": ["s1"]},
                              "genus": {"kept": ["g1", "g2"], "added": ["g3"], "dropped": []}}
    assert report.ok and report.applied and not report.warnings, report.summary()
    assert "heads.species by class name: 3 kept, 2 added (initialised): s5, s6, 1 dropped: s1" in report.summary()
    assert set(report.loaded) >= {"heads.species.weight", "heads.species.bias", "stem.0.weight"}
    written = json.loads(write_load_reports([report], tmp_path / "load_report.json").read_text())
    assert written[0]["classes"] == report.classes


def test_same_shape_head_with_other_classes_is_never_loaded_by_position(tmp_path: Path) -> None:
    a, c = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "c", TAXONOMY_C)
    assert a.num_classes == c.num_classes  # the heads have the same shape
    path, old = _saved(tmp_path, a)

    new = _model(c, seed=1)
    init = _row(new, "species", "s0", c)
    [report] = load_pretrained(new, pretrained=str(path), strategy="transfer", taxonomy=taxonomy_levels(c))
    for name in ("s1", "s2", "s3"):  # by name: row i of the new head is not row i of the old one
        assert torch.equal(_row(new, "species", name, c), _row(old, "species", name, a)), name
    assert torch.equal(_row(new, "species", "s0", c), init)
    assert report.classes["species"] == {"kept": ["s1", "s2", "s3"], "added": ["s0"], "dropped": ["s4"]}

    strict = _model(c, seed=1)
    before = {k: v.clone() for k, v in strict.state_dict().items()}
    for strategy in ("weights_only", "strict"):
        with pytest.raises(CheckpointIncompatibleError) as info:
            load_pretrained(strict, pretrained=str(path), strategy=strategy, taxonomy=taxonomy_levels(c))
        msg = str(info.value)
        assert f"'{strategy}' load refused, the model was left unchanged" in msg, msg
        assert "species: 3 kept, 1 added (s0), 1 dropped (s4)" in msg and "transfer" in msg, msg
    assert all(torch.equal(v, before[k]) for k, v in strict.state_dict().items())


def test_a_file_without_taxonomy_loads_same_shape_heads_with_a_warning(tmp_path: Path) -> None:
    a, c = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "c", TAXONOMY_C)
    torch.save(_model(a, seed=0).state_dict(), tmp_path / "bare.pth")
    [report] = load_pretrained(_model(c, seed=1), pretrained=str(tmp_path / "bare.pth"), strategy="transfer",
                               taxonomy=taxonomy_levels(c))
    assert not report.classes
    assert any("heads.species" in w and "the file records no taxonomy" in w and "wrong classes" in w
               for w in report.warnings), report.warnings


def test_runner_pretrained_writes_the_class_mapping_to_load_report_json(tmp_path: Path) -> None:
    from linnaeus.config import load_config
    from linnaeus.runner.pretrained import load_pretrained_weights

    a, b = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "b", TAXONOMY_B)
    path, _ = _saved(tmp_path, a)
    cfg = load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "MODEL.PRETRAINED", str(path)])
    load_pretrained_weights(cfg, _model(b, seed=1), tmp_path / "run", taxonomy=b)
    [written] = json.loads((tmp_path / "run" / "load_report.json").read_text())
    assert written["classes"]["species"] == {"kept": ["s2", "s3", "s4"], "added": ["s5", "s6"], "dropped": ["s1"]}
    assert written["classes"]["genus"] == {"kept": ["g1", "g2"], "added": ["g3"], "dropped": []}


def test_a_real_run_records_its_datasets_taxonomy(tmp_path: Path, toy_root: Path,
                                                 restore_linnaeus_logger: None) -> None:
    from linnaeus.config import load_config
    from linnaeus.main import run

    # The runner in this process (main.py passes the data's taxonomy to the savers): one step, one save.
    run(load_config(str(TINY_CFG), ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "DATA.ROOT", str(toy_root),
                                    "TRAIN.EPOCHS", "1", "TRAIN.MAX_STEPS_PER_EPOCH", "1"]))
    state = torch.load(tmp_path / "tiny" / "checkpoints" / "checkpoint_epoch_1.pth", weights_only=True)
    toy = load_taxonomy(toy_root / "taxonomy.json", ("species", "genus", "family"))
    assert state["taxonomy"] == {level: toy.names(level) for level in ("species", "genus", "family")}


# ----------------------------------------------------------------------------- item 8: load_model, strategy registry
def test_load_model_resolves_any_identifier_and_maps_heads_by_class_name(tmp_path: Path,
                                                                          s3_server: RcloneServer) -> None:
    from linnaeus.checkpoint import load_model

    a, b = _taxonomy(tmp_path, "a", TAXONOMY_A), _taxonomy(tmp_path, "b", TAXONOMY_B)
    path, old = _saved(tmp_path, a)
    put(s3_server, "zoo/run_a_epoch_1.pth", path.read_bytes())
    cache = tmp_path / "cache"
    bucket = {"remote": REMOTE, "name": BUCKET, "path_prefix": "zoo/"}
    # A path, a bare name that only the bucket has (downloaded into the cache), the cached copy, a URI.
    for identifier in (str(path), "run_a_epoch_1.pth", "run_a_epoch_1.pth", f"{REMOTE}:{BUCKET}/zoo/run_a_epoch_1.pth"):
        new = _model(b, seed=1)
        report = load_model(new, identifier, strategy="transfer", cache_dir=cache, bucket=bucket,
                            taxonomy=taxonomy_levels(b), report_path=tmp_path / "load_report.json")
        assert report.classes["species"] == {"kept": ["s2", "s3", "s4"], "added": ["s5", "s6"], "dropped": ["s1"]}
        assert torch.equal(_row(new, "species", "s4", b), _row(old, "species", "s4", a))
        assert report.ok and report.applied
    assert (cache / "run_a_epoch_1.pth").read_bytes() == path.read_bytes()
    assert json.loads((tmp_path / "load_report.json").read_text())[0]["classes"] == report.classes


def _trunk_only(model, weights, *, taxonomy):
    """A user's strategy: every tensor but the heads must load (weights_only), the heads stay fresh."""
    from linnaeus.checkpoint.loading import load_weights

    scope = [k for k in model.state_dict() if not k.startswith("heads.")]
    return load_weights(model, {k: v for k, v in weights.tensors.items() if not k.startswith("heads.")},
                        strategy="weights_only", source=weights.path, scope=scope, weights_file=weights)


def test_registered_strategy_is_usable_from_load_model_and_model_pretrained_strategy(tmp_path: Path) -> None:
    from linnaeus.checkpoint import load_model, register_strategy, registered_strategies, unregister_strategy
    from linnaeus.config import ConfigError, load_config
    from linnaeus.runner.pretrained import load_pretrained_weights

    a = _taxonomy(tmp_path, "a", TAXONOMY_A)
    path, old = _saved(tmp_path, a)
    opts = ["ENV.OUTPUT.BASE_DIR", str(tmp_path), "MODEL.PRETRAINED", str(path), "MODEL.PRETRAINED_STRATEGY",
            "trunk_only"]
    with pytest.raises(ConfigError, match=r"MODEL.PRETRAINED_STRATEGY must be a registered load strategy "
                                          r"\(weights_only, transfer, strict\), got 'trunk_only'"):
        load_config(str(TINY_CFG), opts)
    with pytest.raises(ValueError, match="built in"):
        register_strategy("transfer", _trunk_only)
    register_strategy("trunk_only", _trunk_only)
    try:
        assert "trunk_only" in registered_strategies()
        new = _model(a, seed=1)
        heads = {k: v.clone() for k, v in new.state_dict().items() if k.startswith("heads.")}
        report = load_model(new, str(path), strategy="trunk_only", cache_dir=tmp_path / "cache")
        after = new.state_dict()
        assert all(torch.equal(after[k], v) for k, v in heads.items())  # heads untouched
        assert torch.equal(after["stem.0.weight"], old.state_dict()["stem.0.weight"])
        assert report.strategy == "weights_only" and report.applied

        cfg = load_config(str(TINY_CFG), opts)  # validates now
        runner_model = _model(a, seed=2)
        load_pretrained_weights(cfg, runner_model, tmp_path / "run", taxonomy=a)
        assert torch.equal(runner_model.state_dict()["stem.0.weight"], old.state_dict()["stem.0.weight"])
        assert (tmp_path / "run" / "load_report.json").is_file()
    finally:
        unregister_strategy("trunk_only")
    assert "trunk_only" not in registered_strategies()
