"""Batched, resumable response generation with the tokenizer's chat template.

Prompts are sorted by length and decoded in batches with left padding and the KV cache; greedy by
default, sampling only when asked (and then seeded). A prompt longer than ``max_prompt_length``
loses the end of its user text, never the template. Rows ``{id, prompt, response}`` are appended to
the output as each batch finishes; a rerun resumes only a file made with the same model, system
prompt and decoding (its fingerprint, :func:`spard.io.claim_output`), reuses a row only when its
prompt is the one asked for now, and rewrites the finished file in input order (rows of other ids
that were there stay, after them), so an interrupted and resumed run ends with the same file as an
uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from spard.data.formatting import fitting_prompt_text
from spard.data.records import Example, write_jsonl
from spard.io import JsonlAppender, StaleOutputError, claim_output, read_jsonl

logger = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    max_new_tokens: int = 128
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    system_prompt: str | None = None
    max_prompt_length: int = 512


def _generate_batch(model: Any, tokenizer: Any, texts: list[str], cfg: GenerationConfig) -> list[str]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(next(model.parameters()).device)
    kwargs: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                              "eos_token_id": tokenizer.eos_token_id, "use_cache": True}
    if cfg.do_sample:
        kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    new_tokens = out[:, enc["input_ids"].shape[1]:]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate_responses(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    config: GenerationConfig | None = None,
    *,
    output: str | Path | None = None,
    progress: bool = True,
    model_id: dict[str, Any] | None = None,
    on_mismatch: str = "error",
) -> list[dict[str, Any]]:
    """Generate one response per example; returns rows in input order (and writes them to ``output``).

    ``model_id`` identifies the weights (:func:`spard.models.loading.model_fingerprint`); with the
    decoding settings it is the output's fingerprint. ``on_mismatch`` (``error`` or ``restart``) says
    what to do with an output made under another fingerprint or holding another prompt under an id."""
    cfg = config or GenerationConfig()
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise ValueError("example ids must be unique to resume generation")
    done: dict[str, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    if output is not None:
        if claim_output(output, generation_fingerprint(cfg, model_id), on_mismatch=on_mismatch):
            wanted = {ex.id: ex.query for ex in examples}
            for row in read_jsonl(output):
                if row.get("id") not in wanted:
                    others.append(row)
                elif row.get("prompt") == wanted[row["id"]]:
                    done[row["id"]] = row
                elif on_mismatch == "error":
                    raise StaleOutputError(f"{output}: id {row.get('id')!r} holds a response to another prompt "
                                           "(other data under the same ids); use another output or --overwrite")
            if done:
                logger.info("%s: %d of %d responses already there, resuming", output, len(done), len(examples))
    todo = [i for i, ex in enumerate(examples) if ex.id not in done]
    texts = {i: fitting_prompt_text(tokenizer, examples[i], cfg.system_prompt, cfg.max_prompt_length) for i in todo}
    todo.sort(key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    if cfg.do_sample:
        torch.manual_seed(cfg.seed)
    writer = JsonlAppender(output) if output is not None else None
    try:
        with tqdm(total=len(examples), initial=len(examples) - len(todo), desc="generating", disable=not progress) as bar:
            for start in range(0, len(todo), cfg.batch_size):
                batch = todo[start : start + cfg.batch_size]
                responses = _generate_batch(model, tokenizer, [texts[i] for i in batch], cfg)
                for i, response in zip(batch, responses, strict=True):
                    row = {"id": examples[i].id, "prompt": examples[i].query, "response": response}
                    done[row["id"]] = row
                    if writer:
                        writer.write(row)
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
        if writer:
            writer.close()
    rows = [done[i] for i in ids]
    if output is not None:
        write_jsonl(output, rows + others)
    return rows


def generation_fingerprint(cfg: GenerationConfig, model_id: dict[str, Any] | None) -> dict[str, Any]:
    """What decides a generated response: the weights and every decoding setting (not the batch size)."""
    settings = {k: v for k, v in vars(cfg).items() if k != "batch_size"}
    if not cfg.do_sample:
        settings = {k: v for k, v in settings.items() if k not in ("temperature", "top_p", "seed")}
    return {"model": model_id, "generation": settings}
