"""The taxonomy as tensors for evaluation: consistent decoding, consistency and mistake severity.

``paths[leaf]`` holds a leaf class's index at every level (``task_keys`` order), so the whole tree
is one ``[num_leaves, levels]`` LongTensor, and ``parents[l][c]`` the parent at level ``l + 1``
of class ``c`` at level ``l``.

- **Consistent decoding** scores every leaf by the sum over levels of the log-probability of its
  path, ``sum_l log p_l(paths[leaf, l])``, and predicts the best leaf's whole path: the most
  probable path through the tree (the levels treated as independent given the image).
- **Consistency**: the fraction of images whose per-level predictions form a path of the tree
  (predicted species under the predicted genus, that genus under the predicted family, ...).
- **Mistake severity** (Bertinetto et al., "Making Better Mistakes", CVPR 2020): over the images
  whose leaf prediction is wrong, the mean height of the lowest common ancestor of prediction and
  truth, in levels: 1 = same genus, 2 = same family but another genus, ..., ``levels`` = no common
  ancestor among the levels predicted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Hierarchy:
    task_keys: tuple[str, ...]
    paths: torch.Tensor  # [num_leaves, levels]
    parents: tuple[torch.Tensor, ...]  # levels - 1 tensors: class at level l -> class at level l + 1

    @classmethod
    def from_taxonomy(cls, taxonomy: Any) -> "Hierarchy | None":
        """From a ``linnaeus.data.Taxonomy``; None when there is no tree to walk (one level, or
        classes whose parent is unknown)."""
        keys = tuple(taxonomy.task_keys)
        if len(keys) < 2 or not taxonomy.is_complete:
            return None
        paths = torch.tensor(taxonomy.leaf_paths(), dtype=torch.long)
        parents = tuple(torch.tensor(taxonomy.parent_indices(k), dtype=torch.long) for k in keys[:-1])
        return cls(keys, paths, parents)

    @classmethod
    def from_record(cls, levels: Mapping[str, Sequence[str]], parents: Mapping[str, Sequence[str]]) -> "Hierarchy":
        """From what a checkpoint stores: ``{level: class names}`` (finest first) and ``{level: each class's
        parent name}`` for every level but the coarsest (``linnaeus.checkpoint.state.tree_record``)."""
        keys = tuple(levels)
        index = {k: {n: i for i, n in enumerate(levels[k])} for k in keys}
        ups = [[index[coarser][p] for p in parents[k]] for k, coarser in zip(keys, keys[1:])]
        paths = []
        for leaf in range(len(levels[keys[0]])):
            path = [leaf]
            for up in ups:
                path.append(up[path[-1]])
            paths.append(path)
        return cls(keys, torch.tensor(paths, dtype=torch.long), tuple(torch.tensor(u, dtype=torch.long) for u in ups))

    def to(self, device: torch.device) -> "Hierarchy":
        return Hierarchy(self.task_keys, self.paths.to(device), tuple(p.to(device) for p in self.parents))

    def decode(self, logits: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Most probable consistent path per image: LongTensor[B, levels]."""
        scores = None
        for level, key in enumerate(self.task_keys):
            logp = F.log_softmax(logits[key].float(), dim=-1)[:, self.paths[:, level]]  # [B, num_leaves]
            scores = logp if scores is None else scores + logp
        return self.paths[scores.argmax(dim=-1)]

    def consistent(self, preds: torch.Tensor) -> torch.Tensor:
        """Bool[B]: the per-level predictions ``preds[B, levels]`` form a path of the tree."""
        ok = torch.ones(preds.shape[0], dtype=torch.bool, device=preds.device)
        for level, parent in enumerate(self.parents):
            ok &= parent[preds[:, level]] == preds[:, level + 1]
        return ok

    def lca_height(self, pred_leaf: torch.Tensor, true_leaf: torch.Tensor) -> torch.Tensor:
        """Height in levels of the lowest common ancestor of two leaves (0 = same leaf)."""
        # In a tree, paths that meet at a level agree at every coarser level too.
        same = self.paths[pred_leaf] == self.paths[true_leaf]
        return len(self.task_keys) - same.sum(dim=1)

