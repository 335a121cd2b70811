"""Datasets (class-per-folder + taxonomy, generated toy set), resumable samplers, loaders."""

from .build import DataBundle, build_data
from .folder import HierarchicalImageFolder, scan_image_folder, split_per_class
from .sampler import ResumableDistributedSampler, ShardedEvalSampler
from .taxonomy import DatasetError, Taxonomy, load_taxonomy
from .toy import ensure_toy_dataset, toy_taxonomy
from .transforms import build_eval_transform, build_train_transform, build_transforms

__all__ = [
    "DataBundle",
    "DatasetError",
    "HierarchicalImageFolder",
    "ResumableDistributedSampler",
    "ShardedEvalSampler",
    "Taxonomy",
    "build_data",
    "build_eval_transform",
    "build_train_transform",
    "build_transforms",
    "ensure_toy_dataset",
    "load_taxonomy",
    "scan_image_folder",
    "split_per_class",
    "toy_taxonomy",
]
