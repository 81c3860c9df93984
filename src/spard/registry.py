"""One registry mechanism for everything chosen by name: defenses, selectors, judges, task metrics.

``Registry("defense")`` maps names to objects (classes, factories, functions). ``register`` is a
decorator (``@DEFENSES.register("spard")``, or without a name for a class with a ``name`` attribute),
``get`` raises a ``ValueError`` naming the choices, ``describe`` gives one line of doc per entry for
``spard list``. A plugin adds an entry from its own module; nothing else needs an edit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def add(self, name: str, obj: T, doc: str | None = None) -> T:
        """Register ``obj`` under ``name`` (a second object under a taken name is an error)."""
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered already ({self._items[name]!r})")
        self._items[name] = obj
        text = doc if doc is not None else (getattr(obj, "__doc__", None) or "")
        self._docs[name] = text.strip().splitlines()[0] if text.strip() else ""
        return obj

    def register(self, name: str | None = None, *, doc: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")``; the name defaults to the object's ``name`` attribute."""

        def wrap(obj: T) -> T:
            return self.add(name or getattr(obj, "name", ""), obj, doc)

        return wrap

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plugin unloading itself, a test cleaning up)."""
        self._items.pop(name, None)
        self._docs.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> list[tuple[str, str]]:
        """``(name, first line of its doc)`` for every entry, sorted by name."""
        return [(n, self._docs[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


#: Plugin modules imported by :func:`load_plugins` in this process, in order (cluster jobs import them too).
LOADED_PLUGINS: list[str] = []


def load_plugins(modules: Sequence[str] = ()) -> list[str]:
    """Import each plugin module (its defenses, selectors, judges register themselves), and those named,
    comma-separated, in ``$SPARD_PLUGINS``; returns every plugin loaded so far."""
    import importlib
    import os

    names = [m.strip() for m in (*os.environ.get("SPARD_PLUGINS", "").split(","), *modules) if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"plugin {name!r} could not be imported: {exc}") from None
        if name not in LOADED_PLUGINS:
            LOADED_PLUGINS.append(name)
    return list(LOADED_PLUGINS)


def registries() -> dict[str, Registry[Any]]:
    """Every registry spard has, with its entries loaded (``spard list``)."""
    import spard.defenses  # noqa: F401  (registers the built-in defenses)
    from spard.defenses.base import DEFENSES
    from spard.evaluation.judges import JUDGES
    from spard.evaluation.metrics import TASK_METRICS
    from spard.selection.selectors import SELECTORS

    return {"defenses": DEFENSES, "selectors": SELECTORS, "judges": JUDGES, "task metrics": TASK_METRICS}
