"""Reading prompt/target records from files and dataset names, with errors that name the place.

Every source becomes a list of :class:`Example`. A source is a ``.jsonl``, ``.json``, ``.csv`` or
``.parquet`` file, a directory written by ``datasets.Dataset.save_to_disk``, or a Hugging Face
dataset name (``name`` or ``name:split``). Columns are mapped onto ``prompt``, an optional ``input``
and an optional target through :class:`FieldMap`.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A data source is missing, malformed, or lacks a required field."""


@dataclass(frozen=True)
class Example:
    """One prompt with an optional extra input and an optional target response.

    ``origin`` says where the example came from (``task``, ``harmful:<name>``, ``safety``...). It is
    bookkeeping for experiments and is never shown to a model.
    """

    prompt: str
    target: str | None = None
    input: str = ""
    id: str = ""
    origin: str = "task"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def query(self) -> str:
        """The text a user sends: the prompt, followed by the input when there is one."""
        return f"{self.prompt}\n\n{self.input}" if self.input else self.prompt

    @property
    def embedding_text(self) -> str:
        """Text used for selection embeddings: prompt plus ``" " + input``; never the response."""
        return f"{self.prompt} {self.input}" if self.input else self.prompt

    def with_origin(self, origin: str) -> Example:
        return replace(self, origin=origin)

    def with_target(self, target: str | None) -> Example:
        return replace(self, target=target)


@dataclass(frozen=True)
class FieldMap:
    """Which columns of a source hold the prompt, the optional input and the target.

    ``target=None`` reads prompts only (evaluation sets). ``keep`` names extra columns to carry along
    in :attr:`Example.extra` (for example a reference answer used for scoring).
    """

    prompt: str = "prompt"
    input: str | None = "input"
    target: str | None = "answer"
    id: str | None = "id"
    keep: tuple[str, ...] = ()


TARGET_ALIASES = {"answer", "safe", "unsafe", "response", "output", "completion"}


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (save the file as UTF-8)") from None
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None


def _rows_json(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text (save the file as UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if isinstance(data, dict):
        # {"data": [...]} or a single split: accept the first list value.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of records or an object holding one list")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records")
    for i, row in enumerate(data):
        yield f"{path}: record {i}", row


def _rows_csv(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _rows_table(rows: Iterable[Mapping[str, Any]], name: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(rows):
        yield f"{name}: row {i}", row


def _rows_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    yield from _rows_table(pq.read_table(path).to_pylist(), str(path))


def _rows_dataset(source: str) -> Iterator[tuple[str, Any]]:
    import datasets

    path = Path(source)
    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        yield from _rows_table(ds, str(path))
        return
    name, _, split = source.partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # hub unreachable, unknown name...
        raise DataError(f"{source}: not a file, and loading it as a dataset name failed: {exc}") from exc
    yield from _rows_table(ds, source)


def iter_rows(source: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, row)`` pairs; ``location`` names the file and line for error messages."""
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file():
        readers = {".jsonl": _rows_jsonl, ".json": _rows_json, ".csv": _rows_csv, ".parquet": _rows_parquet}
        if suffix not in readers:
            raise DataError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")
        yield from readers[suffix](path)
    elif suffix in {".jsonl", ".json", ".csv", ".parquet"}:
        raise DataError(f"{path}: file not found")
    else:
        yield from _rows_dataset(str(source))


def _text_field(row: Mapping[str, Any], name: str, where: str, required: bool) -> str:
    if name not in row or row[name] is None:
        if required:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise DataError(f"{where}: missing field {name!r} (fields present: {present})")
        return ""
    value = row[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    return value


def chat_fields(messages: Any, where: str, fields: FieldMap) -> dict[str, str]:
    """The prompt and target of a Hugging Face chat row (``messages``: a list of ``{role, content}``):
    the last user turn is the prompt and, when a target is read, the assistant turn after it is the
    target. Earlier turns and system messages are not used (spard's examples are single-turn)."""
    if not isinstance(messages, list) or not all(
        isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise DataError(f"{where}: field 'messages' must be a list of {{role, content}} objects with string values")
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise DataError(f"{where}: field 'messages' has no user turn")
    out = {fields.prompt: messages[users[-1]]["content"]}
    reply = [m["content"] for m in messages[users[-1] + 1 :] if m["role"] == "assistant"]
    if fields.target:
        if not reply:
            raise DataError(f"{where}: field 'messages' has no assistant turn after the last user turn")
        out[fields.target] = reply[0]
    return out


def load_examples(
    source: str | Path,
    fields: FieldMap | None = None,
    *,
    origin: str = "task",
    limit: int | None = None,
) -> list[Example]:
    """Read a source into :class:`Example` records.

    Raises :class:`DataError` naming the file and line (or record) of the first malformed row: invalid
    JSON, a row that is not an object, a missing or empty prompt, a missing target, a non-string value.
    """
    fields = fields or FieldMap()
    examples: list[Example] = []
    for index, (where, row) in enumerate(iter_rows(source)):
        if limit is not None and len(examples) >= limit:
            break
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
        if fields.prompt not in row and "messages" in row:
            row = {**row, **chat_fields(row["messages"], where, fields)}
        prompt = _text_field(row, fields.prompt, where, required=True)
        if not prompt.strip():
            raise DataError(f"{where}: field {fields.prompt!r} is empty")
        target = _text_field(row, fields.target, where, required=True) if fields.target else None
        extra = {k: row[k] for k in fields.keep if k in row}
        missing = [k for k in fields.keep if k not in row]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r}")
        examples.append(
            Example(
                prompt=prompt,
                target=target,
                input=_text_field(row, fields.input, where, required=False) if fields.input else "",
                id=(_text_field(row, fields.id, where, required=False) if fields.id else "") or str(index),
                origin=origin,
                extra=extra,
            )
        )
    if not examples:
        raise DataError(f"{source}: no records")
    logger.info("read %d records from %s", len(examples), source)
    return examples


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSON lines atomically: a crash leaves either the old file or the new one."""
    from spard.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows))
