"""Text embeddings for safe-data selection, with a pickle-free on-disk cache.

Two encoders: the base LM's last hidden layer mean-pooled over non-padding tokens (the paper's
default) and any sentence-transformers model (``minilm`` = all-MiniLM-L6-v2, shipped on PyPI).
Both return L2-normalised float32 rows. The cache keys every text by ``sha256(text)`` under a
directory named after the encoder, and grows in append-only ``.npz`` shards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


class TextEncoder(Protocol):
    #: Identifies the encoder and its settings in the cache.
    key: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


class SentenceEncoder:
    """A sentence-transformers model given by path or id."""

    def __init__(self, path: str | Path, batch_size: int = 64, device: str | None = None, key: str | None = None):
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(path), device=device, trust_remote_code=False)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FileNotFoundError(f"embedding model {str(path)!r}: not a local sentence-transformers folder, and "
                                    f"it could not be loaded from the hub ({first}); use minilm, base or a local path") from None
        self.batch_size = batch_size
        self.key = key or f"st:{path}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=len(texts) > self.batch_size,
            normalize_embeddings=True, convert_to_numpy=True,
        )
        return np.asarray(out, dtype=np.float32)


def weights_fingerprint(model: Any) -> str:
    """A short hash of the input embedding weights, so a changed model never reuses stale cache entries."""
    weight = model.get_input_embeddings().weight.detach().float().cpu().numpy()
    return hashlib.sha256(weight[: min(64, weight.shape[0])].tobytes()).hexdigest()[:12]


class LMMeanPoolEncoder:
    """Mean of a causal LM's last hidden states over non-padding tokens (SPARD's default embedding).

    Texts are encoded in batches sorted by length, so little compute goes to padding.
    """

    def __init__(self, model: Any, tokenizer: Any, *, key: str, batch_size: int = 32, max_length: int = 256):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.key = f"lm:{key}:{weights_fingerprint(model)}:meanpool:{max_length}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), 0), dtype=np.float32)
        chunks: list[tuple[np.ndarray, np.ndarray]] = []
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        with torch.no_grad():
            for start in tqdm(range(0, len(texts), self.batch_size), desc="embedding (base LM)", disable=len(texts) <= self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
                ).to(device)
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[-1].float()
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                chunks.append((idx, pooled.cpu().numpy()))
        self.model.train(was_training)
        if chunks:
            out = np.zeros((len(texts), chunks[0][1].shape[1]), dtype=np.float32)
            for idx, vecs in chunks:
                out[idx] = vecs
        return l2_normalise(out)


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32].encode()


class EmbeddingCache:
    """Embeddings on disk under ``root/<encoder key hash>/shard-*.npz``, loaded without pickle."""

    def __init__(self, root: str | Path, encoder_key: str):
        self.dir = Path(root) / hashlib.sha256(encoder_key.encode()).hexdigest()[:16]
        self.encoder_key = encoder_key

    def load(self) -> dict[bytes, np.ndarray]:
        table: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.dir.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                for key, vec in zip(data["keys"], data["vectors"], strict=True):
                    table[bytes(key)] = vec
        return table

    def add(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "encoder.txt").write_text(self.encoder_key + "\n")
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".shard-", suffix=".npz")
        os.close(fd)
        np.savez(tmp, keys=np.asarray(keys, dtype="S32"), vectors=vectors.astype(np.float32))
        name = f"shard-{len(list(self.dir.glob('shard-*.npz'))):05d}-{hashlib.sha256(b''.join(keys)).hexdigest()[:8]}.npz"
        os.replace(tmp, self.dir / name)


def default_cache_dir() -> Path:
    from spard.models.loading import cache_root

    return cache_root() / "embeddings"


def embed_texts(texts: Sequence[str], encoder: TextEncoder, cache_dir: str | Path | None = "default") -> np.ndarray:
    """Embed ``texts`` (rows L2-normalised), reusing and extending the on-disk cache.

    ``cache_dir="default"`` uses ``$SPARD_CACHE/embeddings`` (``~/.cache/spard``); None disables caching.
    """
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    if cache_dir is None:
        return l2_normalise(encoder.encode(texts))
    cache = EmbeddingCache(cache_dir, encoder.key)
    table = cache.load()
    keys = [text_key(t) for t in texts]
    todo = sorted({k: i for i, k in enumerate(keys) if k not in table}.items(), key=lambda kv: kv[1])
    if todo:
        logger.info("embedding %d new distinct texts of %d with %s", len(todo), len(texts), encoder.key)
        fresh = l2_normalise(encoder.encode([texts[i] for _, i in todo]))
        cache.add([k for k, _ in todo], fresh)
        table.update({k: v for (k, _), v in zip(todo, fresh, strict=True)})
    return np.stack([table[k] for k in keys]).astype(np.float32)


def load_embeddings(path: str | Path, rows: int, what: str) -> np.ndarray:
    """Precomputed embeddings from a ``.npy`` file (memory-mapped, no pickle), row-aligned with ``rows``
    records of ``what``; a clear error for a wrong shape, a non-float array or rows that are not unit vectors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: embeddings file not found")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as exc:
        raise ValueError(f"{path}: not a plain .npy array ({exc})") from None
    if array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"{path}: expected {rows} rows (one per record of {what}, in order), got shape {array.shape}")
    if array.dtype not in (np.float32, np.float64):
        raise ValueError(f"{path}: expected float32 or float64 embeddings, got {array.dtype}")
    norms = np.linalg.norm(np.asarray(array[: min(rows, 1000)], dtype=np.float64), axis=1)
    if rows and np.abs(norms - 1).max() > 1e-3:
        raise ValueError(f"{path}: rows must be L2-normalised (x / ||x||); found norms from {norms.min():.3f} to {norms.max():.3f}")
    return array
