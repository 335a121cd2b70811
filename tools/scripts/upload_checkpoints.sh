#!/usr/bin/env bash
# Upload checkpoint files and their .sha256 sidecars to the model-zoo bucket (or a run's folder).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: tools/scripts/upload_checkpoints.sh [options] /path/to/checkpoint.pth [more.pth ...]

With no options, uploads each file to the input bucket's model zoo, where bare names in
MODEL.PRETRAINED* are resolved from:
    REMOTE:NAME/PATH_PREFIX<file name>      (defaults: Backblaze B2, linnaeus-checkpoints/modelZoo/)
computing <file>.sha256 first when it is missing, then uploads the sidecar, verifies the remote
copy (size, the remote's hash where it reports one, the sidecar read back) and prints the bare
name to use in MODEL.PRETRAINED (stdout; messages go to stderr). Uses rclone copyto: never
deletes anything remotely. Files already remote with the same size and sha256 are skipped.

Options (each falls back to the environment variable in brackets, then to --cfg, then to the
config defaults):
  --remote NAME       rclone remote name; empty = Backblaze B2      [LINNAEUS_BUCKET_REMOTE]
  --bucket NAME       bucket / top-level folder on the remote        [LINNAEUS_BUCKET_NAME]
  --prefix PATH       prefix inside the bucket, e.g. modelZoo/       [LINNAEUS_BUCKET_PREFIX]
  --cfg FILE          read REMOTE/NAME/PATH_PREFIX from ENV.INPUT.BUCKET of a config file
  --output            upload a run's checkpoints into its folder in the output bucket instead
                      (ENV.OUTPUT.BUCKET of --cfg, <prefix><experiment>/); their .sha256 must
                      exist (the commit marker) unless --write-sidecar
  --experiment NAME   upload into <prefix><experiment>/ (a run's folder; needed for auto-resume;
                      default with --output: EXPERIMENT.NAME of --cfg)
  --latest            then point that folder's `latest` marker at the last file
  --write-sidecar     compute <file>.sha256 first when it is missing (always done without --output)
  -h, --help          this help

Credentials are never printed or put on a command line. With an empty remote, rclone's b2
backend is configured in its own environment from B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY.
A named remote is configured in rclone.conf (rclone config; RCLONE_CONFIG=path) or with
environment variables RCLONE_CONFIG_<NAME>_TYPE, RCLONE_CONFIG_<NAME>_ACCESS_KEY_ID, ...
Python: $LINNAEUS_PYTHON, else the repo's .venv/bin/python, else python3.

Examples:
  export B2_APPLICATION_KEY_ID=... B2_APPLICATION_KEY=...
  tools/scripts/upload_checkpoints.sh /path/to/checkpoint.pth
  tools/scripts/upload_checkpoints.sh --cfg configs/my_run.yaml --output \
      output/my_run/checkpoints/checkpoint_epoch_3.pth
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
