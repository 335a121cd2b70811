"""Config tree (yacs): every default lives here, every key has a one-line comment.

Loading order: defaults → ``--cfg FILE`` (with ``_BASE_`` inheritance) → ``--opts KEY VALUE ...``.
Unknown keys and wrong types are errors that name the key (and, for unknown keys, the
closest valid ones). The resolved config is frozen before use.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN
from yacs.config import _check_and_coerce_cfg_value_type

_decode_cfg_value = CN._decode_cfg_value

BASE_KEY = "_BASE_"


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file/key and the fix."""


_C = CN()

# ----------------------------------------------------------------------------- ENV
_C.ENV = CN()
_C.ENV.INPUT = CN()
# Flat local cache where bare checkpoint file names are looked up (and downloads land).
_C.ENV.INPUT.CACHE_DIR = "~/.cache/linnaeus/checkpoints"
# Also search CACHE_DIR recursively (through an index file) when <CACHE_DIR>/<name> is absent.
_C.ENV.INPUT.RECURSIVE_LOOKUP = False
# Download attempts before giving up on a transient failure.
_C.ENV.INPUT.DOWNLOAD_RETRIES = 3
_C.ENV.INPUT.BUCKET = CN()
# Look up bare file names missing from the cache in this bucket.
_C.ENV.INPUT.BUCKET.ENABLED = False
# rclone remote name (configured in rclone.conf or RCLONE_CONFIG_<NAME>_* env vars).
_C.ENV.INPUT.BUCKET.REMOTE = ""
# Bucket (or top-level folder) on the remote.
_C.ENV.INPUT.BUCKET.NAME = ""
# Prefix inside the bucket; object = REMOTE:NAME/PATH_PREFIX<filename>.
_C.ENV.INPUT.BUCKET.PATH_PREFIX = ""

_C.ENV.OUTPUT = CN()
# Run dir = BASE_DIR/EXPERIMENT.NAME.
_C.ENV.OUTPUT.BASE_DIR = "output"
_C.ENV.OUTPUT.BUCKET = CN()
# Upload every committed checkpoint to REMOTE:NAME/PATH_PREFIX<experiment>/ in the background.
_C.ENV.OUTPUT.BUCKET.ENABLED = False
# rclone remote name for uploads.
_C.ENV.OUTPUT.BUCKET.REMOTE = ""
# Bucket (or top-level folder) for uploads.
_C.ENV.OUTPUT.BUCKET.NAME = ""
# Prefix inside the upload bucket.
_C.ENV.OUTPUT.BUCKET.PATH_PREFIX = ""

# ----------------------------------------------------------------------- EXPERIMENT
_C.EXPERIMENT = CN()
# Name of the run; also the run dir's name under ENV.OUTPUT.BASE_DIR.
_C.EXPERIMENT.NAME = "default"
# Global seed; each rank derives its own from it.
_C.EXPERIMENT.SEED = 42

