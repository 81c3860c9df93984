"""Crash-safe file helpers: atomic writes for results, append-and-resume for long jobs."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Have ``write`` write a file at a fresh temporary path next to ``path``, then rename it into place.

    Readers never see half a file, and two processes writing the same ``path`` at once never share a
    temporary file (the last rename wins). The temporary name keeps ``path``'s suffix, for writers that
    pick the format from it (matplotlib)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`), synced to disk before the rename."""
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Read JSON lines written by :class:`JsonlAppender`; a torn last line (a crash mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                logger.warning("%s: ignoring a partial last line (interrupted write)", path)
                continue
            raise ValueError(f"{path}:{i + 1}: invalid JSON line") from None


class JsonlAppender:
    """Append JSON rows to a file, one flushed line each, so an interrupted job can resume from it.

    A torn last line from an earlier crash is cut off when the file is opened.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                with self.path.open("r+b") as fh:
                    fh.truncate(keep)
        self._fh = self.path.open("a", encoding="utf-8")

    def write(self, row: Mapping[str, Any]) -> None:
        self._fh.write(json.dumps(dict(row), ensure_ascii=False, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
