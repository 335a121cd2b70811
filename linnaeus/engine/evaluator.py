"""Validation: per-level loss and top-1/top-5 accuracy, exact across ranks.

Each rank evaluates its own shard (the validation sampler does not pad, so ranks may run
different numbers of batches); correct counts and sample totals are summed with one
all-reduce after the loop. Pass the bare model, not the DDP wrapper: DDP's forward may issue
collectives, which would hang when ranks have different batch counts.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from linnaeus.engine.amp import autocast_factory
from linnaeus.engine.metrics import RunningSums, topk_correct


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    task_keys: Sequence[str],
    device: torch.device,
    amp: bool = False,
    *,
    autocast: Callable[[], ContextManager] | None = None,
    weights: Sequence[float] | None = None,
    prefix: str = "val",
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` (``(images, labels[B, num_levels])`` batches).

    Returns ``<prefix>/loss`` (weighted sum over levels of the mean cross-entropy, weights as in
    training, no label smoothing), ``<prefix>/loss/<level>``, ``<prefix>/acc1/<level>`` and
    ``<prefix>/acc5/<level>`` (fractions in [0, 1]; top-5 is top-min(5, classes)), and
    ``<prefix>/samples``. Use ``prefix="val_ema"`` for the EMA model. The model's train/eval
    mode is restored afterwards, and no global RNG is consumed (the loader's iterator is
    created under ``fork_rng``), so evaluating never changes the training RNG stream.
    """
    task_keys = list(task_keys)
    weights = list(weights) if weights else [1.0] * len(task_keys)
    if len(weights) != len(task_keys):
        raise ValueError(f"evaluate: {len(weights)} weights for {len(task_keys)} levels {task_keys}.")
    autocast = autocast if autocast is not None else autocast_factory(torch.device(device), amp)
    # Per level: summed loss, top-1 correct, top-5 correct.
    names = [f"{stat}/{k}" for k in task_keys for stat in ("loss", "acc1", "acc5")]
    sums = RunningSums(names, device)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            batches = iter(loader)
        for images, labels in batches:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                outputs = model(images)
            stats = []
            for i, k in enumerate(task_keys):
                logits, target = outputs[k].float(), labels[:, i]
                loss_sum = F.cross_entropy(logits, target, reduction="sum")
                stats.append(torch.cat([loss_sum.reshape(1).double(), topk_correct(logits, target, (1, 5))]))
            sums.update(torch.cat(stats), labels.shape[0])
    finally:
        model.train(was_training)
    sums.all_reduce()
    if sums.count == 0:
        raise ValueError("evaluate: the validation loader yielded no samples on any rank; "
                         "check the validation split (DATA.VAL_FRACTION) and EVAL.BATCH_SIZE.")
    avg = sums.averages()
    out = {f"{prefix}/loss": sum(w * avg[f"loss/{k}"] for k, w in zip(task_keys, weights))}
    for k in task_keys:
        out[f"{prefix}/loss/{k}"] = avg[f"loss/{k}"]
        out[f"{prefix}/acc1/{k}"] = avg[f"acc1/{k}"]
        out[f"{prefix}/acc5/{k}"] = avg[f"acc5/{k}"]
    out[f"{prefix}/samples"] = float(sums.count)
    return out
