"""Data: reading records, chat formatting with label masking, and attack mixing."""

from spard.data.attack import harmful_count, load_poisoned_task, mix_attack, origin_counts, poison_counts
from spard.data.config import DataConfig
from spard.data.formatting import (
    IGNORE_INDEX,
    chat_messages,
    prompt_text,
    tokenize_example,
    tokenize_examples,
)
from spard.data.records import DataError, Example, FieldMap, load_examples, write_jsonl

__all__ = [
    "IGNORE_INDEX",
    "DataConfig",
    "DataError",
    "Example",
    "FieldMap",
    "chat_messages",
    "harmful_count",
    "load_examples",
    "load_poisoned_task",
    "mix_attack",
    "origin_counts",
    "poison_counts",
    "prompt_text",
    "tokenize_example",
    "tokenize_examples",
    "write_jsonl",
]
