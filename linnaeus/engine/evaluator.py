"""Validation: per-level loss, top-1/top-5 and balanced accuracy, and the hierarchy-aware metrics,
exact across ranks.

Each rank evaluates its own shard (the validation sampler does not pad, so ranks may run
different numbers of batches); counts and sums are added up with one all-reduce after the loop.
Pass the bare model, not the DDP wrapper: DDP's forward may issue collectives, which would hang
when ranks have different batch counts.

A label of ``IGNORE_INDEX`` (a rank unknown for that image) is left out of that level's loss and
accuracies: each level is averaged over its own known labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ContextManager, Iterable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from linnaeus.engine.amp import autocast_factory
from linnaeus.engine.loss import IGNORE_INDEX
from linnaeus.engine.metrics import topk_correct

if TYPE_CHECKING:  # the data side builds it from the taxonomy; the engine only calls its methods
    from linnaeus.data.hierarchy import Hierarchy


class _Sums:
    """Named float64 device tensors added to per batch and all-reduced once, packed together."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.num_classes: dict[str, int] = {}

    def add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().to(torch.float64).reshape(-1)
        if name in self.sums:
            self.sums[name] += value
        else:
            self.sums[name] = value.clone()

    def all_reduce(self, task_keys: Sequence[str], with_tree: bool) -> None:
        """Sum over ranks (a collective). A rank that saw no batch has no sums and does not know
        the class counts: those are agreed first (MAX), so every rank packs the same layout."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        backend_device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
        counts = torch.tensor([self.num_classes.get(k, 0) for k in task_keys], dtype=torch.int64,
                              device=backend_device)
        dist.all_reduce(counts, op=dist.ReduceOp.MAX)
        layout = _layout(task_keys, dict(zip(task_keys, counts.tolist())), with_tree)
        packed = torch.cat([self.sums[n].to(backend_device) if n in self.sums
                            else torch.zeros(size, dtype=torch.float64, device=backend_device)
                            for n, size in layout])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        self.sums = dict(zip([n for n, _ in layout], packed.to(self.device).split([size for _, size in layout])))


def _layout(task_keys: Sequence[str], num_classes: dict[str, int], with_tree: bool) -> list[tuple[str, int]]:
    layout = [("samples", 1)]
    for k in task_keys:
        layout += [(f"{stat}/{k}", 1) for stat in ("loss", "known", "acc1", "acc5")]
        layout += [(f"class_total/{k}", num_classes[k]), (f"class_hit/{k}", num_classes[k])]
        layout += [(f"calib_{stat}/{k}", CALIBRATION_BINS) for stat in ("n", "conf", "hit")]
    tree = [("consistent", 1), ("mistakes", 1), ("severity", 1), ("hdist_n", 1)] + \
        [(f"hdist@{k}", 1) for k in HDIST_K]
    return layout + (tree if with_tree else [])


# Equal-width confidence bins of the expected calibration error (Guo et al. 2017 use 15).
CALIBRATION_BINS = 15
HDIST_K = (1, 5)  # hierarchical distance@k (Bertinetto et al. 2020, "Making Better Mistakes")


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
    hierarchy: Hierarchy | None = None,
    consistent_decoding: bool = False,
    on_batch: Callable[[dict[str, torch.Tensor], torch.Tensor, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` (``(images, labels[B, num_levels])`` batches).

    Returns, per level ``<k>``: ``<prefix>/loss/<k>`` (mean cross-entropy, no label smoothing),
    ``<prefix>/acc1/<k>``, ``<prefix>/acc5/<k>`` (top-min(5, classes)) and ``<prefix>/bacc/<k>``
    (balanced accuracy: the mean over classes present in the data of each class's top-1 recall) and
    ``<prefix>/ece/<k>`` (expected calibration error of the prediction's probability, 15 equal-width
    bins: the gap between confidence and accuracy, weighted by the share of images in each bin),
    all over that level's known labels; ``<prefix>/loss`` (weighted sum of the level losses,
    weights as in training) and ``<prefix>/samples``. With a ``hierarchy`` (and two levels or
    more) also ``<prefix>/consistency`` (fraction of images whose predictions form a path of the
    tree), ``<prefix>/mistake_severity`` (mean LCA height over leaf errors; absent without
    errors, as a level's metrics are without known labels) and ``<prefix>/hdist@1``, ``@5`` (the mean
    LCA height between the true leaf and each of the leaf head's top-k classes, 0 for the right one:
    how far off the k best guesses are); see :mod:`linnaeus.data.hierarchy`.
    ``consistent_decoding`` makes the top-1 predictions the most probable consistent path (needs
    ``hierarchy``); top-5 stays per level. ``on_batch(logits, preds, labels)`` sees every batch's
    float logits per level, top-1 predictions ``[B, levels]`` and labels, in the loader's order (what
    ``linnaeus-eval`` writes per image).

    Use ``prefix="val_ema"`` for the EMA model. The model's train/eval mode is restored
    afterwards, and no global RNG is consumed (the loader's iterator is created under
    ``fork_rng``), so evaluating never changes the training RNG stream.
    """
    task_keys = list(task_keys)
    weights = list(weights) if weights else [1.0] * len(task_keys)
    if len(weights) != len(task_keys):
        raise ValueError(f"evaluate: {len(weights)} weights for {len(task_keys)} levels {task_keys}.")
    if consistent_decoding and hierarchy is None:
        raise ValueError("evaluate: consistent_decoding needs the taxonomy's tree (hierarchy=...); it is "
                         "unavailable with one level or classes whose parent is unknown.")
    if hierarchy is not None and list(hierarchy.task_keys) != task_keys:
        raise ValueError(f"evaluate: hierarchy levels {list(hierarchy.task_keys)} differ from {task_keys}.")
    device = torch.device(device)
    autocast = autocast if autocast is not None else autocast_factory(device, amp)
    tree = hierarchy.to(device) if hierarchy is not None else None
    sums = _Sums(device)
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
            logits = {k: outputs[k].float() for k in task_keys}
            if consistent_decoding:
                preds = tree.decode(logits)
            else:
                preds = torch.stack([logits[k].topk(1, dim=-1).indices[:, 0] for k in task_keys], dim=1)
            if on_batch is not None:
                on_batch(logits, preds, labels)
            sums.add("samples", torch.tensor(labels.shape[0], device=device))
            for i, k in enumerate(task_keys):
                target, known = labels[:, i], labels[:, i] != IGNORE_INDEX
                hit = (preds[:, i] == target) & known
                sums.add(f"loss/{k}", F.cross_entropy(logits[k], target, reduction="sum", ignore_index=IGNORE_INDEX))
                sums.add(f"known/{k}", known.sum())
                sums.add(f"acc1/{k}", hit.sum())
                sums.add(f"acc5/{k}", topk_correct(logits[k], target, (5,)))
                num_classes = sums.num_classes[k] = logits[k].shape[-1]
                sums.add(f"class_total/{k}", torch.bincount(target[known], minlength=num_classes))
                sums.add(f"class_hit/{k}", torch.bincount(target[hit], minlength=num_classes))
                _add_calibration(sums, k, logits[k], preds[:, i], known, hit)
            if tree is not None:
                sums.add("consistent", tree.consistent(preds).sum())
                leaf, known_leaf = labels[:, 0], labels[:, 0] != IGNORE_INDEX
                wrong = known_leaf & (preds[:, 0] != leaf)
                sums.add("mistakes", wrong.sum())
                sums.add("severity", tree.lca_height(preds[wrong, 0], leaf[wrong]).sum())
                _add_hdist(sums, tree, logits[task_keys[0]][known_leaf], leaf[known_leaf])
    finally:
        model.train(was_training)
    sums.all_reduce(task_keys, tree is not None)
    if not sums.sums or sums.sums["samples"].item() == 0:
        raise ValueError("evaluate: the validation loader yielded no samples on any rank; "
                         "check the validation split (DATA.VAL_FRACTION) and EVAL.BATCH_SIZE.")
    s = {name: t.tolist() for name, t in sums.sums.items()}  # one host sync
    # A metric with nothing to average (a level without known labels, no leaf errors) is left
    # out rather than NaN: NaN != NaN would break comparisons of saved metric histories.
    out: dict[str, float] = {}
    for k in task_keys:
        known = s[f"known/{k}"][0]
        if known == 0:
            continue
        out[f"{prefix}/loss/{k}"] = s[f"loss/{k}"][0] / known
        out[f"{prefix}/acc1/{k}"] = s[f"acc1/{k}"][0] / known
        out[f"{prefix}/acc5/{k}"] = s[f"acc5/{k}"][0] / known
        recalls = [h / t for h, t in zip(s[f"class_hit/{k}"], s[f"class_total/{k}"]) if t > 0]
        out[f"{prefix}/bacc/{k}"] = sum(recalls) / len(recalls)
        out[f"{prefix}/ece/{k}"] = sum(abs(c - h) for c, h in zip(s[f"calib_conf/{k}"], s[f"calib_hit/{k}"])) / known
    out[f"{prefix}/loss"] = sum(w * out[f"{prefix}/loss/{k}"] for k, w in zip(task_keys, weights)
                                if f"{prefix}/loss/{k}" in out)
    if tree is not None:
        out[f"{prefix}/consistency"] = s["consistent"][0] / s["samples"][0]
        if s["mistakes"][0] > 0:
            out[f"{prefix}/mistake_severity"] = s["severity"][0] / s["mistakes"][0]
        if s["hdist_n"][0] > 0:
            out.update({f"{prefix}/hdist@{k}": s[f"hdist@{k}"][0] / s["hdist_n"][0] for k in HDIST_K})
    out[f"{prefix}/samples"] = float(s["samples"][0])
    return out


