"""What a file that is not a linnaeus training checkpoint is, in words a user recognises.

Resuming needs the full training state; a bare ``model.state_dict()``, another framework's
training checkpoint (timm, torchvision references, Lightning) or a linnaeus weights-only file
holds weights at most. Such files are intact, so the errors built here say what the file is and
never call it corrupt (Mammoth's ``--loadcheck`` habit hands any of them to a resume).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .anatomy import KIND_WEIGHTS

# Entries of other frameworks' training checkpoints that name them (timm train.py, torchvision
# references, Lightning, DeiT-style scripts).
_TRAINING_ENTRIES = ("optimizer", "lr_scheduler", "scheduler", "epoch", "global_step", "arch", "args",
                     "optimizer_states", "pytorch-lightning_version", "amp", "scaler")
_WEIGHT_CONTAINERS = ("state_dict", "model", "module", "state_dict_ema", "model_ema")


def describe_foreign(obj: Any) -> str:
    """One phrase saying what a loaded object that is not a linnaeus training checkpoint is."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}, not a dict of checkpoint entries"
    meta = obj.get("meta")
    if isinstance(meta, Mapping) and meta.get("kind") == KIND_WEIGHTS:
        return (f"a linnaeus weights-only checkpoint (saver {meta.get('saver', '?')!r}, epoch {meta.get('epoch', '?')}, "
                f"step {meta.get('step', '?')}; it holds {', '.join(sorted(obj))})")
    tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if tensors and len(tensors) >= len(obj) - 1:
        return (f"a bare state dict such as torch.save(model.state_dict(), ...) writes ({len(tensors)} tensors, e.g. "
                f"{', '.join(repr(k) for k in tensors[:3])})")
    containers = [k for k in _WEIGHT_CONTAINERS if isinstance(obj.get(k), Mapping)]
    training = [k for k in _TRAINING_ENTRIES if k in obj]
    entries = ", ".join(sorted(map(str, obj))[:10]) + (" ..." if len(obj) > 10 else "")
    if containers and training:
        return f"another framework's training checkpoint (e.g. timm's train.py; entries: {entries})"
    if containers:
        return f"a weights file with its state dict under {containers[0]!r} (entries: {entries})"
    return f"a dict without linnaeus' 'meta' entry (entries: {entries})"


_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


# What to do with such a file: linnaeus never builds pickled classes, for a resume or a pretrained load.
REFUSED_PICKLE_ADVICE = (
    "linnaeus loads no file that needs pickled classes built, for a resume or as pretrained weights. If you trust "
    "the file, keep only its weights, e.g. torch.save(torch.load(f, weights_only=False)['state_dict'], "
    "'weights.pth'), and use that file.")


def refused_pickle(error: BaseException) -> str | None:
    """The phrase for a file ``torch.load(weights_only=True)`` refused for its pickled Python
    objects (an intact file: the unpickler read a valid class reference), or None for any other
    load error (truncation, damage). :data:`REFUSED_PICKLE_ADVICE` says what to do."""
    text = str(error)
    if "Weights only load failed" not in text and "WeightsUnpickler error" not in text:
        return None
    found = _REFUSED_GLOBAL.search(text)
    what = found.group(1) if found else "Python objects"
    hint = " (timm's train.py stores its argparse arguments so)" if what == "argparse.Namespace" else ""
    return (f"a pickle holding {what} besides tensors{hint}, which torch.load(weights_only=True) refuses to build "
            "because unpickling classes can run code")


__all__ = ["REFUSED_PICKLE_ADVICE", "describe_foreign", "refused_pickle"]