# ---------------------------------------------------------------------------- MODEL
_C.MODEL = CN()
# "hybrid" (ConvNeXt front → RoPE-ViT stack) or "timm" (any timm model by name).
_C.MODEL.TYPE = "hybrid"
# timm model name when MODEL.TYPE is "timm".
_C.MODEL.TIMM_NAME = "resnet18"
# Dropout before each classification head.
_C.MODEL.DROP_RATE = 0.0
# Stochastic depth rate (linearly increasing over blocks).
_C.MODEL.DROP_PATH_RATE = 0.0
_C.MODEL.HYBRID = CN()
# timm ConvNeXt variant whose stem and stage widths/depths the conv front mirrors.
_C.MODEL.HYBRID.CONVNEXT_VARIANT = "convnext_atto"
# How many ConvNeXt stages (from the first) the conv front keeps.
_C.MODEL.HYBRID.CONV_STAGES = 2
# Number of RoPE-ViT blocks after the conv front.
_C.MODEL.HYBRID.VIT_DEPTH = 4
# Width of the RoPE-ViT blocks (conv features are projected to it).
_C.MODEL.HYBRID.VIT_DIM = 192
# Attention heads in each RoPE-ViT block.
_C.MODEL.HYBRID.VIT_HEADS = 3
# MLP hidden width = VIT_DIM * MLP_RATIO.
_C.MODEL.HYBRID.MLP_RATIO = 4.0
# Rotary embedding frequency base (theta).
_C.MODEL.HYBRID.ROPE_THETA = 100.0
# "axial" (fixed frequencies, as timm vit_*_rope_*) or "mixed" (learnable, as vit_*_rope_mixed_*).
_C.MODEL.HYBRID.ROPE_TYPE = "axial"
# Layer-scale init for the ViT blocks (0 disables layer scale).
_C.MODEL.HYBRID.LAYER_SCALE_INIT = 0.0
# Whole-model weights to start from (identifier: path, file name in the cache/bucket, or URI).
_C.MODEL.PRETRAINED = ""
# timm/facebookresearch ConvNeXt weights mapped into the hybrid's stem and conv stages.
_C.MODEL.PRETRAINED_CONVNEXT = ""
# timm vit_*_rope_* / EVA (or naver rope-vit) weights mapped into the hybrid's ViT blocks.
_C.MODEL.PRETRAINED_ROPEVIT = ""
# Source ViT block index for each target block; empty = first-to-first.
_C.MODEL.PRETRAINED_ROPEVIT_BLOCKS = []
# How pretrained weights load: "weights_only" (all must match), "transfer" (skip missing/mis-shaped), "strict".
_C.MODEL.PRETRAINED_STRATEGY = "transfer"
# Keep 4-D weights in channels_last memory format: ConvNeXt runs faster, and DDP's gradient buckets match the grads' layout.
_C.MODEL.CHANNELS_LAST = True

# ----------------------------------------------------------------------------- DATA
_C.DATA = CN()
# "toy" (generated once into DATA.ROOT) or "imagefolder" (class-per-folder tree + taxonomy).
_C.DATA.DATASET = "toy"
# Dataset root; for "toy" the generator writes here on first use.
_C.DATA.ROOT = "data/toy"
# Taxonomy file (JSON: leaf class → {level: name}); relative paths are under DATA.ROOT.
_C.DATA.TAXONOMY_FILE = "taxonomy.json"
# Taxonomic levels to predict, leaf first; one head per level.
_C.DATA.TASK_KEYS = ["species", "genus", "family"]
# Square input size in pixels.
_C.DATA.IMG_SIZE = 64
# Per-process batch size.
_C.DATA.BATCH_SIZE = 32
# DataLoader worker processes per rank.
_C.DATA.NUM_WORKERS = 2
# Fraction of each class held out for validation (when ROOT has no train/ and val/ folders).
_C.DATA.VAL_FRACTION = 0.2
# Number of images the toy generator writes.
_C.DATA.TOY_NUM_SAMPLES = 2400
# Random-resized-crop minimum scale for training augmentation.
_C.DATA.AUG_SCALE_MIN = 0.6
# Horizontal flip probability for training augmentation.
_C.DATA.AUG_HFLIP = 0.5

