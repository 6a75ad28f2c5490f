"""Diagnostics of docs/design.md §4: gradient conflict, branch specialisation, attention
overlap, class-mean geometry, generalisation gap and conflict over training.

Pure torch/numpy. Every function that runs the model puts it in eval mode (BatchNorm running
statistics, dropout off), computes in float32 and restores each submodule's train/eval flag;
gradients are taken with ``torch.autograd.grad``, so no parameter's ``.grad`` changes.
"""

from ._utils import off_diagonal_stats, sorted_pairs, to_jsonable
from .gcm import (
    BranchShares,
    GCMResult,
    GroupConflict,
    balanced_subset_indices,
    branch_gradient_shares,
    branch_shares_from_result,
    gradient_conflict_from_batches,
    gradient_conflict_matrix,
)
from .report import diagnose, gcm_summary
from .representation import (
    AttentionStats,
    ClassAngles,
    ImageAttention,
    attention_for_image,
    attention_statistics,
    class_mean_angles,
    cosine_similarity_matrix,
    pairwise_angles,
    top_channel_jaccard,
)
from .training import ConflictTracker, conflict_change, generalisation_gap

__all__ = [
    "AttentionStats",
    "BranchShares",
    "ClassAngles",
    "ConflictTracker",
    "GCMResult",
    "GroupConflict",
    "ImageAttention",
    "attention_for_image",
    "attention_statistics",
    "balanced_subset_indices",
    "branch_gradient_shares",
    "branch_shares_from_result",
    "class_mean_angles",
    "conflict_change",
    "cosine_similarity_matrix",
    "diagnose",
    "gcm_summary",
    "generalisation_gap",
    "gradient_conflict_from_batches",
    "gradient_conflict_matrix",
    "off_diagonal_stats",
    "pairwise_angles",
    "sorted_pairs",
    "to_jsonable",
    "top_channel_jaccard",
]
