"""Configs as dataclasses: built from nested dicts or YAML, with errors that name the bad field."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override has an unknown field or a value of the wrong type."""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: must be one of {typing.get_args(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
            return value.lower() in {"true", "1", "yes"}
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):  # a number where text is expected is a mistake, not a string
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and wrong types raise :class:`ConfigError`.
    A class with a ``from_mapping(data, where)`` classmethod builds itself (its mapping has another shape
    than its fields: the run config's defense sections)."""
    if isinstance(data, cls):
        return data
    if hasattr(cls, "from_mapping"):
        return cls.from_mapping(data, where)
    return build_dataclass(cls, data, where)


def build_dataclass(cls: type[T], data: Any, where: str = "config") -> T:
    """:func:`from_dict` for a plain dataclass: one key per field, each coerced to the field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    check_ranges(obj, where)
    return obj


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


def _optional(rule: tuple[Callable[[Any], bool], str]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v is None or rule[0](v)), f"{rule[1]} (or unset)"


_POSITIVE = ((lambda v: v > 0), "> 0")
_UNIT = ((lambda v: 0 < v <= 1), "in (0, 1]")
_COUNT = _at_least(1)
_NONNEG = _at_least(0)

#: The documented range of every numeric setting, by ``Class.field``; checked whenever a config is built
#: from a mapping (YAML, flags) and by :func:`check_ranges`.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "TrainingSettings.learning_rate": _POSITIVE, "TrainingSettings.epochs": _POSITIVE,
    "TrainingSettings.max_steps": ((lambda v: v == -1 or v > 0), "-1 (train for `epochs`) or > 0"),
    "TrainingSettings.batch_size": _COUNT, "TrainingSettings.gradient_accumulation_steps": _COUNT,
    "TrainingSettings.micro_batch_size": _optional(_COUNT),
    "TrainingSettings.loss_chunk_size": _optional(_NONNEG),
    "TrainingSettings.warmup_steps": _NONNEG, "TrainingSettings.weight_decay": _NONNEG,
    "TrainingSettings.max_grad_norm": ((lambda v: v >= 0), ">= 0 (0 = no clipping)"),
    "TrainingSettings.logging_steps": _COUNT, "TrainingSettings.save_steps": _NONNEG,
    "DataConfig.harmful_ratio": _NONNEG, "DataConfig.task_limit": _optional(_COUNT), "DataConfig.max_length": _at_least(8),
    "SelectionConfig.ratio": _UNIT, "SelectionConfig.min_k": _NONNEG, "SelectionConfig.k": _optional(_COUNT),
    "SelectionConfig.beta": _NONNEG, "SelectionConfig.eps": _POSITIVE, "SelectionConfig.embedding_batch_size": _COUNT,
    "SPAGConfig.delta": _NONNEG, "SPAGConfig.radius": _POSITIVE, "SPAGConfig.safe_batch_size": _COUNT,
    "SPAGConfig.heldout_size": _NONNEG, "SPAGConfig.heldout_every": _COUNT,
    "LisaConfig.rho": _NONNEG, "LisaConfig.alignment_steps": _NONNEG, "LisaConfig.finetune_steps": _COUNT,
    "LisaConfig.proximal_from": ((lambda v: 0 <= v <= 1), "in [0, 1]"),
    "LisaConfig.alignment_batch_size": _optional(_COUNT), "SafeGradConfig.alignment_batch_size": _COUNT,
    "SafeLoRAConfig.threshold": ((lambda v: -1 <= v <= 1), "in [-1, 1]"), "SafeLoRAConfig.num_layers": _optional(_COUNT),
    "SafeLoRAConfig.rank": _optional(_COUNT),
    "LoraSettings.r": _COUNT, "LoraSettings.alpha": _POSITIVE, "LoraSettings.dropout": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "GenerationConfig.max_new_tokens": _COUNT, "GenerationConfig.batch_size": _COUNT,
    "GenerationConfig.temperature": _POSITIVE, "GenerationConfig.top_p": _UNIT, "GenerationConfig.max_prompt_length": _at_least(8),
    "EvalConfig.harmful_limit": _optional(_COUNT), "EvalConfig.task_limit": _optional(_COUNT),
    "EvalConfig.benign_limit": _optional(_COUNT),
    "LLMJudgeConfig.threshold": ((lambda v: 1 <= v <= 5), "in 1..5"), "LLMJudgeConfig.concurrency": _COUNT,
    "LLMJudgeConfig.max_retries": _NONNEG, "LLMJudgeConfig.timeout": _POSITIVE, "LLMJudgeConfig.max_tokens": _COUNT,
    "AlignConfig.n_refusals": _NONNEG, "AlignConfig.n_benign": _NONNEG, "AlignConfig.check_limit": _COUNT,
    "AlignConfig.max_new_tokens": _COUNT, "AlignConfig.max_length": _at_least(8), "AlignConfig.distill_max_new_tokens": _COUNT,
}


def check_ranges(obj: Any, where: str = "config") -> None:
    """Raise :class:`ConfigError` naming ``where.field`` for the first numeric setting of ``obj`` outside
    its documented range (:data:`RANGES`). Nested configs are checked when :func:`from_dict` builds them."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        rule = RANGES.get(f"{type(obj).__name__}.{f.name}")
        if rule and isinstance(value, (int, float, type(None))) and not isinstance(value, bool) and not rule[0](value):
            raise ConfigError(f"{where}.{f.name}: must be {rule[1]}, got {value!r}")


def to_dict(obj: Any) -> dict[str, Any]:
    """The mapping :func:`from_dict` builds ``obj`` back from (``obj.to_mapping()`` where it has one)."""
    return obj.to_mapping() if hasattr(obj, "to_mapping") else dataclasses.asdict(obj)


#: A config file's top-level key naming another config file (relative to this one) it builds on.
EXTENDS = "extends"


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML config as a mapping. With a top-level ``extends: OTHER.yaml`` (a path relative to this file),
    the mapping is OTHER's with this file's keys merged over it (:func:`merge`: mappings merged key by key,
    any other value, lists included, replaced; ``null`` clears a section). Chains are followed; a cycle
    is an error naming the files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    if EXTENDS not in data:
        return data
    base = data.pop(EXTENDS)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: {EXTENDS}: must be the path of another config file, got {base!r}")
    base_path = path.parent / base
    chain = (*_seen, path.resolve())
    if base_path.resolve() in chain:
        raise ConfigError(f"{path}: {EXTENDS}: {base} makes a cycle ({' -> '.join(str(p) for p in chain)})")
    if not base_path.is_file():
        raise ConfigError(f"{path}: {EXTENDS}: {base_path}: config file not found")
    return merge(load_yaml(base_path, chain), data)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``set_dotted(d, "optim.learning_rate", 1e-4)`` sets ``d["optim"]["learning_rate"]``."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key!r} is not a section")
    node[leaf] = value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> T:
    """A config from an optional YAML file, then dotted-key overrides (for example from CLI flags)."""
    data = load_yaml(path) if path else {}
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_dotted(data, dotted, value)
    return from_dict(cls, data, str(path) if path else "config")


def config_hash(obj: Any) -> str:
    """sha256 of a JSON-able settings object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
