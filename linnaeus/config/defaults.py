"""Config defaults (yacs): every key of the tree, each with a one-line comment above it.

This module is the reference for what can be set: a YAML file or ``--opts`` may only set keys
that exist here, with values of the same type (see :mod:`linnaeus.config.load`).
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

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
# rclone remote name (rclone.conf or RCLONE_CONFIG_<NAME>_* env vars); empty = Backblaze B2 from B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY.
_C.ENV.INPUT.BUCKET.REMOTE = ""
# Bucket (or top-level folder) on the remote.
_C.ENV.INPUT.BUCKET.NAME = "linnaeus-checkpoints"
# Prefix inside the bucket; object = REMOTE:NAME/PATH_PREFIX<filename>.
_C.ENV.INPUT.BUCKET.PATH_PREFIX = "modelZoo/"

_C.ENV.OUTPUT = CN()
# Run dir = BASE_DIR/EXPERIMENT.NAME.
_C.ENV.OUTPUT.BASE_DIR = "output"
_C.ENV.OUTPUT.BUCKET = CN()
# Upload every committed checkpoint to REMOTE:NAME/PATH_PREFIX<experiment>/ in the background.
_C.ENV.OUTPUT.BUCKET.ENABLED = False
# rclone remote name for uploads; empty = Backblaze B2 from B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY.
_C.ENV.OUTPUT.BUCKET.REMOTE = ""
# Bucket (or top-level folder) for uploads.
_C.ENV.OUTPUT.BUCKET.NAME = "linnaeus-checkpoints"
# Prefix inside the upload bucket.
_C.ENV.OUTPUT.BUCKET.PATH_PREFIX = "modelZoo/"
# When an upload still fails after its retries: "stop" ends the run on every rank (its local files are kept);
# "warn" keeps training, logs it once with what is not uploaded yet, and retries in the background (retention
# deletes no unconfirmed checkpoint); at the end of the run they get 15 more minutes, then the run fails.
_C.ENV.OUTPUT.BUCKET.ON_FAILURE = "stop"
# Attempts per checkpoint upload (with backoff between them) before ON_FAILURE acts.
_C.ENV.OUTPUT.BUCKET.UPLOAD_RETRIES = 5
# With ON_FAILURE "warn": seconds between background retries of the checkpoints not uploaded yet.
_C.ENV.OUTPUT.BUCKET.RETRY_AFTER_S = 120.0
# Which checkpoints of the main saver are uploaded: "" = every one; else an interval as CHECKPOINT.INTERVAL's
# ("500st", "1ep", "30min", a list): one is uploaded when the interval fell due since the last one uploaded; the
# others stay local (retention may delete them) and the run's last checkpoint is uploaded at its end. Frequent
# local saves (a crash loses seconds), rarer uploads (a lost cluster loses at most this interval).
_C.ENV.OUTPUT.BUCKET.INTERVAL = ""
# The run's writer lease on its bucket folder: renewed every TTL/6 s; a lease without a heartbeat for this long
# is taken over (a dead launch on another host), logged. A launch whose holder still beats refuses to start.
_C.ENV.OUTPUT.BUCKET_LEASE_TTL_S = 120.0

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
# "toy" (generated once into DATA.ROOT), "imagefolder" (class-per-folder tree + taxonomy),
# "inat" (iNaturalist JSON annotations) or "csv" (manifest: path column + one column per rank).
_C.DATA.DATASET = "toy"
# Dataset root; for "toy" the generator writes here on first use; image paths in annotations are relative to it.
_C.DATA.ROOT = "data/toy"
# inat/csv: training annotation file (train2021.json style, or a CSV manifest); relative paths are under DATA.ROOT.
_C.DATA.TRAIN_ANN = ""
# inat/csv: validation annotation file; empty = hold out DATA.VAL_FRACTION of each leaf class of TRAIN_ANN.
_C.DATA.VAL_ANN = ""
# inat/csv: let TRAIN_ANN and VAL_ANN share images (the log warns how many); False = refuse the run, naming them.
_C.DATA.ALLOW_TRAIN_VAL_OVERLAP = False
# "inat" or "csv": generate that small example set into DATA.ROOT first (configs/inat_example.yaml); "" = off.
_C.DATA.EXAMPLE = ""
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
# Full training state to resume from: an identifier, "latest" (the run's newest committed checkpoint) or
# "step:N" (the run's checkpoint at optimizer step N); takes precedence over AUTO_RESUME.
_C.TRAIN.RESUME = ""
# Micro-batches per optimizer step (gradient accumulation, DDP sync only on the last).
_C.TRAIN.ACCUM_STEPS = 1
# "ddp" (DistributedDataParallel) or "fsdp" (FSDP2 fully_shard per ViT block / ConvNeXt stage / root).
_C.TRAIN.STRATEGY = "ddp"
# Seconds one collective may wait for the other ranks before this rank gives up (the process group's
# timeout): bounds the wait when a peer's node dies or hangs. Must exceed the longest rank-0-only work the
# others wait through (a synchronous save, verifying or downloading the checkpoint to resume from).
_C.TRAIN.COLLECTIVE_TIMEOUT_S = 600
# Signals that ask for a graceful stop (finish the step, commit a checkpoint, exit 0) when
# CHECKPOINT.SAVE_ON_PREEMPT is on; SIGUSR1 is what Slurm's `--signal=USR1@120` sends before the time limit.
_C.TRAIN.PREEMPT_SIGNALS = ["SIGTERM", "SIGINT", "SIGUSR1"]
# When the job will be killed: an ISO-8601 time ("2026-12-07T18:00:00", local time unless it names a zone)
# or a Unix timestamp; empty = Slurm's end time of the job under Slurm (SLURM_JOB_END_TIME, or squeue), else none.
# Acted on only with CHECKPOINT.SAVE_BEFORE_END.
_C.TRAIN.DEADLINE = ""
# Under Slurm, after a stop on a signal or before the job's end has committed its checkpoint: put the job
# back in the queue (`scontrol requeue`), so the same job id resumes with the same command. Only for jobs
# submitted requeueable (`sbatch --requeue`); others are left to the user, and the log says so.
_C.TRAIN.REQUEUE = True
# Gradient-norm clipping threshold (0 disables).
_C.TRAIN.CLIP_GRAD = 0.0
# Self-healing. Every step's loss and gradient norm are checked (the ranks agree on them): a non-finite
# one, or a loss spike, makes the run roll back to its newest checkpoint, skip the samples of the bad step
# for the rest of the run (recorded in the checkpoint and the log), and go on.
_C.TRAIN.SPIKE = CN()
# A loss above FACTOR x the median of the last WINDOW good steps' losses is a spike (0: only non-finite).
_C.TRAIN.SPIKE.FACTOR = 0.0
# Good steps the running median spans; spikes are judged once it is full.
_C.TRAIN.SPIKE.WINDOW = 50
# Rollbacks a run may make; the next bad step stops it with an error naming the steps and samples
# (0: never roll back, stop at the first).
_C.TRAIN.SPIKE.MAX_ROLLBACKS = 3
# Multiply the LR by this after each rollback (1: unchanged; needs a TRAIN.SCHEDULER).
_C.TRAIN.SPIKE.LR_SCALE = 1.0
# Steps whose samples a rollback skips: the bad step and the ones before it (after the checkpoint).
_C.TRAIN.SPIKE.SKIP_STEPS = 1
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
# Predict the most probable consistent path through the taxonomy (leaf + its ancestors) instead of
# each level's own argmax; top-1 and the hierarchy metrics then use that path.
_C.EVAL.CONSISTENT_DECODING = False

# ----------------------------------------------------------------------- CHECKPOINT
_C.CHECKPOINT = CN()
# When to save: "1ep", "2ep" (epochs), "500st" (optimizer steps; "500ba" the same), "90s", "30min", "2h"
# (training time, summed over relaunches; saved at the first step past each multiple), an int (epochs),
# or a list of them (save when any is due): ["1ep", "30min"] in YAML, "[1ep,30min]" in --opts.
_C.CHECKPOINT.INTERVAL = "1ep"
# File name template: {epoch} (epochs completed), {step}, {experiment}, {model}, {dataset}, {n_epochs} (TRAIN.EPOCHS),
# {timestamp} (the save's), {run_timestamp} (the run's start, kept across relaunches), {rank}, metric fields.
_C.CHECKPOINT.FILENAME = "checkpoint_epoch_{epoch}.pth"
# Template for saves that land mid-epoch (preemption, step intervals); must contain {step}.
_C.CHECKPOINT.MID_EPOCH_FILENAME = "checkpoint_epoch_{epoch}_step_{step}.pth"
# Keep the N newest checkpoints (0 = keep all, unless KEEP_BEST_N selects alone).
_C.CHECKPOINT.KEEP_LAST_N = 0
# Also keep the N best by MONITOR (0 = none); alone (KEEP_LAST_N 0): the N best and the newest, nothing else.
_C.CHECKPOINT.KEEP_BEST_N = 0
# With ENV.OUTPUT.BUCKET: keep at most N local copies once their upload is confirmed (0 = only what resume needs; -1 = no limit).
_C.CHECKPOINT.KEEP_LOCAL_N = -1
# Metric that ranks checkpoints for KEEP_BEST_N, e.g. "val/acc1/species".
_C.CHECKPOINT.MONITOR = ""
# "max" if a larger MONITOR is better, "min" otherwise.
_C.CHECKPOINT.MODE = "max"
# This node's directory for the run's checkpoints, e.g. a local disk or /dev/shm/<experiment> (one per run); each
# node's launch may give its own. Empty: <run dir>/checkpoints. Whether the ranks share it is found at the start.
_C.CHECKPOINT.LOCAL_DIR = ""
# When the checkpoint directory is node-local (seen at the start: not every rank sees the same one), how many other
# nodes keep a verified copy of each checkpoint (sharded: of each node's part), sent right after its commit (0 = none).
_C.CHECKPOINT.REPLICAS = 1
# Write, hash and commit in a background thread after snapshotting state to CPU memory.
_C.CHECKPOINT.ASYNC = False
# With ASYNC: copy the parameters, optimizer state and EMA while the next forward and backward run
# (the optimizer step waits for the copy) instead of before save() returns; everything else is copied
# at the save. Off: the whole state is copied before training goes on.
_C.CHECKPOINT.ASYNC_OVERLAP = True
# With ASYNC: serialise, hash and write single-file checkpoints in a child process fed through shared
# memory, so the writing does not compete with training for the interpreter; the commit stays in the
# training process. Sharded checkpoints are written by every rank's DCP writer threads whatever this says.
_C.CHECKPOINT.ASYNC_PROCESS = True
# "auto" (sharded under TRAIN.STRATEGY fsdp, one file under ddp), "file" or "sharded" (a DCP directory
# named by FILENAME without its suffix, every rank writing its shards; loads on any world size).
_C.CHECKPOINT.FORMAT = "auto"
# Save only model weights (+config, meta); such checkpoints cannot resume training exactly.
_C.CHECKPOINT.WEIGHTS_ONLY = False
# Save only once, when training ends (and on preemption).
_C.CHECKPOINT.SAVE_LAST_ONLY = False
# On a signal of TRAIN.PREEMPT_SIGNALS: finish the current step, commit a checkpoint, exit 0.
_C.CHECKPOINT.SAVE_ON_PREEMPT = True
# With a deadline (TRAIN.DEADLINE, or Slurm's end time): this long before it ("5min", "90s", "1h"), the run
# finishes its step, commits a checkpoint and exits 0, even if no signal ever comes. Empty = off.
_C.CHECKPOINT.SAVE_BEFORE_END = ""
_C.CHECKPOINT.WEIGHTS_SAVER = CN()
# A second, independent weights-only saver (own interval, name and retention).
_C.CHECKPOINT.WEIGHTS_SAVER.ENABLED = False
# Interval of the weights-only saver (as CHECKPOINT.INTERVAL: "1ep", "500st", "30min", an int, a list).
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
