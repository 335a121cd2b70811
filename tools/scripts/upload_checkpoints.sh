#!/usr/bin/env bash
# Upload checkpoint files and their .sha256 sidecars to the configured bucket prefix.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/scripts/upload_checkpoints.sh [options] /path/to/checkpoint.pth [more.pth ...]

Uploads each file, then its .sha256 sidecar, to
    REMOTE:BUCKET/PREFIX[EXPERIMENT/]<file name>
with rclone copyto (never deletes anything remotely), and verifies the remote size, the
remote hash where the remote reports one, and the uploaded sidecar. Files already present
remotely with the same size and sha256 are skipped.

Options (each falls back to the environment variable in brackets):
  --remote NAME       rclone remote name                      [LINNAEUS_BUCKET_REMOTE]
  --bucket NAME       bucket / top-level folder on the remote  [LINNAEUS_BUCKET_NAME]
  --prefix PATH       prefix inside the bucket, e.g. ckpts/    [LINNAEUS_BUCKET_PREFIX]
  --experiment NAME   upload into <prefix><experiment>/ (a run's folder; needed for auto-resume)
  --latest            then point that folder's `latest` marker at the last file
  --write-sidecar     compute <file>.sha256 first when it is missing
  --cfg FILE          read REMOTE/NAME/PATH_PREFIX from ENV.OUTPUT.BUCKET of a config file
  -h, --help          this help

Credentials: the remote is configured in rclone.conf (rclone config; RCLONE_CONFIG=path) or
with environment variables RCLONE_CONFIG_<NAME>_TYPE, RCLONE_CONFIG_<NAME>_ACCESS_KEY_ID, ...
They are never printed. Python: $LINNAEUS_PYTHON, else the repo's .venv/bin/python, else python3.

Example:
  export RCLONE_CONFIG_MYS3_TYPE=s3 RCLONE_CONFIG_MYS3_PROVIDER=AWS RCLONE_CONFIG_MYS3_ENV_AUTH=true
  tools/scripts/upload_checkpoints.sh --remote mys3 --bucket ckpts --prefix linnaeus/ \
      output/demo/checkpoints/checkpoint_epoch_3.pth
USAGE
}

if [[ $# -eq 0 ]]; then usage >&2; exit 2; fi
for arg in "$@"; do
  if [[ "$arg" == "-h" || "$arg" == "--help" ]]; then usage; exit 0; fi
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${LINNAEUS_PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="python3"; fi
fi

export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m linnaeus.cli.remote_cmds upload "$@"
