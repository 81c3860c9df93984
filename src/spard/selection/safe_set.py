"""Choosing the safe set: embed pool and reference prompts, then run a selector."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spard.data.records import Example
from spard.selection.embeddings import LMMeanPoolEncoder, SentenceEncoder, TextEncoder, embed_texts
from spard.selection.selectors import Selection, SelectionConfig, make_selector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelectedExample:
    example: Example
    pool_index: int
    rank: int
    gain: float | None
    relevance: float | None

    def to_row(self) -> dict[str, Any]:
        ex = self.example
        row = {"pool_index": self.pool_index, "rank": self.rank, "id": ex.id, "prompt": ex.prompt}
        if ex.input:
            row["input"] = ex.input
        row["safe"] = ex.target
        # the same pair in the Hugging Face chat format, so TRL trainers (SPAGMixin) can read the file as is
        row["messages"] = [{"role": "user", "content": ex.query}, {"role": "assistant", "content": ex.target}]
        row["gain"] = self.gain
        row["relevance"] = self.relevance
        return row


def make_encoder(spec: str, *, base_model: Any = None, base_tokenizer: Any = None, base_key: str = "", batch_size: int = 32) -> TextEncoder:
    """``minilm``, ``base`` (the LM being fine-tuned; needs ``base_model``) or a sentence-transformers path/id."""
    if spec == "base":
        if base_model is None:
            raise ValueError("embedding model 'base' needs the base LM (pass base_model and base_tokenizer)")
        return LMMeanPoolEncoder(base_model, base_tokenizer, key=base_key, batch_size=batch_size)
    if spec == "minilm":
        from spard.models.loading import minilm_path

        return SentenceEncoder(minilm_path(), batch_size=batch_size, key="st:all-MiniLM-L6-v2")
    return SentenceEncoder(spec, batch_size=batch_size)


def select_safe_examples(
    pool: Sequence[Example],
    reference: Sequence[Example],
    config: SelectionConfig,
    *,
    encoder: TextEncoder | None = None,
    cache_dir: str | Path | None = "default",
    pool_embeddings: Any = None,
    reference_embeddings: Any = None,
) -> tuple[list[SelectedExample], Selection]:
    """Pick ``config.budget(len(reference))`` pool examples for the reference set, in selection order.

    ``pool_embeddings`` / ``reference_embeddings``: precomputed unit rows aligned with ``pool`` /
    ``reference`` (for example memory-mapped ``.npy`` made on a GPU elsewhere); the encoder embeds the rest."""
    selector = make_selector(config)
    k = config.budget(len(reference))
    if k > len(pool):
        logger.warning("budget k=%d exceeds the pool size %d: taking the whole pool", k, len(pool))
    pool_emb = ref_emb = None
    if selector.needs_embeddings or encoder is not None:
        given = pool_embeddings is not None and reference_embeddings is not None
        if encoder is None and not given:
            raise ValueError(f"selector {config.method!r} needs an embedding model or precomputed embeddings")
        pool_emb = (pool_embeddings if pool_embeddings is not None
                    else embed_texts([ex.embedding_text for ex in pool], encoder, cache_dir))
        ref_emb = (reference_embeddings if reference_embeddings is not None
                   else embed_texts([ex.embedding_text for ex in reference], encoder, cache_dir))
    selection = selector.select(k, pool_emb, ref_emb, n_pool=len(pool))
    picked = [
        SelectedExample(
            example=pool[int(i)],
            pool_index=int(i),
            rank=rank,
            gain=None if selection.gains is None else float(selection.gains[rank]),
            relevance=None if selection.relevance is None else float(selection.relevance[rank]),
        )
        for rank, i in enumerate(selection.indices)
    ]
    logger.info("selected %d of %d pool items with %s (k=%d)", len(picked), len(pool), config.method, k)
    return picked, selection
