"""linnaeus' config: a yacs tree of defaults, read from YAML (``_BASE_``) and ``--opts``, validated, frozen.

- :mod:`.defaults`: every key, each with a one-line comment (the reference for what can be set).
- :mod:`.load`: files, ``_BASE_`` inheritance, ``--opts``, type coercion → :func:`load_config`.
- :mod:`.validate`: cross-key checks; :mod:`.checkpointing`: CHECKPOINT.* → checkpoint policies.
- :mod:`.output`: the run dir and the written, credential-redacted config.yaml.
"""

from .checkpointing import build_policy, build_weights_policy
from .defaults import get_default_config
from .errors import ConfigError
from .load import BASE_KEY, config_from_text, load_config, merge_file, merge_opts
from .output import checkpoint_dir, config_yaml, dump_config, run_dir
from .validate import validate

__all__ = [
    "BASE_KEY",
    "ConfigError",
    "build_policy",
    "build_weights_policy",
    "checkpoint_dir",
    "config_yaml",
    "dump_config",
    "get_default_config",
    "config_from_text",
    "load_config",
    "merge_file",
    "merge_opts",
    "run_dir",
    "validate",
]
