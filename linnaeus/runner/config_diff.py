"""What a resume does with each config key that changed since the checkpoint was written.

The checkpoint stores the config it was trained with (``state["config"]``, YAML text with
credentials redacted). On every resume the runner diffs it against the current config and says,
per changed key, what happens:

- **refused**: the model architecture or the taxonomy (``MODEL.*`` except the keys below,
  ``DATA.TASK_KEYS``, ``DATA.TAXONOMY_FILE``) and the optimizer type: the saved state does not
  mean the same thing under the new value, so the resume stops with
  :class:`CheckpointIncompatibleError` before anything is loaded;
- **re-applied**: optimizer hyperparameters (``TRAIN.OPTIMIZER.LR``/``WEIGHT_DECAY``/
  ``MOMENTUM``) are written into the param groups after ``optimizer.load_state_dict`` restored
  the saved ones; the LR schedule (``TRAIN.SCHEDULER.*``, ``TRAIN.EPOCHS``) is rebuilt from the
  current config by ``engine.optim.StepwiseScheduler``;
- **data order**: batch size, accumulation, steps per epoch, the dataset, the seed and the
  world size are honoured, with what they do to the order of samples;
- **honoured**: everything else takes its current value. Components turned on by the new config
  (``TRAIN.AMP``: a GradScaler where the device needs one; ``TRAIN.EMA.ENABLED``: the EMA) are not in
  the checkpoint: they start fresh (:func:`fresh_components`), the EMA from the resumed weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import yaml

from linnaeus.checkpoint.errors import CheckpointIncompatibleError

logger = logging.getLogger("linnaeus")

REFUSED, REAPPLIED, DATA_ORDER, HONOURED = "refused", "re-applied", "data order", "honoured"

# Model keys that no saved tensor or state depends on.
_MODEL_HARMLESS = {
    "MODEL.PRETRAINED": "ignored on resume: the checkpoint's weights are loaded",
    "MODEL.PRETRAINED_CONVNEXT": "ignored on resume: the checkpoint's weights are loaded",
    "MODEL.PRETRAINED_ROPEVIT": "ignored on resume: the checkpoint's weights are loaded",
    "MODEL.PRETRAINED_ROPEVIT_BLOCKS": "ignored on resume: the checkpoint's weights are loaded",
    "MODEL.PRETRAINED_STRATEGY": "ignored on resume: the checkpoint's weights are loaded",
    "MODEL.CHANNELS_LAST": "memory layout only",
    "MODEL.DROP_RATE": "regularisation from now on; no saved state depends on it",
    "MODEL.DROP_PATH_RATE": "regularisation from now on; no saved state depends on it",
}
# Config key -> the optimizer param-group fields it sets (timm's create_optimizer_v2).
OPTIMIZER_FIELDS = {
    "TRAIN.OPTIMIZER.LR": ("lr", "initial_lr"),
    "TRAIN.OPTIMIZER.WEIGHT_DECAY": ("weight_decay",),
    "TRAIN.OPTIMIZER.MOMENTUM": ("momentum",),
}
_SCHEDULE = "the LR schedule is rebuilt from the current config; the next step's LR follows it"
_ORDER = {
    "DATA.BATCH_SIZE": "the sample order is unchanged and training continues at the same global sample position, "
                       "but batches group samples differently and steps per epoch change (the LR schedule is "
                       "sized by the new count): results differ from an uninterrupted run",
    "TRAIN.ACCUM_STEPS": "samples per optimizer step and steps per epoch change (the LR schedule is sized by the "
                         "new count); the sample order is unchanged",
    "TRAIN.MAX_STEPS_PER_EPOCH": "epochs end at a different step; the sample order within an epoch is unchanged",
    "EXPERIMENT.SEED": "no effect on the resumed run's order: the sampler keeps the checkpoint's seed and the "
                       "RNG states are restored from it",
    "DATA.ROOT": "a different dataset reorders every epoch (one permutation of its samples per epoch); the "
                 "sampler refuses a training set of a different size",
    "DATA.DATASET": "a different dataset reorders every epoch; the sampler refuses a training set of a different size",
    "DATA.TOY_NUM_SAMPLES": "a different dataset size: the sampler refuses to continue a position in another size",
    "DATA.TRAIN_ANN": "a different training manifest reorders every epoch; the sampler refuses a training set of "
                      "a different size",
    "DATA.VAL_FRACTION": "changes which samples are in the training set and so its order; the sampler refuses a "
                         "training set of a different size",
}


# Config key -> the training component it creates when turned on, and what that component starts from.
_COMPONENTS = {
    "TRAIN.AMP": ("scaler", "mixed precision from now on; a GradScaler (where the device needs one) starts at its "
                            "default scale when it was off, and the saved one is dropped when it is turned off"),
    "TRAIN.EMA.ENABLED": ("ema", "the EMA starts from the resumed weights when it was off; the saved EMA is dropped "
                                 "when it is turned off"),
}


@dataclass(frozen=True)
class ConfigChange:
    key: str
    old: Any
    new: Any
    action: str
    reason: str

    def line(self) -> str:
        return f"{self.key}: {self.old!r} (checkpoint) -> {self.new!r}: {self.action}: {self.reason}"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _classify(key: str) -> tuple[str, str]:
    if key in _COMPONENTS:
        return HONOURED, _COMPONENTS[key][1]
    if key in _MODEL_HARMLESS:
        return HONOURED, _MODEL_HARMLESS[key]
    if key.startswith("MODEL.") or key in ("DATA.TASK_KEYS", "DATA.TAXONOMY_FILE"):
        return REFUSED, "the model architecture or taxonomy differs from the one the checkpoint's weights belong to"
    if key == "TRAIN.OPTIMIZER.NAME":
        return REFUSED, "the saved optimizer state belongs to another optimizer type"
    if key in OPTIMIZER_FIELDS:
        return REAPPLIED, "set in the optimizer's param groups after its saved state was loaded"
    if key.startswith("TRAIN.SCHEDULER.") or key == "TRAIN.EPOCHS":
        return REAPPLIED, _SCHEDULE
    if key in _ORDER:
        return DATA_ORDER, _ORDER[key]
    return HONOURED, "the current value applies"


def config_changes(stored: str, current: str, *, saved_world_size: int | None = None,
                   world_size: int = 1) -> list[ConfigChange]:
    """Every key whose value differs between the ``stored`` and ``current`` config YAML texts,
    classified (module docstring); plus the world size when it changed."""
    old, new = _flatten(yaml.safe_load(stored) or {}), _flatten(yaml.safe_load(current) or {})
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            changes.append(ConfigChange(key, old.get(key), new.get(key), *_classify(key)))
    if saved_world_size is not None and saved_world_size != world_size:
        changes.append(ConfigChange(
            "world size", saved_world_size, world_size, DATA_ORDER,
            "the sampler continues from the same global sample position and order, but each rank takes a "
            "different share of it, and RNG streams continue only for ranks present in both"))
    return changes


def fresh_components(changes: Iterable[ConfigChange]) -> set[str]:
    """Components the checkpoint cannot hold because the current config turned them on (the keys of
    ``RunCheckpoints.attach``): they start fresh instead of being restored."""
    return {_COMPONENTS[c.key][0] for c in changes if c.key in _COMPONENTS and not c.old and c.new}


def refuse(changes: Iterable[ConfigChange], source: Any) -> None:
    """Raise for the refused changes, naming each key, both values and the way on."""
    refused = [c for c in changes if c.action == REFUSED]
    if refused:
        lines = "\n".join(f"  - {c.line()}" for c in refused)
        raise CheckpointIncompatibleError(
            f"cannot resume from {source}: the config changed in ways the checkpoint cannot follow:\n{lines}\n"
            "Restore these keys to the checkpoint's values to continue the run; to train the changed model from "
            "its weights, start a new EXPERIMENT.NAME with MODEL.PRETRAINED set to the checkpoint.",
            path=source)


def optimizer_hyperparameters(optimizer: torch.optim.Optimizer | None) -> list[dict[str, Any]]:
    """The param groups' values as built from the current config (call before loading a checkpoint)."""
    if optimizer is None:
        return []
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def reapply(changes: Iterable[ConfigChange], optimizer: torch.optim.Optimizer | None,
            fresh: list[dict[str, Any]]) -> None:
    """Write the current config's optimizer hyperparameters over the loaded ones."""
    for change in changes:
        fields = OPTIMIZER_FIELDS.get(change.key)
        if not fields or optimizer is None:
            continue
        set_any = False
        for group, built in zip(optimizer.param_groups, fresh):
            for field in fields:
                if field in built:
                    group[field] = built[field]
                    set_any = True
        if not set_any:
            logger.info("Config change %s: not used by this optimizer (%s)", change.key,
                        type(optimizer).__name__)


def log_changes(changes: Iterable[ConfigChange], source: Any) -> None:
    changes = list(changes)
    if not changes:
        logger.info("Config unchanged since %s", source)
        return
    logger.info("Config changed since %s (%d key(s)):", source, len(changes))
    for c in changes:
        (logger.warning if c.action == DATA_ORDER else logger.info)("  %s", c.line())


__all__ = ["ConfigChange", "config_changes", "log_changes", "optimizer_hyperparameters", "reapply", "refuse"]
