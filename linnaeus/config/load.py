"""Reading a config: defaults → ``--cfg FILE`` (with ``_BASE_`` inheritance) → ``--opts KEY VALUE ...``.

Unknown keys and wrong types are errors that name the file or ``--opts``, the key and (for
unknown keys) the closest valid ones. The resolved config is validated, then frozen.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN
from yacs.config import _check_and_coerce_cfg_value_type

from .defaults import get_default_config
from .errors import ConfigError
from .validate import validate

_decode_cfg_value = CN._decode_cfg_value

BASE_KEY = "_BASE_"


def _suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, CN):
            keys.extend(_all_keys(v, full + "."))
    return keys


def _merge_dict(dst: CN, src: dict, prefix: str, source: str) -> None:
    """Merge ``src`` into ``dst`` in place; unknown keys and type mismatches raise ConfigError."""
    for k, v in src.items():
        full = f"{prefix}{k}"
        if k not in dst:
            raise ConfigError(
                f"{source}: unknown config key '{full}'.{_suggest(full, _all_keys(get_default_config()))} "
                "Valid keys are the defaults in linnaeus/config/defaults.py."
            )
        if isinstance(dst[k], CN):
            if not isinstance(v, dict):
                raise ConfigError(f"{source}: '{full}' is a section; expected a mapping, got {v!r}.")
            _merge_dict(dst[k], v, full + ".", source)
            continue
        value = _decode_cfg_value(v) if not isinstance(v, dict) else v
        if isinstance(value, str) and isinstance(dst[k], (list, tuple)):
            # Accept YAML-style lists from the command line: DATA.TASK_KEYS "[species,genus]".
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass  # leave as str; the type check below reports it with the key name
        dst[k] = _coerce(value, dst[k], full, source)


def _coerce(value: Any, original: Any, full: str, source: str) -> Any:
    # CHECKPOINT intervals accept "2ep", a bare int, and a list of them (kept as one string, "1ep,30min").
    if full.endswith("INTERVAL") and isinstance(original, str):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, int)) for v in value):
            return ",".join(str(v) for v in value)
    if isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        return _check_and_coerce_cfg_value_type(value, original, full.split(".")[-1], full)
    except ValueError:
        raise ConfigError(
            f"{source}: '{full}' expects {type(original).__name__} (default {original!r}), "
            f"got {type(value).__name__} {value!r}."
        ) from None


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    """Read one YAML file with its _BASE_ files merged under it (recursively, cycles rejected)."""
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in chain + (path,))
        raise ConfigError(f"_BASE_ cycle: {cycle}. Remove one of the _BASE_ references.")
    if not path.is_file():
        where = f" (referenced from {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}.")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}.")
    bases = data.pop(BASE_KEY, None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for base in bases:
        base_path = Path(os.path.expanduser(base))
        if not base_path.is_absolute():
            base_path = path.parent / base_path
        _deep_update(merged, _read_yaml(base_path, chain + (path,)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def merge_file(cfg: CN, path: str | os.PathLike) -> None:
    """Merge a YAML file (and its _BASE_ chain) into ``cfg``."""
    _merge_dict(cfg, _read_yaml(Path(path), ()), "", str(path))


def merge_opts(cfg: CN, opts: Sequence[str]) -> None:
    """Merge ``KEY VALUE`` pairs from the command line, type-checked against the defaults."""
    if len(opts) % 2:
        raise ConfigError(f"--opts expects KEY VALUE pairs; got an odd number of items: {list(opts)}.")
    for key, raw in zip(opts[0::2], opts[1::2]):
        node: Any = {}
        tree = node
        parts = key.split(".")
        for p in parts[:-1]:
            tree[p] = {}
            tree = tree[p]
        tree[parts[-1]] = raw
        _merge_dict(cfg, node, "", "--opts")


def config_from_text(text: str, source: str) -> CN:
    """The defaults with the YAML ``text`` merged in (a checkpoint's stored config, as its ``source``
    names it), frozen; not validated: what it ran with was, and credentials in it are redacted."""
    data = yaml.safe_load(text) if text else None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping of config keys, got {type(data).__name__}.")
    cfg = get_default_config()
    _merge_dict(cfg, data, "", source)
    cfg.freeze()
    return cfg


def load_config(cfg_file: str | None = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Defaults → file (with _BASE_) → opts → validation → frozen config."""
    cfg = get_default_config()
    if cfg_file:
        merge_file(cfg, cfg_file)
    if opts:
        merge_opts(cfg, opts)
    validate(cfg)
    if freeze:
        cfg.freeze()
    return cfg
