"""``s3://``, ``gs://``, ``az://``, ``b2://`` and ``http(s)://`` URIs as on-the-fly rclone remotes.

Each URI becomes an rclone path on a config-less backend (``:s3:bucket/key``) whose settings
are passed as ``RCLONE_<BACKEND>_<OPTION>`` variables in the rclone child's environment,
built from the provider's standard variables. Settings already present as ``RCLONE_*``
variables win, so rclone users keep full control. Nothing goes on the command line, so no
credential (or URL user-info) is visible in ``ps`` or in our messages.

================  ==========================================================================
URI               environment read
================  ==========================================================================
s3://bucket/key   AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN / AWS_PROFILE
                  (rclone ``env_auth``: also ~/.aws and instance roles); endpoint for
                  S3-compatible stores (B2, MinIO, R2, ``rclone serve s3``):
                  LINNAEUS_S3_ENDPOINT, else AWS_ENDPOINT_URL_S3, else S3_ENDPOINT_URL
                  (Composer's name), else AWS_ENDPOINT_URL;
                  LINNAEUS_S3_PROVIDER (default AWS, or Other with an endpoint);
                  AWS_REGION / AWS_DEFAULT_REGION
gs://bucket/key   Application default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud,
                  metadata server) via rclone ``env_auth``
az://cont/blob    AZURE_STORAGE_ACCOUNT (or _NAME); AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_URL,
                  else Azure identity via rclone ``env_auth`` (AZURE_CLIENT_ID, ...)
b2://bucket/key   B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY (also the bucket default, see
                  :data:`B2_DEFAULT_REMOTE`)
http(s)://...     none (URL user-info is passed through the environment too)
================  ==========================================================================

http(s) goes through rclone's ``http`` backend rather than urllib so every download shares
one transfer engine (low-level retries, timeouts, ``RCLONE_BWLIMIT``...) and one error
classification. The http backend reports size (HEAD) but no hash, so a ``<url>.sha256``
sidecar next to the file is what verifies content. URLs with a query string (pre-signed
URLs) are refused: rclone's http backend drops the query.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from .base import redact
from .rclone_source import RcloneSource


def _bucket_key(uri: str) -> tuple[str, str]:
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key or key.endswith("/"):
        raise ValueError(
            f"{redact(uri)}: expected <scheme>://<bucket>/<key of a file>, e.g. s3://my-bucket/ckpts/model.pth."
        )
    return bucket, key


def _first_env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def s3_source(uri: str) -> RcloneSource:
    """``s3://bucket/key`` (AWS or any S3-compatible store through an endpoint override)."""
    bucket, key = _bucket_key(uri)
    # Most specific first: ours, AWS's S3-only variable, Composer's, then AWS's all-services one.
    endpoint = _first_env("LINNAEUS_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")
    env = {
        "RCLONE_S3_ENV_AUTH": "true",
        "RCLONE_S3_PROVIDER": os.environ.get("LINNAEUS_S3_PROVIDER") or ("Other" if endpoint else "AWS"),
    }
    if endpoint:
        env["RCLONE_S3_ENDPOINT"] = endpoint
    region = _first_env("AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        env["RCLONE_S3_REGION"] = region
    return RcloneSource(f":s3:{bucket}/{key}", env=env, display=redact(uri))


def gcs_source(uri: str) -> RcloneSource:
    """``gs://bucket/key`` with Google application default credentials."""
    bucket, key = _bucket_key(uri)
    return RcloneSource(f":gcs:{bucket}/{key}", env={"RCLONE_GCS_ENV_AUTH": "true"}, display=redact(uri))


def azure_source(uri: str) -> RcloneSource:
    """``az://container/blob`` in the storage account named by AZURE_STORAGE_ACCOUNT."""
    container, key = _bucket_key(uri)
    env: dict[str, str] = {}
    account = _first_env("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCOUNT_NAME")
    if account:
        env["RCLONE_AZUREBLOB_ACCOUNT"] = account
    if os.environ.get("AZURE_STORAGE_KEY"):
        env["RCLONE_AZUREBLOB_KEY"] = os.environ["AZURE_STORAGE_KEY"]
    elif os.environ.get("AZURE_STORAGE_SAS_URL"):
        env["RCLONE_AZUREBLOB_SAS_URL"] = os.environ["AZURE_STORAGE_SAS_URL"]
    else:
        env["RCLONE_AZUREBLOB_ENV_AUTH"] = "true"
    return RcloneSource(f":azureblob:{container}/{key}", env=env, display=redact(uri))


# Backblaze's own variable names (b2 CLI, B2 SDKs) and the rclone ones they map onto.
B2_KEY_ID_VARS = ("B2_APPLICATION_KEY_ID", "RCLONE_B2_ACCOUNT")
B2_KEY_VARS = ("B2_APPLICATION_KEY", "RCLONE_B2_KEY")
# The on-the-fly remote of a bucket whose REMOTE is empty: rclone's b2 backend, configured
# only by RCLONE_B2_* in the child's environment (see :func:`b2_env`).
B2_DEFAULT_REMOTE = ":b2:"


def b2_env() -> dict[str, str]:
    """``RCLONE_B2_ACCOUNT`` / ``RCLONE_B2_KEY`` from B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY,
    as defaults for the rclone child (RCLONE_B2_* the user set already win)."""
    env = {}
    if os.environ.get("B2_APPLICATION_KEY_ID"):
        env["RCLONE_B2_ACCOUNT"] = os.environ["B2_APPLICATION_KEY_ID"]
    if os.environ.get("B2_APPLICATION_KEY"):
        env["RCLONE_B2_KEY"] = os.environ["B2_APPLICATION_KEY"]
    return env


def missing_b2_credentials() -> list[str]:
    """The B2 variables still to set (empty when an account id and a key are both available,
    under Backblaze's names or rclone's)."""
    return [vars_[0] for vars_ in (B2_KEY_ID_VARS, B2_KEY_VARS) if not _first_env(*vars_)]


def b2_source(uri: str) -> RcloneSource:
    """``b2://bucket/key`` with B2_APPLICATION_KEY_ID / B2_APPLICATION_KEY (native B2 API)."""
    bucket, key = _bucket_key(uri)
    return RcloneSource(f"{B2_DEFAULT_REMOTE}{bucket}/{key}", env=b2_env(), display=redact(uri))


def http_source(uri: str) -> RcloneSource:
    """``http(s)://host/dir/file`` through rclone's http backend rooted at the file's folder."""
    parts = urlsplit(uri)
    if parts.query:
        raise ValueError(
            f"{redact(uri)}: URLs with a query string are not supported (rclone's http backend "
            "drops it). Download the file yourself and pass its path, or serve it without a query."
        )
    base, _, file_part = uri.split("#", 1)[0].rpartition("/")
    name = unquote(file_part)
    if not parts.netloc or not name:
        raise ValueError(f"{redact(uri)}: expected http(s)://host/path/to/file.")
    # The backend URL (possibly with user-info) travels in the environment, not on argv.
    return RcloneSource(f":http:{name}", forced_env={"RCLONE_HTTP_URL": base + "/"}, display=redact(uri))
