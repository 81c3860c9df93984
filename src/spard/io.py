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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Have ``write`` write a file at a fresh temporary path next to ``path``, then rename it into place.

    Readers never see half a file, and two processes writing the same ``path`` at once never share a
    temporary file (the last rename wins). The temporary name keeps ``path``'s suffix, for writers that
    pick the format from it (matplotlib)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results get the mode any other new file would
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
    if path.is_dir():
        raise IsADirectoryError(21, "is a directory, not a JSONL file", str(path))
    with path.open("rb") as fh:
        lines = fh.readlines()
    for i, raw in enumerate(lines):
        torn = i == len(lines) - 1 and not raw.endswith(b"\n")
        try:
            line = raw.decode("utf-8")
            if line.strip():
                yield json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if torn:
                logger.warning("%s: ignoring a partial last line (interrupted write)", path)
                continue
            problem = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else "invalid JSON line"
            raise ValueError(f"{path}:{i + 1}: {problem}") from None


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


class StaleOutputError(ValueError):
    """An output file exists but was made under other settings than the ones asked for now."""


def fingerprint_path(path: str | Path) -> Path:
    """The sidecar holding the settings an appendable output was made with: ``<file>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def _has_rows(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def fingerprint_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ between two fingerprints."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += [f"{key}.{k}" for k in fingerprint_difference(a, b)]
        elif a != b:
            out.append(key)
    return out


def claim_output(path: str | Path, fingerprint: Mapping[str, Any], *, on_mismatch: str = "error") -> bool:
    """Make ``path`` an output that may be resumed only under ``fingerprint``; call before appending.

    The fingerprint (JSON-able settings that decide the rows: model, data, decoding, judge...) is kept
    in :func:`fingerprint_path`. When ``path`` already has rows made under another fingerprint (or
    under none: an older spard or another tool), ``on_mismatch`` decides: ``"error"`` raises
    :class:`StaleOutputError` naming the settings that differ, ``"restart"`` deletes the rows and starts
    over. Returns True when earlier rows may be resumed."""
    if on_mismatch not in ("error", "restart"):
        raise ValueError(f"on_mismatch must be 'error' or 'restart', got {on_mismatch!r}")
    path, meta = Path(path), fingerprint_path(path)
    fingerprint = json.loads(json.dumps(dict(fingerprint), default=str))
    if _has_rows(path):
        try:
            old = json.loads(meta.read_text(encoding="utf-8")) if meta.exists() else None
        except json.JSONDecodeError:
            old = None
        if old == fingerprint:
            return True
        differs = "it has no fingerprint (made by an older spard or by hand)" if old is None else (
            "these settings differ: " + ", ".join(fingerprint_difference(old, fingerprint)))
        if on_mismatch == "error":
            raise StaleOutputError(f"{path}: exists and was made under other settings; {differs}. "
                                   "Use another output, or --overwrite to start it over")
        logger.info("%s: made under other settings (%s); starting it over", path, differs)
        path.unlink()
    atomic_write_json(meta, fingerprint)
    return False


def remove_tree(path: str | Path, root: str | Path) -> None:
    """``shutil.rmtree(path)``, only when ``path`` lies strictly inside ``root`` (links resolved);
    anything else is a ``ValueError``: a job never deletes outside its own output folder."""
    import shutil

    target, base = Path(path).resolve(), Path(root).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"refusing to delete {path}: it is not inside {root}")
    shutil.rmtree(target)


def check_output(path: str | Path, *, inputs: tuple[str | Path | None, ...] = (), directory: bool = False) -> Path:
    """Check before any work that ``path`` can be written: not one of ``inputs``, not a directory where a
    file is wanted (or a file where a directory is), in a folder that exists or can be made and is
    writable. Raises ``ValueError`` naming the path."""
    path = Path(path)
    for source in inputs:
        if source and Path(source).exists() and Path(source).resolve() == path.resolve():
            raise ValueError(f"{path}: the output is also an input; write it elsewhere")
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"{path}: is {'a file' if directory else 'a directory'}; expected {'a directory' if directory else 'a file'}")
    parent = path if directory and path.exists() else path.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{path}: {existing} is a file, so the output cannot go under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: {existing} is not writable")
    if path.exists() and not directory and not os.access(path, os.W_OK):
        raise ValueError(f"{path}: not writable")
    return path
