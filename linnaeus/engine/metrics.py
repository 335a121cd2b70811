"""Running sums kept on the device (no host sync per update) and top-k correct counts.

Counts rather than percentages so that results combine exactly across batches and ranks
(``timm.utils.accuracy`` returns per-batch percentages, which lose that).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k (float tensor [len(ks)]).

    A k larger than the number of classes is clamped to it (top-5 of 3 classes = top-3).
    """
    num_classes = logits.shape[-1]
    ks = [min(k, num_classes) for k in ks]
    top = logits.topk(max(ks), dim=-1).indices  # [B, maxk], best first
    hit = top.eq(target.unsqueeze(-1))
    # A target appears at most once per row, so hit[:, :k].sum() counts samples.
    return torch.stack([hit[:, :k].sum() for k in ks]).to(torch.float64)


class RunningSums:
    """Named sums and a sample count, updated with device tensors, reduced across ranks on demand.

    ``update(values, n)`` adds ``values`` (a tensor with one entry per name, already summed over
    the ``n`` samples it covers). Nothing leaves the device until :meth:`averages`.
    float64 so that long epochs of small per-batch values add up without drift.
    """

    def __init__(self, names: Sequence[str], device: torch.device | str = "cpu") -> None:
        self.names = list(names)
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        self.count = 0

    def update(self, values: torch.Tensor, n: int) -> None:
        """Add per-name sums ``values`` covering ``n`` samples."""
        self.sums += values.detach().to(torch.float64)
        self.count += int(n)

    def add_means(self, means: torch.Tensor, n: int) -> None:
        """Add per-name batch means ``means`` of ``n`` samples (one fused op: sums += n * means)."""
        self.sums.add_(means.detach(), alpha=n)
        self.count += int(n)

    def all_reduce(self) -> None:
        """Sum over all ranks in place (a collective: every rank must call it). No-op without a process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        packed = torch.cat([self.sums, torch.tensor([float(self.count)], dtype=torch.float64,
                                                    device=self.device)])
        if dist.get_backend() == "nccl" and packed.device.type != "cuda":
            packed = packed.cuda()
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
        packed = packed.to(self.device)
        self.sums, self.count = packed[:-1], int(packed[-1].item())

    def totals(self) -> dict[str, float]:
        return dict(zip(self.names, self.sums.tolist()))

    def averages(self) -> dict[str, float]:
        """Sum / count per name (NaN when nothing was counted); one host sync."""
        if self.count == 0:
            return {k: float("nan") for k in self.names}
        return {k: v / self.count for k, v in zip(self.names, self.sums.tolist())}