# ---------------------------------------------------------------------------- TRAIN
_C.TRAIN = CN()
# Total epochs; a resumed run may raise it to train longer.
_C.TRAIN.EPOCHS = 10
# Resume from this run's newest verified checkpoint when one exists.
_C.TRAIN.AUTO_RESUME = True
# Checkpoint identifier to resume full training state from (takes precedence over AUTO_RESUME).
_C.TRAIN.RESUME = ""
# Micro-batches per optimizer step (gradient accumulation, DDP sync only on the last).
_C.TRAIN.ACCUM_STEPS = 1
# Gradient-norm clipping threshold (0 disables).
_C.TRAIN.CLIP_GRAD = 0.0
# Mixed precision: bf16 autocast on CPU, fp16 autocast + GradScaler on CUDA.
_C.TRAIN.AMP = False
# Per-level loss weights in DATA.TASK_KEYS order; empty = all 1.0.
_C.TRAIN.LOSS_WEIGHTS = []
# Label smoothing for every level's cross-entropy.
_C.TRAIN.LABEL_SMOOTHING = 0.0
# Cap on optimizer steps per epoch (0 = whole epoch); for smoke tests.
_C.TRAIN.MAX_STEPS_PER_EPOCH = 0
# Log (and TensorBoard) every N optimizer steps.
_C.TRAIN.LOG_INTERVAL = 10
# Show a progress bar on rank 0.
_C.TRAIN.PROGRESS_BAR = True
_C.TRAIN.OPTIMIZER = CN()
# timm optimizer name (create_optimizer_v2), e.g. "adamw", "sgd", "lamb".
_C.TRAIN.OPTIMIZER.NAME = "adamw"
# Peak learning rate.
_C.TRAIN.OPTIMIZER.LR = 1e-3
# Weight decay (not applied to norms and biases).
_C.TRAIN.OPTIMIZER.WEIGHT_DECAY = 0.05
# Momentum for SGD-style optimizers.
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9
_C.TRAIN.SCHEDULER = CN()
# timm scheduler name (create_scheduler_v2), e.g. "cosine", "step", "none"; stepped per optimizer step.
_C.TRAIN.SCHEDULER.NAME = "cosine"
# Linear warmup length in epochs (converted to optimizer steps).
_C.TRAIN.SCHEDULER.WARMUP_EPOCHS = 1.0
# Learning rate at the start of warmup.
_C.TRAIN.SCHEDULER.WARMUP_LR = 1e-6
# Learning rate at the end of the cosine decay.
_C.TRAIN.SCHEDULER.MIN_LR = 1e-5
_C.TRAIN.EMA = CN()
# Keep an exponential moving average of the weights (timm ModelEmaV3); saved in checkpoints.
_C.TRAIN.EMA.ENABLED = False
# EMA decay per optimizer step.
_C.TRAIN.EMA.DECAY = 0.999

# ----------------------------------------------------------------------------- EVAL
_C.EVAL = CN()
# Validate every N epochs (and always after the last).
_C.EVAL.INTERVAL = 1
# Per-process validation batch size (0 = DATA.BATCH_SIZE).
_C.EVAL.BATCH_SIZE = 0

# ----------------------------------------------------------------------- CHECKPOINT
_C.CHECKPOINT = CN()
# When to save: "1ep", "2ep" (epochs), "500st" (optimizer steps), or an int (epochs).
_C.CHECKPOINT.INTERVAL = "1ep"
# File name template: {epoch} (epochs completed), {step}, {experiment}, {model}, {timestamp}, {rank}, metric fields.
_C.CHECKPOINT.FILENAME = "checkpoint_epoch_{epoch}.pth"
# Template for saves that land mid-epoch (preemption, step intervals); must contain {step}.
_C.CHECKPOINT.MID_EPOCH_FILENAME = "checkpoint_epoch_{epoch}_step_{step}.pth"
# Keep the N newest checkpoints (0 = keep all).
_C.CHECKPOINT.KEEP_LAST_N = 0
# Also keep the N best by MONITOR (0 = none).
_C.CHECKPOINT.KEEP_BEST_N = 0
# Metric that ranks checkpoints for KEEP_BEST_N, e.g. "val/acc1/species".
_C.CHECKPOINT.MONITOR = ""
# "max" if a larger MONITOR is better, "min" otherwise.
_C.CHECKPOINT.MODE = "max"
# Write, hash and commit in a background thread after snapshotting state to CPU memory.
_C.CHECKPOINT.ASYNC = False
# Save only model weights (+config, meta); such checkpoints cannot resume training exactly.
_C.CHECKPOINT.WEIGHTS_ONLY = False
# Save only once, when training ends (and on preemption).
_C.CHECKPOINT.SAVE_LAST_ONLY = False
# On SIGTERM/SIGINT: finish the current step, commit a checkpoint, exit 0.
_C.CHECKPOINT.SAVE_ON_PREEMPT = True
_C.CHECKPOINT.WEIGHTS_SAVER = CN()
# A second, independent weights-only saver (own interval, name and retention).
_C.CHECKPOINT.WEIGHTS_SAVER.ENABLED = False
# Interval of the weights-only saver ("1ep", "500st", or int epochs).
_C.CHECKPOINT.WEIGHTS_SAVER.INTERVAL = "1ep"
# File name template of the weights-only saver.
_C.CHECKPOINT.WEIGHTS_SAVER.FILENAME = "weights_epoch_{epoch}.pth"
# Keep the N newest weights-only files (0 = keep all).
_C.CHECKPOINT.WEIGHTS_SAVER.KEEP_LAST_N = 0
# Save the EMA weights (when TRAIN.EMA is enabled) instead of the raw model.
_C.CHECKPOINT.WEIGHTS_SAVER.USE_EMA = False