def _add_calibration(sums: _Sums, key: str, logits: torch.Tensor, pred: torch.Tensor, known: torch.Tensor,
                     hit: torch.Tensor) -> None:
    """Per confidence bin: images, summed confidence, hits (over known labels) of one level."""
    conf = logits.softmax(dim=-1).gather(1, pred.unsqueeze(1))[:, 0][known]
    bins = (conf * CALIBRATION_BINS).long().clamp_(max=CALIBRATION_BINS - 1)
    sums.add(f"calib_n/{key}", torch.bincount(bins, minlength=CALIBRATION_BINS))
    sums.add(f"calib_conf/{key}", torch.zeros(CALIBRATION_BINS, device=conf.device, dtype=torch.float64)
             .index_add_(0, bins, conf.double()))
    sums.add(f"calib_hit/{key}", torch.bincount(bins[hit[known]], minlength=CALIBRATION_BINS))


def _add_hdist(sums: _Sums, tree: Hierarchy, leaf_logits: torch.Tensor, leaf: torch.Tensor) -> None:
    """Summed mean LCA height of the leaf head's top-k classes to the true leaf, per k."""
    top = leaf_logits.topk(min(max(HDIST_K), leaf_logits.shape[-1]), dim=-1).indices  # [B, K]
    heights = tree.lca_height(top.reshape(-1), leaf.repeat_interleave(top.shape[1])).reshape(top.shape).double()
    sums.add("hdist_n", torch.tensor(leaf.shape[0], device=leaf.device))
    for k in HDIST_K:
        sums.add(f"hdist@{k}", heights[:, :k].mean(dim=1).sum())


