"""Datasets (class folders + taxonomy, iNaturalist JSON, CSV manifests, generated toy and example
sets), the taxonomy's tree, resumable samplers, loaders."""

from .build import DataBundle, build_data
from .csv_manifest import read_csv_manifest
from .examples import ensure_example_dataset
from .folder import HierarchicalImageFolder, LabeledImages, scan_image_folder, split_per_class
from .hierarchy import Hierarchy
from .inat import read_inat
from .sampler import ResumableDistributedSampler, ShardedEvalSampler
from .taxonomy import IGNORE_INDEX, DatasetError, Taxonomy, load_taxonomy
from .toy import ensure_toy_dataset, toy_taxonomy
from .transforms import build_eval_transform, build_train_transform, build_transforms

__all__ = [
    "IGNORE_INDEX",
    "DataBundle",
    "DatasetError",
    "Hierarchy",
    "HierarchicalImageFolder",
    "LabeledImages",
    "ResumableDistributedSampler",
    "ShardedEvalSampler",
    "Taxonomy",
    "build_data",
    "build_eval_transform",
    "build_train_transform",
    "build_transforms",
    "ensure_example_dataset",
    "ensure_toy_dataset",
    "load_taxonomy",
    "read_csv_manifest",
    "read_inat",
    "scan_image_folder",
    "split_per_class",
    "toy_taxonomy",
]