def get_default_config() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CN):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _merge_dict(dst: CN, src: dict, prefix: str, source: str) -> None:
    """Merge ``src`` into ``dst`` in place; unknown keys and type mismatches raise ConfigError."""
    for k, v in src.items():
        full = f"{prefix}{k}"
        if k not in dst:
            raise ConfigError(
                f"{source}: unknown config key '{full}'.{_suggest(full, _all_keys(_C))} "
                "Valid keys are the defaults in linnaeus/config.py."
            )
        if isinstance(dst[k], CN):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: '{full}' is a section; expected a mapping, got {v!r}.")
            _merge_dict(dst[k], v, full + ".", source)
            continue
        value = _decode_cfg_value(v) if not isinstance(v, dict) else v
        if isinstance(value, str) and isinstance(dst[k], (list, tuple)):
            # Accept YAML-style lists from the command line: DATA.TASK_KEYS "[species,genus]".
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass  # leave as str; the type check below reports it with the key name
        dst[k] = _coerce(value, dst[k], full, source)


def _coerce(value: Any, original: Any, full: str, source: str) -> Any:
    # CHECKPOINT intervals accept both "2ep" and a bare int.
    if full.endswith("INTERVAL") and isinstance(original, str) and isinstance(value, int):
        return str(value)
    if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        return _check_and_coerce_cfg_value_type(value, original, full.split(".")[-1], full)
    except ValueError:
        raise ConfigError(
            f"{source}: '{full}' expects {type(original).__name__} (default {original!r}), "
            f"got {type(value).__name__} {value!r}."
        ) from None


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    """Read one YAML file with its _BASE_ files merged under it (recursively, cycles rejected)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"_BASE_ cycle: {cycle}. Remove one of the _BASE_ references.")
    if not path.is_file():
        where = f" (referenced from {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}.")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    bases = data.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        _deep_update(merged, _read_yaml(base_path, chain + (path,)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def merge_file(cfg: CN, path: str | os.PathLike) -> None:
    """Merge a YAML file (and its _BASE_ chain) into ``cfg``."""
    _merge_dict(cfg, _read_yaml(Path(path), ()), "", str(path))


def merge_opts(cfg: CN, opts: Sequence[str]) -> None:
    """Merge ``KEY VALUE`` pairs from the command line, type-checked against the defaults."""
    if len(opts) % 2:
        raise ConfigError(f"--opts expects KEY VALUE pairs; got an odd number of items: {list(opts)}.")
    for key, raw in zip(opts[0::2], opts[1::2]):
        node: Any = {}
        tree = node
        parts = key.split(".")
        for p in parts[:-1]:
            tree[p] = {}
            tree = tree[p]
        tree[parts[-1]] = raw
        _merge_dict(cfg, node, "", "--opts")


def _validation_metric_fields(cfg: CN) -> set[str]:
    """Template fields of the metrics the runner's validation reports (engine.evaluator.evaluate):
    val/loss, val/samples and val/{loss,acc1,acc5}/<level>, with '/' turned into '_'."""
    fields = {"val_loss", "val_samples"}
    for level in cfg.DATA.TASK_KEYS:
        fields |= {f"val_{stat}_{level}" for stat in ("loss", "acc1", "acc5")}
    return fields


def _check_metric_fields(cfg: CN) -> None:
    """A name with metric fields ({val_acc1_species:.3f}) can only be rendered right after a validation.

    The runner validates after epoch e when e % EVAL.INTERVAL == 0 and after the last epoch.
    Every other save (step intervals, epochs without validation, preemption) has no metrics,
    so such a config would fail at its first such save, possibly hours into the run.
    """
    from linnaeus.checkpoint.policy import metric_fields, parse_interval

    every_eval = cfg.EVAL.INTERVAL
    mid = metric_fields(cfg.CHECKPOINT.MID_EPOCH_FILENAME)
    if mid:
        raise ConfigError(
            f"CHECKPOINT.MID_EPOCH_FILENAME {cfg.CHECKPOINT.MID_EPOCH_FILENAME!r} uses metric field(s) "
            f"{sorted(mid)}, but the saves it names (preemption saves in the middle of an epoch) never have "
            "validation metrics. Remove them, e.g. 'checkpoint_epoch_{epoch}_step_{step}.pth'."
        )
    savers = [("CHECKPOINT", cfg.CHECKPOINT)]
    if cfg.CHECKPOINT.WEIGHTS_SAVER.ENABLED:
        savers.append(("CHECKPOINT.WEIGHTS_SAVER", cfg.CHECKPOINT.WEIGHTS_SAVER))
    for key, node in savers:
        fields = metric_fields(node.FILENAME)
        if not fields:
            continue
        template = f"{key}.FILENAME {node.FILENAME!r}"
        known = _validation_metric_fields(cfg)
        if fields - known:
            raise ConfigError(
                f"{template} uses {sorted(fields - known)}, which no validation of this run reports. Metric "
                f"fields are validation metric names with '/' replaced by '_'; available: {sorted(known)}."
            )
        if cfg.DATA.DATASET == "toy" and cfg.DATA.VAL_FRACTION <= 0:
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but DATA.VAL_FRACTION 0 leaves the toy "
                "dataset without a validation split, so there are no metrics. Set DATA.VAL_FRACTION > 0 or "
                "remove the metric fields."
            )
        interval = parse_interval(node.INTERVAL)
        fix = (f"Set {key}.INTERVAL to an epoch interval that is a multiple of EVAL.INTERVAL ({every_eval}), "
               f"e.g. '{every_eval}ep', or remove the metric fields.")
        if interval.by_steps:
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but {key}.INTERVAL {node.INTERVAL!r} saves "
                f"every {interval.every} optimizer steps, in the middle of epochs, where there are no validation "
                f"metrics. {fix}"
            )
        # SAVE_LAST_ONLY: the main saver only saves after the last epoch, which is always validated.
        last_only = key == "CHECKPOINT" and cfg.CHECKPOINT.SAVE_LAST_ONLY
        if not last_only and interval.every % every_eval:
            raise ConfigError(
                f"{template} uses metric field(s) {sorted(fields)}, but {key}.INTERVAL {node.INTERVAL!r} saves "
                f"after epoch {interval.every}, which is not validated (EVAL.INTERVAL {every_eval} validates every "
                f"{every_eval} epoch(s)), so that save would have no metrics. {fix}"
            )


def validate(cfg: CN) -> None:
    """Cross-key checks that a single key's type cannot express."""
    from linnaeus.checkpoint.policy import parse_interval, validate_filename_template

    if cfg.MODEL.TYPE not in ("hybrid", "timm"):
        raise ConfigError(f"MODEL.TYPE must be 'hybrid' or 'timm', got {cfg.MODEL.TYPE!r}.")
    if cfg.MODEL.PRETRAINED_STRATEGY not in ("weights_only", "transfer", "strict"):
        raise ConfigError(
            "MODEL.PRETRAINED_STRATEGY must be 'weights_only', 'transfer' or 'strict', "
            f"got {cfg.MODEL.PRETRAINED_STRATEGY!r}."
        )
    if cfg.DATA.DATASET not in ("toy", "imagefolder"):
        raise ConfigError(f"DATA.DATASET must be 'toy' or 'imagefolder', got {cfg.DATA.DATASET!r}.")
    if not cfg.DATA.TASK_KEYS:
        raise ConfigError("DATA.TASK_KEYS must name at least one taxonomic level.")
    if cfg.TRAIN.LOSS_WEIGHTS and len(cfg.TRAIN.LOSS_WEIGHTS) != len(cfg.DATA.TASK_KEYS):
        raise ConfigError(
            f"TRAIN.LOSS_WEIGHTS has {len(cfg.TRAIN.LOSS_WEIGHTS)} entries but DATA.TASK_KEYS has "
            f"{len(cfg.DATA.TASK_KEYS)}; give one weight per level or leave it empty."
        )
    if cfg.TRAIN.ACCUM_STEPS < 1:
        raise ConfigError(f"TRAIN.ACCUM_STEPS must be >= 1, got {cfg.TRAIN.ACCUM_STEPS}.")
    if cfg.CHECKPOINT.MODE not in ("min", "max"):
        raise ConfigError(f"CHECKPOINT.MODE must be 'min' or 'max', got {cfg.CHECKPOINT.MODE!r}.")
    if cfg.CHECKPOINT.KEEP_BEST_N > 0 and not cfg.CHECKPOINT.MONITOR:
        raise ConfigError("CHECKPOINT.KEEP_BEST_N > 0 needs CHECKPOINT.MONITOR (e.g. 'val/acc1/species').")
    for key in ("CHECKPOINT", "CHECKPOINT.WEIGHTS_SAVER"):
        node = cfg.CHECKPOINT if key == "CHECKPOINT" else cfg.CHECKPOINT.WEIGHTS_SAVER
        try:
            interval = parse_interval(node.INTERVAL)
            validate_filename_template(node.FILENAME, interval)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    try:
        validate_filename_template(cfg.CHECKPOINT.MID_EPOCH_FILENAME, parse_interval("1st"))
    except ValueError as e:
        raise ConfigError(f"CHECKPOINT.MID_EPOCH_FILENAME: {e}") from None
    if cfg.EVAL.INTERVAL < 1:
        raise ConfigError(f"EVAL.INTERVAL must be >= 1 (validate every N epochs), got {cfg.EVAL.INTERVAL}.")
    _check_metric_fields(cfg)