def summary_lines(metrics: dict[str, float], task_keys: Sequence[str], num_classes: dict[str, int],
                  prefix: str = "val") -> list[str]:
    """Human-readable lines of :func:`evaluate`'s metrics for the end-of-run report (levels the
    metrics lack, e.g. from an older checkpoint's history, are left out)."""
    lines = []
    for k in task_keys:
        if f"{prefix}/acc1/{k}" not in metrics:
            continue
        bacc, ece = metrics.get(f"{prefix}/bacc/{k}"), metrics.get(f"{prefix}/ece/{k}")
        lines.append(f"{prefix} top-1 {k:>10}: {100 * metrics[f'{prefix}/acc1/{k}']:.1f}%   "
                     f"top-5: {100 * metrics[f'{prefix}/acc5/{k}']:.1f}%   "
                     + (f"balanced: {100 * bacc:.1f}%   " if bacc is not None else "")
                     + (f"calibration error: {100 * ece:.1f}%   " if ece is not None else "")
                     + f"(chance {100 / num_classes[k]:.1f}%)")
    if f"{prefix}/consistency" in metrics:
        lines.append(f"{prefix} consistency:      {100 * metrics[f'{prefix}/consistency']:.1f}% of images predicted "
                     "on one path of the tree")
        severity = metrics.get(f"{prefix}/mistake_severity")
        lines.append(f"{prefix} mistake severity: {severity:.2f} levels to the common ancestor, mean over "
                     f"{task_keys[0]} errors" if severity is not None else
                     f"{prefix} mistake severity: no {task_keys[0]} errors")
    if f"{prefix}/hdist@1" in metrics:
        lines.append(f"{prefix} hierarchical distance of the top-1 / top-5 {task_keys[0]}: "
                     f"{metrics[f'{prefix}/hdist@1']:.2f} / {metrics[f'{prefix}/hdist@5']:.2f} levels")
    return lines
