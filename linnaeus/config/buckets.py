"""ENV.INPUT.BUCKET / ENV.OUTPUT.BUCKET: an enabled bucket must be reachable before the run starts.

An empty REMOTE means Backblaze B2 through an on-the-fly rclone remote built from
B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY (DESIGN's contract; the mapping is
:func:`linnaeus.checkpoint.sources.cloud.b2_env`). Without those variables such a bucket
would only fail at the first cache miss or the first upload, possibly hours in; checked here,
at config load, the error names the keys and variables to set.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

from linnaeus.checkpoint.policy import InvalidPolicyError, parse_interval
from linnaeus.checkpoint.sources import missing_b2_credentials

from .errors import ConfigError

_BUCKETS = (("ENV.INPUT.BUCKET", "looks up bare checkpoint names"), ("ENV.OUTPUT.BUCKET", "receives the run's checkpoints"))


def validate_buckets(cfg: CN) -> None:
    """Raise ConfigError for an enabled bucket with neither a remote nor B2 credentials, or an unknown
    upload-failure policy."""
    if cfg.ENV.OUTPUT.BUCKET.UPLOAD_RETRIES < 1 or cfg.ENV.OUTPUT.BUCKET.RETRY_AFTER_S <= 0:
        raise ConfigError(f"ENV.OUTPUT.BUCKET.UPLOAD_RETRIES must be >= 1 and ENV.OUTPUT.BUCKET.RETRY_AFTER_S > 0, got "
                          f"{cfg.ENV.OUTPUT.BUCKET.UPLOAD_RETRIES} and {cfg.ENV.OUTPUT.BUCKET.RETRY_AFTER_S}.")
    if cfg.ENV.OUTPUT.BUCKET.ON_FAILURE not in ("stop", "warn"):
        raise ConfigError(f"ENV.OUTPUT.BUCKET.ON_FAILURE must be 'stop' (a failed upload ends the run) or 'warn' "
                          f"(training goes on, the upload is retried), got {cfg.ENV.OUTPUT.BUCKET.ON_FAILURE!r}.")
    if cfg.ENV.OUTPUT.BUCKET.INTERVAL:
        try:
            parse_interval(cfg.ENV.OUTPUT.BUCKET.INTERVAL)
        except InvalidPolicyError as e:
            raise ConfigError(f"ENV.OUTPUT.BUCKET.INTERVAL (which checkpoints are uploaded; \"\" for every one): "
                              f"{e}") from None
    for key, role in _BUCKETS:
        node = cfg.ENV[key.split(".")[1]].BUCKET
        if not node.ENABLED or node.REMOTE.strip().rstrip(":"):
            continue
        missing = missing_b2_credentials()
        if missing:
            raise ConfigError(
                f"{key}.ENABLED is True (the bucket {role}) but {key}.REMOTE is empty, which means Backblaze B2 "
                f"with credentials from the environment, and {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set. Export "
                "B2_APPLICATION_KEY_ID and B2_APPLICATION_KEY, or set "
                f"{key}.REMOTE to an rclone remote (configured in rclone.conf or by RCLONE_CONFIG_<NAME>_* variables), "
                f"or set {key}.ENABLED False."
            )
        if not node.NAME.strip("/"):
            raise ConfigError(f"{key}.NAME is empty but {key}.REMOTE is empty too (Backblaze B2): give the B2 "
                              "bucket's name, e.g. 'linnaeus-checkpoints' (the default).")
