"""Where the fine-tuning, attack and safety data of a run come from, and how they are formatted."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where the fine-tuning, attack and safety data come from, and how it is formatted."""

    task: str = ""
    prompt_field: str = "prompt"
    input_field: str = "input"
    task_target_field: str = "answer"
    task_limit: int | None = None
    harmful: str | None = None
    harmful_ratio: float = 0.1
    #: ``task`` (default, the SPARD authors' convention): floor(p x |task|) harmful rows are added;
    #: ``total``: p is the harmful share of a final set of |task| rows (Lisa, Vaccine, Booster).
    harmful_ratio_of: str = "task"
    harmful_target_field: str = "unsafe"
    safe_pool: str | None = None
    safe_target_field: str = "safe"
    safety_demos: str | None = None
    safety_demos_target_field: str = "safe"
    max_length: int = 256
    system_prompt: str | None = None
