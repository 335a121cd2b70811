"""Identifier keys and bucket fields are data, never flags: refused at config load when unsafe.

The rules are the checkpoint library's (:mod:`linnaeus.checkpoint.sources.identifiers`: no
leading ``-``, no control or bidirectional-formatting characters, valid rclone remote names, no
connection-string option that runs a program, no ``..`` out of a bucket); here they run on
every loaded config, so a bad value stops the run before it starts, with the key named.
"""

from __future__ import annotations

from yacs.config import CfgNode as CN

from linnaeus.checkpoint.sources import UnsafeIdentifierError, check_bucket, check_identifier

from .errors import ConfigError

IDENTIFIER_KEYS = ("TRAIN.RESUME", "MODEL.PRETRAINED", "MODEL.PRETRAINED_CONVNEXT", "MODEL.PRETRAINED_ROPEVIT")
BUCKET_KEYS = ("ENV.INPUT.BUCKET", "ENV.OUTPUT.BUCKET")


def _get(cfg: CN, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def validate_identifiers(cfg: CN) -> None:
    """Raise :class:`ConfigError` naming the key of the first unsafe identifier or bucket field."""
    try:
        for key in IDENTIFIER_KEYS:
            value = _get(cfg, key)
            if value:
                # The resolver strips surrounding blanks; so does this check.
                check_identifier(str(value).strip(), key)
        for key in BUCKET_KEYS:
            node = _get(cfg, key)
            check_bucket(str(node.REMOTE), str(node.NAME), str(node.PATH_PREFIX),
                         (f"{key}.REMOTE", f"{key}.NAME", f"{key}.PATH_PREFIX"))
    except UnsafeIdentifierError as e:
        raise ConfigError(str(e)) from None
