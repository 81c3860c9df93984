"""Greedy MAP inference for a DPP, on the factored kernel and (for reference) on the dense one.

The kernel is ``L = B B^T + eps * I`` with ``B`` of shape ``(N, d)``. Greedy MAP picks
``Y = argmax log det L_Y`` one item at a time: start from ``argmax_i L_ii``, then add the item with
the largest marginal gain

    d_i^2 = L_ii - ||c_i||^2,

where ``c_i`` are the coordinates of item ``i``'s feature on the orthonormal basis of the picked
items' features (incremental Cholesky / Gram-Schmidt). ``log det L_Y`` is the sum of the log gains.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GreedyMAPResult:
    """Picked indices in selection order with the marginal gain ``d_i^2`` each had when picked.

    ``rank_exhausted_at`` is the position from which picks are decided by ``eps`` alone: the rank of
    ``B``, when ``k`` exceeds it; None otherwise.
    """

    indices: np.ndarray
    gains: np.ndarray
    rank_exhausted_at: int | None = None

    @property
    def log_det(self) -> float:
        return float(np.sum(np.log(self.gains)))


def numerical_rank(rows: np.ndarray) -> int:
    if rows.size == 0:
        return 0
    return int(np.linalg.matrix_rank(rows))


#: Above this many items :func:`greedy_map` runs the vectorised eager update by default: one
#: ``B u`` product per pick, no per-item Python (the lazy heap's bookkeeping costs more than it saves).
LAZY_MAX_ITEMS = 50_000


def _row_sq_norms(B: np.ndarray, block: int = 65536) -> np.ndarray:
    """``||b_i||^2`` in float64, a block of rows at a time (no full-size float64 copy of a float32 ``B``)."""
    out = np.empty(B.shape[0], dtype=np.float64)
    for s in range(0, B.shape[0], block):
        rows = np.asarray(B[s : s + block], dtype=np.float64)
        out[s : s + rows.shape[0]] = np.einsum("ij,ij->i", rows, rows)
    return out


def greedy_map(factor: np.ndarray, k: int, eps: float = 1e-6, *, lazy: bool | None = None) -> GreedyMAPResult:
    """Greedy MAP of ``log det L_Y`` for ``L = B B^T + eps I`` without forming ``L``; ``B = factor``.

    Item ``i``'s feature in the full space is ``a_i = [b_i, sqrt(eps) e_i]``, so ``L_ij = a_i . a_j``.
    Gram-Schmidt over picked features gives unit vectors ``u_t``; the identity part of ``u_t`` is
    non-zero only on picked indices, hence for an unpicked item ``u_t . a_i = u_t^B . b_i``. With
    ``j`` the item picked at step ``t``::

        c_j      = U^B b_j                          (coordinates of a_j on u_1..u_{t-1})
        u_t^B    = (b_j - (U^B)^T c_j) / sqrt(d_j^2)
        d_i^2   -= (b_i . u_t^B)^2                  for every item i: one product B u_t^B

    Cost O(N d) per step and O(N d + k d) memory.

    Precision: a float32 ``factor`` stays float32 (half the memory of a large pool) for the one big
    product per pick; gains, basis and every small product are float64.

    ``lazy=True`` (default up to :data:`LAZY_MAX_ITEMS` items) gives the same picks: gains only shrink as ``Y`` grows, so a gain
    computed against the first ``s`` basis vectors is an upper bound of the current one. Items are
    kept in a heap by their bound; the top item is brought up to date (``d_i^2 -= ||U^B[s:t] b_i||^2``)
    until the top is exact, which is then the true argmax. When bounds stop being informative (many
    catch-ups in one step, as once ``k`` exceeds the rank of ``B``) the rest runs the eager update.

    Returns at most ``min(k, N)`` items. Ties go to the lowest index, so the result is deterministic.
    """
    B = np.asarray(factor)
    if B.dtype not in (np.float32, np.float64):
        B = B.astype(np.float64)
    if B.ndim != 2:
        raise ValueError(f"factor must be 2-D (items x features), got shape {B.shape}")
    if eps <= 0:
        raise ValueError("eps must be > 0 (it keeps L positive definite)")
    n, d = B.shape
    k = max(0, min(int(k), n))
    if lazy is None:
        lazy = n <= LAZY_MAX_ITEMS
    gains = _row_sq_norms(B) + eps
    basis = np.zeros((k, d))
    indices = np.empty(k, dtype=np.int64)
    picked_gains = np.empty(k)
    synced = np.zeros(n, dtype=np.int64)  # gains[i] accounts for basis[:synced[i]]
    heap = [(-g, i) for i, g in enumerate(gains.tolist())] if lazy else []
    heapq.heapify(heap)
    eager = not lazy
    max_catch_ups = max(64, n // 32)
    for t in range(k):
        if eager:
            j = int(np.argmax(gains))
        else:
            catch_ups = 0
            while True:
                j = heap[0][1]
                if synced[j] == t:
                    heapq.heappop(heap)
                    break
                # bring the stale items at the top of the heap up to date, a block at a time
                stale = []
                while heap and len(stale) < 16 and synced[heap[0][1]] < t:
                    stale.append(heapq.heappop(heap)[1])
                rows = np.asarray(stale)
                lo = int(synced[rows].min())
                C = B[rows] @ basis[lo:t].T
                C[np.arange(lo, t)[None, :] < synced[rows][:, None]] = 0.0
                gains[rows] -= np.einsum("ij,ij->i", C, C)
                synced[rows] = t
                for i in stale:
                    heapq.heappush(heap, (-gains[i], i))
                catch_ups += len(stale)
                if catch_ups > max_catch_ups:  # bounds are stale everywhere: bring all up to date, go eager
                    rest = np.fromiter((i for _, i in heap), dtype=np.int64)
                    for s in np.unique(synced[rest]):
                        rows = rest[synced[rest] == s]
                        C = B[rows] @ basis[s:t].T
                        gains[rows] -= np.einsum("ij,ij->i", C, C)
                    eager, heap = True, []
                    j = int(np.argmax(gains))
                    break
        gain = float(gains[j])
        indices[t], picked_gains[t] = j, gain
        b_j = B[j].astype(np.float64)
        c_j = basis[:t] @ b_j
        u = (b_j - basis[:t].T @ c_j) / np.sqrt(gain)
        basis[t] = u
        gains[j] = -np.inf
        synced[j] = t + 1
        if eager:
            gains -= (B @ u.astype(B.dtype)).astype(np.float64) ** 2
    # Greedy takes every item that adds a new direction of B before any that adds only eps, so the
    # picked rows of B span fewer than k dimensions exactly when the low-rank part ran out.
    rank = numerical_rank(B[indices])
    exhausted_at = rank if rank < k else None
    if exhausted_at is not None:
        logger.info(
            "greedy MAP: the kernel's low-rank part is exhausted after %d picks; the remaining %d are decided by eps",
            exhausted_at,
            k - exhausted_at,
        )
    return GreedyMAPResult(indices, picked_gains, exhausted_at)


def greedy_map_screened(embeddings: np.ndarray, q: np.ndarray, k: int, eps: float = 1e-6, *,
                        dtype: type = np.float64, first_size: int | None = None) -> GreedyMAPResult:
    """:func:`greedy_map` on ``B = diag(q) E`` with the same picks, run on a screened candidate set.

    An item's gain never exceeds its first one, ``g_i = q_i^2 ||e_i||^2 + eps`` (gains only shrink). Run
    the greedy on the ``m`` items of largest ``g_i`` (kept in index order, so ties still go to the lowest
    index). If every pick's gain is above ``tau``, the largest ``g_i`` left out, no item left out could
    have been the argmax at any step, so the picks are exactly those of the greedy on all items; if not,
    ``m`` grows 4x and it runs again (at worst on all items). With RD-DPP's ``q = r^beta`` most of a large
    pool has a negligible bound, so a pool of 10^6 costs a greedy over a few 10^4 items and the factor is
    never formed for the rest.
    """
    from spard.selection.rd_dpp import kernel_factor

    E = np.asarray(embeddings)
    n = E.shape[0]
    k = max(0, min(int(k), n))
    q = np.asarray(q, dtype=np.float64)
    bound = q * q * _row_sq_norms(E) + eps
    order = np.argsort(-bound, kind="stable")
    m = min(n, first_size or max(20 * k, 20_000))
    while True:
        chosen = np.sort(order[:m])
        result = greedy_map(kernel_factor(E[chosen], q[chosen], dtype=dtype), k, eps)
        tau = bound[order[m]] if m < n else -np.inf
        if m == n or (len(result.gains) and result.gains.min() > tau):
            logger.debug("screened greedy MAP: %d of %d items as candidates", m, n)
            return GreedyMAPResult(chosen[result.indices], result.gains, result.rank_exhausted_at)
        m = min(n, 4 * m)


def greedy_map_dense(kernel: np.ndarray, k: int) -> GreedyMAPResult:
    """Reference greedy MAP on a dense ``N x N`` kernel, the way the SPARD authors' code does it.

    Keeps the Cholesky factor ``C`` of ``L_Y`` and at every step solves ``C X = L_{Y,R}`` for all
    remaining items ``R`` to get their gains ``L_ii - ||x_i||^2``: O(N^2) memory and O(N k^3) time.
    Used by tests and benchmarks as the ground truth for :func:`greedy_map`.
    """
    from scipy.linalg import cholesky, solve_triangular

    L = np.asarray(kernel, dtype=np.float64)
    n = L.shape[0]
    k = max(0, min(int(k), n))
    diag = np.diag(L).copy()
    if k == 0:
        return GreedyMAPResult(np.empty(0, dtype=np.int64), np.empty(0))
    first = int(np.argmax(diag))
    selected, gains = [first], [float(diag[first])]
    while len(selected) < k:
        chol = cholesky(L[np.ix_(selected, selected)], lower=True)
        remaining = np.setdiff1d(np.arange(n), selected)
        x = solve_triangular(chol, L[np.ix_(selected, remaining)], lower=True)
        gain = diag[remaining] - np.einsum("ij,ij->j", x, x)
        best = int(np.argmax(gain))
        selected.append(int(remaining[best]))
        gains.append(float(gain[best]))
    return GreedyMAPResult(np.asarray(selected, dtype=np.int64), np.asarray(gains))


def brute_force_greedy(kernel: np.ndarray, k: int) -> list[int]:
    """Greedy over ``log det L_Y`` computed from scratch for every candidate (tiny inputs only)."""
    L = np.asarray(kernel, dtype=np.float64)
    selected: list[int] = []
    for _ in range(min(k, L.shape[0])):
        best, best_val = -1, -np.inf
        for i in range(L.shape[0]):
            if i in selected:
                continue
            idx = selected + [i]
            sign, logdet = np.linalg.slogdet(L[np.ix_(idx, idx)])
            val = logdet if sign > 0 else -np.inf
            if val > best_val:
                best, best_val = i, val
        selected.append(best)
    return selected