def load_config(cfg_file: str | None = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Defaults → file (with _BASE_) → opts → validation → frozen config."""
    cfg = get_default_config()
    if cfg_file:
        merge_file(cfg, cfg_file)
    if opts:
        merge_opts(cfg, opts)
    validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def run_dir(cfg: CN) -> Path:
    """<ENV.OUTPUT.BASE_DIR>/<EXPERIMENT.NAME>."""
    return Path(os.path.expanduser(cfg.ENV.OUTPUT.BASE_DIR)) / cfg.EXPERIMENT.NAME


# Keys whose values are checkpoint identifiers: a URL or rclone connection string there may
# carry credentials, which must never be written to the run dir or into a checkpoint.
_IDENTIFIER_KEYS = ("TRAIN.RESUME", "MODEL.PRETRAINED", "MODEL.PRETRAINED_CONVNEXT", "MODEL.PRETRAINED_ROPEVIT")


def config_yaml(cfg: CN) -> str:
    """The resolved config as YAML, with credentials in identifiers (URL user-info, query
    strings such as presigned signatures, rclone connection-string parameters) replaced by ``***``."""
    from linnaeus.checkpoint.sources.base import redact

    clean = cfg.clone()
    clean.defrost()
    for key in _IDENTIFIER_KEYS:
        *parents, leaf = key.split(".")
        node = clean
        for part in parents:
            node = node[part]
        if isinstance(node.get(leaf), str) and node[leaf]:
            node[leaf] = redact(node[leaf])
    return clean.dump()


def dump_config(cfg: CN, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically: temp file + rename), credentials redacted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(config_yaml(cfg))
    os.replace(tmp, path)
