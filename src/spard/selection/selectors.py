"""Safe-data selectors behind one interface: ``rd-dpp``, ``random``, ``relevance``, ``diversity``.

Each selector takes the pool and reference embeddings and a budget ``k`` and returns a
:class:`Selection` (indices into the pool in selection order, with gains and relevance where the
method defines them). Build one by name with :func:`make_selector`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace

import numpy as np

from spard.registry import Registry
from spard.selection.dpp import greedy_map_screened
from spard.selection.rd_dpp import max_cosine, quality


@dataclass
class SelectionConfig:
    """How the safe set is chosen: method, budget ``k = max(min_k, floor(ratio * |D_ft|))``, kernel settings.

    ``method="auto"`` lets the caller decide (``spard train`` uses RD-DPP for SPARD and random
    selection for the other defenses).
    """

    method: str = "auto"
    ratio: float = 0.03
    min_k: int = 0
    k: int | None = None
    beta: float = 4.0
    eps: float = 1e-6
    embedding_model: str = "minilm"
    #: Seed of the random draw; None (default) = the run's ``training.seed``, so seeds differ per run.
    seed: int | None = None
    embedding_batch_size: int = 32

    def budget(self, n_reference: int) -> int:
        if self.k is not None:
            return self.k
        return max(self.min_k, math.floor(self.ratio * n_reference + 1e-9))


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray
    gains: np.ndarray | None = None
    relevance: np.ndarray | None = None
    notes: dict = field(default_factory=dict)


class Selector(ABC):
    name: str = ""
    needs_embeddings: bool = True

    def __init__(self, config: SelectionConfig | None = None):
        self.config = config or SelectionConfig(method=self.name)

    @abstractmethod
    def select(self, k: int, pool: np.ndarray | None, reference: np.ndarray | None, n_pool: int | None = None) -> Selection:
        """Pick ``k`` pool items; ``pool``/``reference`` are L2-normalised embeddings (None when not needed)."""


def _relevance(pool: np.ndarray | None, reference: np.ndarray | None) -> np.ndarray | None:
    return None if pool is None or reference is None else max_cosine(pool, reference)


class RandomSelector(Selector):
    """Uniform sample without replacement, seeded."""

    name = "random"
    needs_embeddings = False

    def select(self, k, pool, reference, n_pool=None):
        n = pool.shape[0] if pool is not None else n_pool
        if n is None:
            raise ValueError("random selection needs the pool size")
        seed = 0 if self.config.seed is None else self.config.seed
        idx = np.random.default_rng(seed).permutation(n)[: min(k, n)]
        rel = _relevance(pool, reference)
        return Selection(idx, None, None if rel is None else rel[idx])


class RelevanceSelector(Selector):
    """Top-k by relevance ``max_j cos(e_i, r_j)``."""

    name = "relevance"

    def select(self, k, pool, reference, n_pool=None):
        rel = max_cosine(pool, reference)
        idx = np.argsort(-rel, kind="stable")[: min(k, len(rel))]
        return Selection(idx, None, rel[idx])


class RDDPPSelector(Selector):
    """RD-DPP: greedy MAP on ``diag(q) S diag(q) + eps I`` with ``q = max(r, 0) ** beta``."""

    name = "rd-dpp"

    def _quality(self, relevance: np.ndarray) -> np.ndarray:
        return quality(relevance, self.config.beta)

    def select(self, k, pool, reference, n_pool=None):
        rel = max_cosine(pool, reference)
        # float32 embeddings keep a float32 factor (half the memory) while k stays below their dimension;
        # beyond the factor's rank the picks hang on eps-sized gains, which need float64
        dtype = np.float32 if pool.dtype == np.float32 and k < pool.shape[1] else np.float64
        result = greedy_map_screened(pool, self._quality(rel), k, eps=self.config.eps, dtype=dtype)
        notes = {"rank_exhausted_at": result.rank_exhausted_at, "log_det": result.log_det}
        return Selection(result.indices, result.gains, rel[result.indices], notes)


class DiversitySelector(RDDPPSelector):
    """Diversity only: the same greedy MAP with ``q = 1`` (relevance ignored)."""

    name = "diversity"

    def _quality(self, relevance: np.ndarray) -> np.ndarray:
        return np.ones_like(relevance)


#: ``selection.method`` names -> Selector classes
SELECTORS: Registry[type[Selector]] = Registry("selection method")
for _cls in (RDDPPSelector, RandomSelector, RelevanceSelector, DiversitySelector):
    SELECTORS.add(_cls.name, _cls)


def make_selector(config: SelectionConfig) -> Selector:
    if config.method == "auto":
        config = replace(config, method="rd-dpp")
    return SELECTORS.get(config.method)(config)
