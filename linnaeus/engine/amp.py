"""Mixed precision: which autocast dtype a device gets, and whether a GradScaler is needed.

bf16 on CPU (the only reduced precision CPU autocast supports well; same exponent range as
fp32, so no loss scaling), fp16 + ``torch.amp.GradScaler`` on CUDA.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
from yacs.config import CfgNode

AutocastFactory = Callable[[], ContextManager]


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast dtype used on ``device``: bf16 on CPU, fp16 on CUDA."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def autocast_factory(device: torch.device, enabled: bool) -> AutocastFactory:
    """A zero-argument callable returning a fresh autocast context (a no-op context when disabled).

    A factory rather than one context object because ``torch.autocast`` instances are not
    re-entrant across loop iterations in every torch version.
    """
    if not enabled:
        return contextlib.nullcontext
    device_type, dtype = device.type, amp_dtype(device)
    return lambda: torch.autocast(device_type=device_type, dtype=dtype)


def build_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler | None:
    """A GradScaler only where fp16 autocast needs one (CUDA); None otherwise."""
    if enabled and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def build_amp(cfg: CfgNode, device: torch.device) -> tuple[AutocastFactory, torch.amp.GradScaler | None]:
    """(autocast factory, scaler or None) from ``TRAIN.AMP`` for ``device``."""
    enabled = bool(cfg.TRAIN.AMP)
    return autocast_factory(device, enabled), build_grad_scaler(device, enabled)
