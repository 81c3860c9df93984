"""Selection of the safety data SPAG uses: RD-DPP and baselines behind one interface."""

from spard.selection.dpp import GreedyMAPResult, brute_force_greedy, greedy_map, greedy_map_dense
from spard.selection.embeddings import EmbeddingCache, LMMeanPoolEncoder, SentenceEncoder, embed_texts
from spard.selection.rd_dpp import dense_kernel, kernel_factor, max_cosine, quality
from spard.selection.selectors import SELECTORS, Selection, SelectionConfig, Selector, make_selector

__all__ = [
    "SELECTORS",
    "EmbeddingCache",
    "GreedyMAPResult",
    "LMMeanPoolEncoder",
    "Selection",
    "SelectionConfig",
    "Selector",
    "SentenceEncoder",
    "brute_force_greedy",
    "dense_kernel",
    "embed_texts",
    "greedy_map",
    "greedy_map_dense",
    "kernel_factor",
    "make_selector",
    "max_cosine",
    "quality",
]
