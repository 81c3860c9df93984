"""The ``spard`` command line. Only this package prints; the library logs.

One module per group of commands (``train``, ``evaluate``, ``judge``, ``bench``), each with its
``add_parsers``; ``common`` holds the flags that set config fields and what every command shares.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from spard.cli import bench, evaluate, judge, train
from spard.cli.common import (
    ALIGN_FLAGS,
    EVAL_FLAGS,
    GENERATION_FLAGS,
    LLM_FLAGS,
    TRAIN_FLAGS,
    _setup_logging,
)
from spard.config import ConfigError
from spard.registry import load_plugins


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spard", description="spard: keep a safety-aligned LLM safe while it learns a task (SPAG + RD-DPP, competing defenses, attacks, evaluation, benchmarks).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: its defenses, selectors, judges register themselves "
                             "(repeatable; also $SPARD_PLUGINS, comma-separated)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (train, evaluate, judge, bench):
        module.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["judge"] and argv[1:2] in (["fit"], ["validate"], ["sheet"], ["agreement"]):
        argv = [f"judge-{argv[1]}", *argv[2:]]
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        load_plugins(args.plugin)
        return func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, ValueError, OSError) as exc:
        if args.verbose:
            raise
        print(f"spard {args.command}: error: {_explain(exc)}", file=sys.stderr)
        return 2


def _flag_names() -> dict[str, str]:
    """Every flag that sets a config field, by the field's dotted name, for error messages."""
    out: dict[str, str] = {}
    for flags in (TRAIN_FLAGS, EVAL_FLAGS, GENERATION_FLAGS, LLM_FLAGS, ALIGN_FLAGS):
        for flag, dest, _, _ in flags:
            out.setdefault(dest, flag)
    return out


def _explain(exc: BaseException) -> str:
    """One line for the user: the message, the file for OS errors, the option that sets a named field."""
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    text = str(exc) or type(exc).__name__
    for dest, flag in sorted(_flag_names().items(), key=lambda kv: -len(kv[0])):
        if f".{dest}:" in text or text.startswith(f"{dest}:"):
            return f"{text} (option {flag})"
    return text



__all__ = ["build_parser", "load_plugins", "main"]
