#!/usr/bin/env bash
# Fine-tune the hybrid from component checkpoints: a timm ConvNeXt for the conv front and a
# timm RoPE-ViT for the transformer blocks, each found by bare file name in the local cache,
# then print the load report the run wrote. The "pretrained" weights are random-init timm
# models saved locally (no model hub here); with real ones the flow is the same.
#
#   examples/finetune_components/run.sh            # 1 short epoch on the toy data
#   KEEP=1 examples/finetune_components/run.sh     # keep the temp dir for a look afterwards
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
py="${LINNAEUS_PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d -t linnaeus-finetune.XXXXXX)"
cleanup() { if [[ "${KEEP:-0}" == "1" ]]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT

# 1. Component checkpoints in timm's own formats: a convnext_atto state dict (.pth) and a
#    vit_small_patch16_rope_224 shrunk to the demo's width (depth 6, width 128, 4 heads) as safetensors.
"$py" - "$work/cache" <<'PY'
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

cache = Path(sys.argv[1])
cache.mkdir(parents=True)
torch.manual_seed(0)
convnext = timm.create_model("convnext_atto", num_classes=1000)
torch.save(convnext.state_dict(), cache / "convnext_atto_in1k.pth")
vit = timm.create_model("vit_small_patch16_rope_224", depth=6, embed_dim=128, num_heads=4, num_classes=1000)
save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, cache / "vit_tiny_rope_in1k.safetensors")
for f in sorted(cache.iterdir()):
    print(f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB)")
PY

# 2. Train the demo hybrid (2 ConvNeXt stages, 2 RoPE-ViT blocks of width 128) from them;
#    layer-scale on, because the timm ViT has it.
#    The last two of the 6 source blocks go to the hybrid's blocks 0 and 1.
"$py" tools/train.py --cfg configs/demo.yaml --opts \
    ENV.INPUT.CACHE_DIR "$work/cache" ENV.OUTPUT.BASE_DIR "$work/output" EXPERIMENT.NAME finetune \
    MODEL.PRETRAINED_CONVNEXT convnext_atto_in1k.pth \
    MODEL.PRETRAINED_ROPEVIT vit_tiny_rope_in1k.safetensors \
    MODEL.PRETRAINED_ROPEVIT_BLOCKS "[4, 5]" \
    MODEL.PRETRAINED_STRATEGY transfer MODEL.HYBRID.LAYER_SCALE_INIT 1e-5 \
    TRAIN.EPOCHS 1 TRAIN.MAX_STEPS_PER_EPOCH 5 TRAIN.PROGRESS_BAR False

# 3. The machine-readable report next to the run's config and log.
echo "== $work/output/finetune/load_report.json (abridged)"
"$py" - "$work/output/finetune/load_report.json" <<'PY'
import json
import sys

for report in json.load(open(sys.argv[1])):
    keep = ("component", "source", "strategy", "counts", "ok", "loaded_by_prefix", "missing_by_prefix",
            "unexpected_by_prefix", "shape_mismatched_by_prefix", "notes", "warnings")
    print(json.dumps({k: report[k] for k in keep}))
PY
