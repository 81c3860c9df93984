"""Turning examples into token ids with the tokenizer's own chat template.

The prompt part (system prompt, user turn, assistant header) is tokenized on its own and its labels
are -100, so the loss falls only on the response tokens and the appended EOS token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from spard.data.records import Example

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


def chat_messages(example: Example, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation for one example: optional system turn, then the user's query."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": example.query})
    return messages


def prompt_text(tokenizer: Any, example: Example, system_prompt: str | None = None) -> str:
    """The templated prompt up to and including the assistant header (what generation starts from)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            chat_messages(example, system_prompt), tokenize=False, add_generation_prompt=True
        )
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return f"{prefix}{example.query}\n"


def fitting_prompt_text(tokenizer: Any, example: Example, system_prompt: str | None, max_tokens: int) -> str:
    """:func:`prompt_text` within ``max_tokens`` tokens: when it is longer, the end of the user's text is
    cut (never the template: the assistant header that generation starts from stays)."""
    from dataclasses import replace

    text = prompt_text(tokenizer, example, system_prompt)
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    if n <= max_tokens:
        return text
    query_ids = tokenizer(example.query, add_special_tokens=False)["input_ids"]
    keep = len(query_ids) - (n - max_tokens)
    while keep > 0:
        cut = tokenizer.decode(query_ids[:keep], skip_special_tokens=True)
        text = prompt_text(tokenizer, replace(example, prompt=cut, input=None), system_prompt)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens:
            logger.debug("prompt %s cut to %d of %d user tokens to fit %d", example.id, keep, len(query_ids), max_tokens)
            return text
        keep -= 1 + (keep // 20)  # re-tokenising may merge differently: shrink a little more
    raise ValueError(f"prompt {example.id!r}: the template alone (system prompt included) exceeds "
                     f"max_prompt_length={max_tokens} tokens")


def tokenize_example(
    tokenizer: Any,
    example: Example,
    *,
    max_length: int,
    system_prompt: str | None = None,
) -> dict[str, list[int]] | None:
    """Token ids, attention mask and labels for one supervised example.

    ``labels[i] == -100`` exactly on the prompt tokens; the response is followed by EOS. Sequences
    are cut at ``max_length`` from the right; an example left with no response token returns None.
    """
    if example.target is None:
        raise ValueError(f"example {example.id!r} has no target to train on")
    prompt_ids = tokenizer(prompt_text(tokenizer, example, system_prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    if all(t == IGNORE_INDEX for t in labels):
        return None
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int,
    system_prompt: str | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenize many examples, dropping (and counting in the log) those whose prompt fills ``max_length``."""
    rows = [tokenize_example(tokenizer, ex, max_length=max_length, system_prompt=system_prompt) for ex in examples]
    kept = [r for r in rows if r is not None]
    if len(kept) < len(rows):
        logger.warning("dropped %d of %d examples whose prompt fills max_length=%d", len(rows) - len(kept), len(rows), max_length)
    if not kept:
        raise ValueError(f"no example has a response token within max_length={max_length}")
    return kept


def as_dataset(rows: Sequence[dict[str, list[int]]]) -> Any:
    """A ``datasets.Dataset`` of tokenized rows, for ``transformers.Trainer``."""
    import datasets

    return datasets.Dataset.from_list(list(rows))


def data_collator(tokenizer: Any) -> Any:
    """Right-pads ids with the pad token and labels with -100."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt")
