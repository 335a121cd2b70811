"""The one error type of the config layer."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file/key and the fix."""
