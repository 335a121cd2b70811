"""Engine: loss, metrics, optimizer/schedule, the training loop's exactness, AMP, logging.

Small in-process models and in-memory data; the loop is exercised with the real
ResumableDistributedSampler so that resume tests cover the sampler contract too.
"""

from __future__ import annotations

import logging
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from linnaeus.config import ConfigError, load_config
from linnaeus.data.sampler import ResumableDistributedSampler, ShardedEvalSampler
from linnaeus.engine.amp import build_amp
from linnaeus.engine.evaluator import evaluate
from linnaeus.engine.loss import MultiLevelLoss
from linnaeus.engine.metrics import RunningSums, topk_correct
from linnaeus.engine.optim import build_ema, build_optimizer, build_scheduler
from linnaeus.engine.run_log import NullWriter, build_tb_writer, setup_logging
from linnaeus.engine.trainer import Progress, Trainer, steps_per_epoch
from tests.fixtures_rclone import free_port

LEVELS = {"species": 6, "genus": 3}
TASK_KEYS = list(LEVELS)
IN_DIM = 8


class TinyNet(nn.Module):
    """Stand-in for a linnaeus model: forward returns {level: logits}."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_DIM, 16), nn.GELU(), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(16)
        self.heads = nn.ModuleDict({k: nn.Linear(16, n) for k, n in LEVELS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.norm(self.body(x))
        return {k: head(h) for k, head in self.heads.items()}


class KeyedDataset(Dataset):
    """Answers ``(epoch, index)`` keys like linnaeus.data: "augmentation" seeded from the key, not the RNG."""

    def __init__(self, n: int = 48, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, IN_DIM, generator=g)
        species = torch.randint(0, LEVELS["species"], (n,), generator=g)
        self.y = torch.stack([species, species // 2], dim=1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        noise = torch.randn(IN_DIM, generator=torch.Generator().manual_seed(1000 * epoch + index)) * 0.1
        return self.x[index] + noise, self.y[index]


def make_cfg(*opts: str):
    return load_config(None, ["DATA.TASK_KEYS", "[species,genus]", *opts])


class Setup:
    """Everything a run holds, built deterministically from a seed (what the runner does)."""

    def __init__(self, cfg, *, batch_size: int = 4, dropout: float = 0.0, n: int = 48, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        torch.manual_seed(seed)
        self.cfg = cfg
        self.model = TinyNet(dropout)
        self.optimizer = build_optimizer(cfg, self.model)
        self.dataset = KeyedDataset(n)
        self.sampler = ResumableDistributedSampler(n, world_size, rank, seed=7, shuffle=shuffle)
        self.loader = DataLoader(self.dataset, batch_size=batch_size, sampler=self.sampler)
        self.upe = steps_per_epoch(len(self.loader), cfg.TRAIN.ACCUM_STEPS, cfg.TRAIN.MAX_STEPS_PER_EPOCH)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.upe)
        self.ema = build_ema(cfg, self.model)
        self.progress = Progress()

    def trainer(self, ddp_model: nn.Module | None = None, **kw) -> Trainer:
        c = self.cfg.TRAIN
        return Trainer(
            self.model, ddp_model if ddp_model is not None else self.model, self.optimizer, self.scheduler,
            MultiLevelLoss(TASK_KEYS, c.LOSS_WEIGHTS, c.LABEL_SMOOTHING), self.loader, self.sampler,
            torch.device("cpu"), accum_steps=c.ACCUM_STEPS, clip_grad=c.CLIP_GRAD, amp=c.AMP, ema=self.ema,
            max_steps_per_epoch=c.MAX_STEPS_PER_EPOCH, log_interval=c.LOG_INTERVAL, progress_bar=False, **kw,
        )

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "ema": self.ema.state_dict() if self.ema else None, "sampler": self.sampler.state_dict(),
            "progress": self.progress.to_dict(), "rng": torch.get_rng_state(),
        }

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self.sampler.load_state_dict(state["sampler"])
        self.progress.load_state_dict(state["progress"])
        torch.set_rng_state(state["rng"])


def train_epochs(s: Setup, trainer: Trainer, until_epoch: int, stop_at_step: int | None = None) -> dict:
    result: dict = {}
    while s.progress.epoch < until_epoch:
        s.sampler.set_epoch(s.progress.epoch)
        result = trainer.train_epoch(s.progress, lambda p: p.step == stop_at_step)
        if not result["completed"]:
            break
    return result


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


# ----------------------------------------------------------------------------- loss and metrics
def test_loss_is_weighted_sum_of_per_level_cross_entropy():
    torch.manual_seed(0)
    outputs = {"species": torch.randn(5, 6), "genus": torch.randn(5, 3)}
    labels = torch.tensor([[0, 0], [1, 0], [2, 1], [5, 2], [4, 2]])
    total, per_level = MultiLevelLoss(TASK_KEYS, [1.0, 0.25])(outputs, labels)
    expected = {"species": F.cross_entropy(outputs["species"], labels[:, 0]),
                "genus": F.cross_entropy(outputs["genus"], labels[:, 1])}
    for k in TASK_KEYS:
        torch.testing.assert_close(per_level[k], expected[k])
    torch.testing.assert_close(total, expected["species"] + 0.25 * expected["genus"])
    unweighted, _ = MultiLevelLoss(TASK_KEYS)(outputs, labels)
    torch.testing.assert_close(unweighted, expected["species"] + expected["genus"])


def test_loss_rejects_mismatched_weights_labels_and_outputs():
    with pytest.raises(ValueError, match="3 weights for 2 levels"):
        MultiLevelLoss(TASK_KEYS, [1.0, 1.0, 1.0])
    loss = MultiLevelLoss(TASK_KEYS)
    with pytest.raises(ValueError, match=r"labels must be \[batch, 2\]"):
        loss({"species": torch.randn(2, 6), "genus": torch.randn(2, 3)}, torch.zeros(2, dtype=torch.long))
    with pytest.raises(KeyError, match="lack levels \\['genus'\\]"):
        loss({"species": torch.randn(2, 6)}, torch.zeros(2, 2, dtype=torch.long))


def test_topk_correct_counts_and_clamps_k_to_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.15], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    target = torch.tensor([1, 2, 0, 1])
    # rank of each target: 1st, 2nd, 3rd, 2nd
    assert topk_correct(logits, target, (1, 2, 5)).tolist() == [1.0, 3.0, 4.0]


def test_running_sums_average_over_samples():
    sums = RunningSums(["a", "b"])
    sums.update(torch.tensor([2.0, 4.0]), 2)
    sums.update(torch.tensor([1.0, 0.0]), 1)
    assert sums.averages() == {"a": 1.0, "b": 4.0 / 3}
    sums.reset()
    assert all(math.isnan(v) for v in sums.averages().values())


def test_evaluate_reports_exact_per_level_accuracy_and_restores_train_mode():
    class Oracle(nn.Module):
        """Species right on even samples; genus always right."""

        def forward(self, x):
            idx = x[:, 0].long()
            species = F.one_hot(torch.where(idx % 2 == 0, idx % 6, (idx + 1) % 6), 6).float()
            genus = F.one_hot((idx % 6) // 2, 3).float()
            return {"species": species, "genus": genus}

    n = 10
    x = torch.zeros(n, IN_DIM)
    x[:, 0] = torch.arange(n)
    y = torch.stack([torch.arange(n) % 6, (torch.arange(n) % 6) // 2], dim=1)
    loader = DataLoader(list(zip(x, y)), batch_size=3)
    model = Oracle().train()
    rng = torch.get_rng_state()
    out = evaluate(model, loader, TASK_KEYS, torch.device("cpu"))
    assert model.training
    assert torch.equal(torch.get_rng_state(), rng)  # evaluating never shifts the training RNG stream
    assert out["val/acc1/species"] == 0.5
    assert out["val/acc1/genus"] == 1.0
    assert out["val/acc5/genus"] == 1.0  # top-min(5, 3)
    assert out["val/samples"] == n
    expected_species = F.cross_entropy(model(x)["species"], y[:, 0]).item()
    assert out["val/loss/species"] == pytest.approx(expected_species)
    assert out["val/loss"] == pytest.approx(out["val/loss/species"] + out["val/loss/genus"])


# ----------------------------------------------------------------------------- optimizer and schedule
def test_optimizer_from_config_exempts_norms_and_biases_from_weight_decay():
    opt = build_optimizer(make_cfg("TRAIN.OPTIMIZER.NAME", "adamw", "TRAIN.OPTIMIZER.WEIGHT_DECAY", "0.1"), TinyNet())
    assert isinstance(opt, torch.optim.AdamW)
    groups = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert sorted(groups) == [0.0, 0.1]
    assert all(p.ndim == 2 for p in groups[0.1])  # Linear weights
    assert all(p.ndim == 1 for p in groups[0.0]) and len(groups[0.0]) == 5  # biases and LayerNorm
    with pytest.raises(ConfigError, match="TRAIN.OPTIMIZER.NAME"):
        build_optimizer(make_cfg("TRAIN.OPTIMIZER.NAME", "adamz"), TinyNet())


def lr_curve(cfg, upe: int, steps: int, state: dict | None = None) -> list[float]:
    opt = build_optimizer(cfg, TinyNet())
    sched = build_scheduler(cfg, opt, upe)
    if state is not None:
        sched.load_state_dict(state)
    lrs = []
    for step in range(steps):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    return lrs


def test_scheduler_warms_up_linearly_then_decays_per_step_with_cosine():
    cfg = make_cfg("TRAIN.EPOCHS", "3", "TRAIN.OPTIMIZER.LR", "0.1", "TRAIN.SCHEDULER.WARMUP_EPOCHS", "1",
                   "TRAIN.SCHEDULER.WARMUP_LR", "0.0", "TRAIN.SCHEDULER.MIN_LR", "0.001")
    upe = 10
    lrs = lr_curve(cfg, upe, 3 * upe + 1)
    assert lrs[:upe] == pytest.approx([0.1 * t / upe for t in range(upe)])  # linear warmup, per step
    for t in range(upe, 3 * upe):  # cosine over the whole schedule (warmup not a prefix, as in timm)
        assert lrs[t] == pytest.approx(0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * t / (3 * upe))))
    assert all(a > b for a, b in zip(lrs[upe:], lrs[upe + 1:]))  # strictly decreasing within epochs
    assert lrs[-1] == pytest.approx(0.001)


def test_scheduler_state_round_trips_and_raising_epochs_on_resume_follows_the_new_schedule(tmp_path, caplog):
    base = ["TRAIN.SCHEDULER.WARMUP_EPOCHS", "1", "TRAIN.OPTIMIZER.LR", "0.1"]
    cfg2, cfg4 = make_cfg("TRAIN.EPOCHS", "2", *base), make_cfg("TRAIN.EPOCHS", "4", *base)
    sched = build_scheduler(cfg2, build_optimizer(cfg2, TinyNet()), 10)
    torch.save(sched.state_dict(), tmp_path / "s.pth")
    state = torch.load(tmp_path / "s.pth", weights_only=True)
    # Same config: loading changes nothing, so a resume is exact.
    assert lr_curve(cfg2, 10, 20, state) == lr_curve(cfg2, 10, 20)
    # TRAIN.EPOCHS raised on resume: the rebuilt (longer) schedule wins and the change is logged.
    with caplog.at_level(logging.INFO, logger="linnaeus.engine.optim"):
        resumed = lr_curve(cfg4, 10, 40, state)
    assert resumed == lr_curve(cfg4, 10, 40)
    assert resumed[19] > resumed[39] > 0.0  # not already at min_lr where the old schedule ended
    assert "t_initial 20 -> 40" in caplog.text
    with pytest.raises(ValueError, match="expected a dict with keys"):
        sched.load_state_dict({"t_initial": 3})


def test_scheduler_none_keeps_the_optimizer_lr_and_unknown_names_are_config_errors():
    cfg = make_cfg("TRAIN.SCHEDULER.NAME", "none", "TRAIN.OPTIMIZER.LR", "0.02")
    opt = build_optimizer(cfg, TinyNet())
    assert build_scheduler(cfg, opt, 10) is None
    assert opt.param_groups[0]["lr"] == 0.02
    with pytest.raises(ConfigError, match="TRAIN.SCHEDULER.NAME"):
        build_scheduler(make_cfg("TRAIN.SCHEDULER.NAME", "cosinus"), opt, 10)


def test_steps_per_epoch_counts_a_short_trailing_group_and_applies_the_cap():
    assert steps_per_epoch(10, 1) == 10
    assert steps_per_epoch(10, 4) == 3
    assert steps_per_epoch(10, 4, max_steps_per_epoch=2) == 2


def test_progress_round_trips_as_plain_ints_and_rejects_bad_state():
    p = Progress(epoch=2, step=30, epoch_step=5, samples=960)
    assert Progress.from_dict(p.to_dict()) == p
    assert all(type(v) is int for v in p.to_dict().values())
    with pytest.raises(ValueError, match="missing \\['samples'\\]"):
        Progress.from_dict({"epoch": 1, "step": 2, "epoch_step": 0})
    with pytest.raises(ValueError, match="invalid"):
        Progress().load_state_dict({"epoch": 1, "step": -2, "epoch_step": 0, "samples": 0})


# ----------------------------------------------------------------------------- the training loop
SGD = ["TRAIN.OPTIMIZER.NAME", "momentum", "TRAIN.OPTIMIZER.MOMENTUM", "0.9", "TRAIN.OPTIMIZER.WEIGHT_DECAY", "0.0",
       "TRAIN.SCHEDULER.NAME", "none", "TRAIN.OPTIMIZER.LR", "0.5"]


@pytest.mark.parametrize("n", [48, 40])  # 40 samples = 5 micro-batches of 8: a short trailing group
def test_gradient_accumulation_matches_one_big_batch(n):
    big = Setup(make_cfg(*SGD, "TRAIN.ACCUM_STEPS", "1"), batch_size=16, n=n, shuffle=False)
    small = Setup(make_cfg(*SGD, "TRAIN.ACCUM_STEPS", "2"), batch_size=8, n=n, shuffle=False)
    train_epochs(big, big.trainer(), 1)
    result = train_epochs(small, small.trainer(), 1)
    assert small.progress == big.progress == Progress(epoch=1, step=math.ceil(n / 16), epoch_step=0, samples=n)
    assert result["completed"]
    for (k, a), b in zip(big.model.state_dict().items(), small.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{k} differs")
    assert small.sampler.consumed == n


def resume_cfg(*extra: str):
    return make_cfg("TRAIN.ACCUM_STEPS", "2", "TRAIN.CLIP_GRAD", "1.0", "TRAIN.EMA.ENABLED", "True",
                    "TRAIN.EMA.DECAY", "0.9", "TRAIN.EPOCHS", "2", "TRAIN.LABEL_SMOOTHING", "0.1",
                    "TRAIN.LOSS_WEIGHTS", "[1.0, 0.5]", *extra)


def test_stopping_mid_epoch_and_resuming_in_a_fresh_trainer_is_bit_identical(tmp_path):
    # Dropout makes the model draw from the RNG, so the restored RNG state matters.
    ref = Setup(resume_cfg(), dropout=0.2)
    train_epochs(ref, ref.trainer(), 2)
    ref_rng = torch.get_rng_state()

    first = Setup(resume_cfg(), dropout=0.2)
    result = train_epochs(first, first.trainer(), 2, stop_at_step=4)  # 6 steps per epoch: mid-epoch 0
    assert not result["completed"]
    assert first.progress == Progress(epoch=0, step=4, epoch_step=4, samples=32)
    assert first.sampler.state_dict()["consumed"] == 32
    torch.save(first.state(), tmp_path / "ckpt.pth")

    resumed = Setup(resume_cfg(), dropout=0.2, seed=123)  # different init: everything comes from the state
    resumed.restore(torch.load(tmp_path / "ckpt.pth", weights_only=True))
    result = train_epochs(resumed, resumed.trainer(), 2)
    assert result["completed"]
    assert resumed.progress == ref.progress == Progress(epoch=2, step=12, epoch_step=0, samples=96)
    assert_same_weights(resumed.model, ref.model)
    assert_same_weights(resumed.ema, ref.ema)
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the loop itself drew nothing extra


def test_max_steps_per_epoch_counts_steps_already_done_before_a_resume():
    cfg = resume_cfg("TRAIN.MAX_STEPS_PER_EPOCH", "3")
    s = Setup(cfg)
    assert s.upe == 3
    trainer = s.trainer()
    assert not train_epochs(s, trainer, 1, stop_at_step=2)["completed"]
    state = s.state()
    s2 = Setup(cfg)
    s2.restore(state)
    result = train_epochs(s2, s2.trainer(), 1)
    assert result["completed"]
    assert s2.progress == Progress(epoch=1, step=3, epoch_step=0, samples=24)


def test_bf16_autocast_on_cpu_trains_in_bfloat16():
    cfg = make_cfg("TRAIN.AMP", "True")
    autocast, scaler = build_amp(cfg, torch.device("cpu"))
    assert scaler is None  # bf16 needs no loss scaling
    s = Setup(cfg)
    seen = []
    s.model.heads["species"].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in s.model.parameters()]
    trainer = Trainer(s.model, s.model, s.optimizer, s.scheduler, MultiLevelLoss(TASK_KEYS), s.loader, s.sampler,
                      torch.device("cpu"), autocast=autocast, progress_bar=False)
    s.sampler.set_epoch(0)
    result = trainer.train_epoch(s.progress)
    assert seen and set(seen) == {torch.bfloat16}
    assert math.isfinite(result["train/loss"])
    assert all(p.dtype == torch.float32 for p in s.model.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, s.model.parameters()))


def test_tensorboard_scalars_log_file_and_progress_bar_on_rank_0(tmp_path, capsys, restore_linnaeus_logger):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    logger = setup_logging(run, rank=0)
    tb = build_tb_writer(run, rank=0, resumed_step=0)
    s = Setup(make_cfg("TRAIN.LOG_INTERVAL", "2"))
    s.sampler.set_epoch(0)
    trainer = s.trainer(tb_writer=tb, logger=logging.getLogger("linnaeus.engine"))
    trainer.progress_bar = True
    result = trainer.train_epoch(s.progress)
    tb.close()
    out, err = capsys.readouterr()
    assert "epoch 0 step 12 (epoch step 12) loss" in out  # log lines still reach stdout around the bar
    assert "epoch 0: " in err and "/12 [" in err  # the bar, on stderr, with the epoch's step count
    assert result["train/images_per_sec"] > 0
    acc = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss/species", "train/loss/genus", "train/lr", "train/images_per_sec"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8, 10, 12]
    text = (run / "log.txt").read_text()
    assert "epoch 0 step 12 (epoch step 12) loss" in text
    # A resumed run appends to the same log; other ranks write no files and no events.
    assert logger.name == "linnaeus"
    setup_logging(run, rank=0)
    logging.getLogger("linnaeus.checkpoint").info("Saved checkpoint /x/checkpoint_epoch_1.pth")
    assert (run / "log.txt").read_text().startswith(text)
    assert "Saved checkpoint /x/checkpoint_epoch_1.pth" in (run / "log.txt").read_text()
    other = tmp_path / "rank1"
    setup_logging(other, rank=1)
    logging.getLogger("linnaeus.engine").info("not shown on rank 1")
    logging.getLogger("linnaeus.engine").warning("shown on rank 1")
    out, err = capsys.readouterr()
    assert "not shown" not in out + err and "[rank 1]" in err and "shown on rank 1" in err
    assert isinstance(build_tb_writer(other, rank=1), NullWriter)
    assert not other.exists()


# ----------------------------------------------------------------------------- DDP (2 processes, gloo)
def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        s = Setup(make_cfg(*SGD, "TRAIN.ACCUM_STEPS", "2"), batch_size=4, n=48, rank=rank, world_size=world_size,
                  shuffle=False)
        ddp = DistributedDataParallel(s.model)
        s.sampler.set_epoch(0)
        result = s.trainer(ddp_model=ddp, world_size=world_size).train_epoch(s.progress)
        val = DataLoader(s.dataset, batch_size=5, sampler=ShardedEvalSampler(len(s.dataset), world_size, rank))
        metrics = evaluate(s.model, val, TASK_KEYS, torch.device("cpu"))
        torch.save({"model": s.model.state_dict(), "progress": s.progress.to_dict(), "result": result,
                    "metrics": metrics}, os.path.join(out_dir, f"rank{rank}.pth"))
    finally:
        dist.destroy_process_group()


def test_ddp_accumulation_matches_one_process_and_evaluation_is_exact(tmp_path):
    import torch.multiprocessing as mp

    port = free_port()
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pth", weights_only=True) for r in range(2))
    # Both ranks hold the same weights, equal to one process taking the same global batches:
    # 2 ranks x 2 micro-batches x 4 = 16 samples per step, in the sampler's global order.
    assert_same_weights_dict(r0["model"], r1["model"])
    single = Setup(make_cfg(*SGD, "TRAIN.ACCUM_STEPS", "1"), batch_size=16, n=48, shuffle=False)
    train_epochs(single, single.trainer(), 1)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, rtol=1e-5, atol=1e-6)
    assert r0["progress"] == single.progress.to_dict() == {"epoch": 1, "step": 3, "epoch_step": 0, "samples": 48}
    assert r0["result"]["train/loss"] == r1["result"]["train/loss"]  # all-reduced
    one = evaluate(single.model, DataLoader(single.dataset, batch_size=5), TASK_KEYS, torch.device("cpu"))
    assert r0["metrics"] == r1["metrics"]
    assert r0["metrics"]["val/samples"] == one["val/samples"] == 48
    for k, v in one.items():
        assert r0["metrics"][k] == pytest.approx(v, rel=1e-5), k


def assert_same_weights_dict(a: dict, b: dict) -> None:
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
