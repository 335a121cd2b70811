"""What a checkpoint holds, whatever format stores it: the anatomy built from the training objects
(``Stateful`` components, every rank's RNG, meta, taxonomy, metric history), what a file that is
not a linnaeus checkpoint is, and restoring a state into live objects, an FSDP2-sharded model's
whole state included."""

from .anatomy import (
    CORE_META_KEYS,
    FORMAT_VERSION,
    KIND_FULL,
    KIND_WEIGHTS,
    PROGRESS_FIELDS,
    RESERVED_KEYS,
    Stateful,
    build_state,
    config_text,
    make_meta,
    materialize,
    newer_format_error,
    newer_format_reason,
    newer_format_version,
    plain_metrics,
    present_components,
    stored_progress,
    validate_structure,
)
from .foreign import REFUSED_PICKLE_ADVICE, describe_foreign, refused_pickle
from .history import MetricHistory
from .model import check_model_compatible, full_model_state, has_dtensors, model_state_dict, unwrap_model
from .owners import EMA_KEY, SnapshotOverlap, optimizers_in, stepped_storages
from .restore import (
    optimizer_state_by_name,
    restore_full_modules,
    restore_full_optimizer,
    restore_full_state,
    restore_state,
)
from .rng import collect_rng_state, gather_rng_states, restore_rank_rng_state, restore_rng_state
from .taxonomy import (
    HEAD_PREFIX,
    TAXONOMY_KEY,
    TREE_KEY,
    ClassMapping,
    Taxonomy,
    TaxonomyChangedError,
    check_same_taxonomy,
    map_classes,
    map_heads,
    stored_taxonomy,
    stored_tree,
    taxonomy_differences,
    taxonomy_record,
    tree_record,
)

__all__ = [
    "CORE_META_KEYS", "ClassMapping", "EMA_KEY", "FORMAT_VERSION", "HEAD_PREFIX", "KIND_FULL", "KIND_WEIGHTS", "MetricHistory",
    "PROGRESS_FIELDS", "REFUSED_PICKLE_ADVICE", "RESERVED_KEYS", "SnapshotOverlap", "Stateful", "TAXONOMY_KEY", "TREE_KEY", "Taxonomy",
    "TaxonomyChangedError", "build_state", "check_model_compatible", "check_same_taxonomy", "collect_rng_state",
    "config_text", "describe_foreign", "full_model_state", "gather_rng_states", "has_dtensors", "make_meta",
    "map_classes", "map_heads", "materialize", "model_state_dict", "newer_format_error", "newer_format_reason",
    "newer_format_version", "optimizer_state_by_name", "optimizers_in", "plain_metrics", "present_components", "refused_pickle",
    "restore_full_modules", "restore_full_optimizer", "restore_full_state", "restore_rank_rng_state", "restore_rng_state", "restore_state",
    "stepped_storages", "stored_progress", "stored_taxonomy", "stored_tree", "taxonomy_differences", "taxonomy_record", "tree_record", "unwrap_model",
    "validate_structure",
]
