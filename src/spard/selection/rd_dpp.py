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


def max_cosine(pool: np.ndarray, reference: np.ndarray, *, pool_block: int = 16384, reference_block: int = 4096,
               dtype: type = np.float32) -> np.ndarray:
    """``max_j cos(pool_i, reference_j)`` for every pool row (rows assumed L2-normalised), in float64.

    Computed in blocks of ``pool_block x reference_block`` similarities of ``dtype``, so the working
    set stays bounded (16384 x 4096 float32 = 256 MiB) whatever N and M; ``pool`` may be a memory-mapped
    ``.npy``. float32 products of unit vectors are exact to about 1e-7, far below the gaps that
    decide a selection (tests compare the picks against float64)."""
    if reference.shape[0] == 0:
        raise ValueError("the reference set is empty")
    ref = np.asarray(reference, dtype=dtype)
    out = np.empty(pool.shape[0], dtype=np.float64)
    for start in range(0, pool.shape[0], pool_block):
        rows = np.asarray(pool[start : start + pool_block], dtype=dtype)
        best = np.full(rows.shape[0], -np.inf, dtype=dtype)
        for r in range(0, ref.shape[0], reference_block):
            np.maximum(best, (rows @ ref[r : r + reference_block].T).max(axis=1), out=best)
        out[start : start + rows.shape[0]] = best
    return out


def quality(relevance: np.ndarray, beta: float) -> np.ndarray:
    """``q_i = max(r_i, 0) ** beta``: negative relevance counts as none."""
    return np.maximum(relevance, 0.0) ** beta


def kernel_factor(embeddings: np.ndarray, q: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """``B = diag(q) E``: the low-rank factor of ``L = B B^T + eps I``, in ``dtype`` (float32 halves the
    memory of a large pool: 10^6 x 384 is 1.5 GB instead of 3)."""
    out = np.array(embeddings, dtype=dtype, copy=True)
    out *= np.asarray(q, dtype=dtype)[:, None]
    return out


def dense_kernel(embeddings: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """The dense ``N x N`` kernel (reference implementations and small inputs only)."""
    B = kernel_factor(embeddings, q)
    return B @ B.T + eps * np.eye(B.shape[0])
