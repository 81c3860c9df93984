"""``spard bench``, ``spard demo`` and ``spard list``: grids, the offline demo, what is registered."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _print_results(output_dir: str) -> None:
    results = Path(output_dir) / "results.md"
    if results.exists():
        print(results.read_text())
    pngs = sorted(Path(output_dir).glob("*.png"))
    if pngs:
        print("plots: " + ", ".join(str(p) for p in pngs))


def cmd_bench(args: argparse.Namespace) -> int:
    from spard.bench.config import parse_shard
    from spard.bench.runner import load_bench_config, run_bench
    from spard.io import check_output

    cfg = load_bench_config(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    check_output(cfg.output_dir, directory=True, inputs=(args.config,))
    shard = parse_shard(args.shard) if args.shard else None
    from spard.cli.common import _set_values

    options = {k.replace("-", "_"): v for k, v in _set_values(args.launcher_option or [], "--launcher-option").items()}
    if options and args.launcher == "inline":
        raise ValueError("--launcher-option needs --launcher local or slurm")
    rows = run_bench(cfg, progress=not args.no_progress, dry_run=args.dry_run, report_only=args.report_only,
                     only=args.only or (), shard=shard, launcher=args.launcher, launcher_options=options)
    if args.dry_run:
        todo = [r for r in rows if r.get("status") == "to do"]
        scope = " (of the runs --only/--shard select)" if args.only or shard else ""
        print(f"{len(rows) - len(todo)} runs finished, {len(todo)} still to do{scope}")
        for r in todo:
            print(f"  {r['run']}")
        return 0
    _print_results(cfg.output_dir)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from spard.bench.demo import demo_config
    from spard.bench.runner import run_bench
    from spard.bench.tables import START_LABEL

    started = time.perf_counter()
    cfg = demo_config(args.output_dir, model=args.model, steps=args.steps)
    run_bench(cfg, progress=not args.no_progress)
    rows = json.loads((Path(args.output_dir) / "results.json").read_text())  # the start model first, then the runs
    align = json.loads((Path(args.output_dir) / "align" / "alignment.json").read_text())
    print(f"\nAlignment of {align['base_model']}: refusal on held-out harmful prompts "
          f"{100 * align['before'].get('refusal', 0):.0f}% -> {100 * align['after'].get('refusal', 0):.0f}%, "
          f"over-refusal on benign prompts {100 * align['before'].get('over_refusal', 0):.0f}% -> "
          f"{100 * align['after'].get('over_refusal', 0):.0f}% (keyword judge)")
    print("\nAttack: toy fine-tuning set poisoned with compliance-shaped samples; SFT vs SPARD:\n")
    print("| defense | ASR (keyword) | task accuracy | answer NLL | task gain kept | s / update |\n|---|---|---|---|---|---|")

    def cell(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    for r in rows:
        label = "aligned model, before the attack" if r["label"] == START_LABEL else r["label"]
        print(f"| {label} | {cell(r.get('asr_mean[keyword]'), '.1%')} | {cell(r.get('task_accuracy'), '.1%')} "
              f"| {cell(r.get('answer_nll'), '.3f')} | {cell(r.get('task_gain_kept'), '.0%')} "
              f"| {cell(r.get('seconds_per_update'), '.2f')} |")
    print(f"\nfull results: {Path(args.output_dir) / 'results.md'}; plots: "
          + ", ".join(str(p) for p in sorted(Path(args.output_dir).glob('*.png'))))
    print(f"demo wall time: {time.perf_counter() - started:.0f}s")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from spard.registry import registries

    for kind, registry in registries().items():
        if args.kind and kind.split()[0] != args.kind:
            continue
        print(f"{kind}:")
        width = max((len(n) for n in registry.names()), default=0)
        for name, doc in registry.describe():
            print(f"  {name:<{width}}  {doc}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register this module's commands on the ``spard`` subparsers."""
    p = sub.add_parser("bench", help="run a grid of attacks x defenses x seeds (resumable) and write tables and plots")
    p.add_argument("config", help="benchmark YAML (see configs/)")
    p.add_argument("--output-dir", help="override the config's output_dir")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list the runs still to do and stop")
    mode.add_argument("--report-only", action="store_true",
                      help="train nothing; rewrite results.{csv,json,md} and the plots from the finished runs")
    p.add_argument("--only", action="append", metavar="GLOB",
                   help="run only the unfinished runs whose name matches (repeatable), e.g. 'lisa-*' or '*-s1-*'")
    p.add_argument("--shard", metavar="I/N",
                   help="run only shard I of N (by run key), to split one grid over N machines; copy the run "
                        "directories together and --report-only for the joint tables")
    p.add_argument("--launcher", choices=["inline", "local", "slurm"], default="inline",
                   help="inline (default): run here, one after another; slurm: one cluster job per unfinished run "
                        "(submitit, extra [cluster]); local: the same jobs as local processes")
    p.add_argument("--launcher-option", action="append", metavar="KEY=VALUE",
                   help="submitit executor parameter, e.g. slurm_partition=gpu, gpus_per_node=1, timeout_min=120 (repeatable)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="align, attack with sft and spard, evaluate, print the table (offline)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning updates per defense")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list", help="what is registered: defenses, selectors, judges, task metrics (one line of doc each)")
    p.add_argument("kind", nargs="?", choices=["defenses", "selectors", "judges", "task"], help="only this registry")
    p.set_defaults(func=cmd_list)
