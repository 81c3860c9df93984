"""RD-DPP: the relevance-diversity kernel over the safety pool.

With unit embeddings ``e_i`` of the pool and ``r_j`` of the reference set (the fine-tuning prompts):

    relevance   r_i = max_j cos(e_i, r_j)
    quality     q_i = max(r_i, 0) ** beta
    kernel      L   = diag(q) S diag(q) + eps I,   S_ij = cos(e_i, e_j)

so ``L = B B^T + eps I`` with factor ``B = diag(q) E``; greedy MAP on it trades relevance to the
task against diversity among the picked safety samples.
"""

from __future__ import annotations

import numpy as np


def max_cosine(pool: np.ndarray, reference: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``max_j cos(pool_i, reference_j)`` for every pool row (rows assumed L2-normalised)."""
    if reference.shape[0] == 0:
        raise ValueError("the reference set is empty")
    out = np.full(pool.shape[0], -np.inf, dtype=np.float64)
    for start in range(0, reference.shape[0], chunk):
        sims = pool @ reference[start : start + chunk].T
        np.maximum(out, sims.max(axis=1), out=out)
    return out


def quality(relevance: np.ndarray, beta: float) -> np.ndarray:
    """``q_i = max(r_i, 0) ** beta``: negative relevance counts as none."""
    return np.maximum(relevance, 0.0) ** beta


def kernel_factor(embeddings: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``B = diag(q) E``: the low-rank factor of ``L = B B^T + eps I``."""
    return np.asarray(embeddings, dtype=np.float64) * np.asarray(q, dtype=np.float64)[:, None]


def dense_kernel(embeddings: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """The dense ``N x N`` kernel (reference implementations and small inputs only)."""
    B = kernel_factor(embeddings, q)
    return B @ B.T + eps * np.eye(B.shape[0])
