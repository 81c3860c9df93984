"""``spard generate`` and ``spard eval``: responses, attack success, over-refusal and task accuracy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spard.cli.common import (
    EVAL_FLAGS,
    GENERATION_FLAGS,
    LLM_FLAGS,
    _add_flags,
    _overrides,
    add_overwrite_flag,
)
from spard.config import load_config


def cmd_generate(args: argparse.Namespace) -> int:
    from spard.config import from_dict
    from spard.data import FieldMap, load_examples
    from spard.evaluation.evaluate import saved_eval_system_prompt
    from spard.evaluation.generation import GenerationConfig, generate_responses
    from spard.io import check_output
    from spard.models import load_model
    from spard.models.loading import model_fingerprint

    values = {dest.split(".", 1)[1]: v for dest, v in _overrides(args, GENERATION_FLAGS).items()}
    values["do_sample"] = args.sample
    cfg = from_dict(GenerationConfig, values, "generation")
    check_output(args.output, inputs=(args.data,))
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if cfg.system_prompt is None:
        cfg.system_prompt, _ = saved_eval_system_prompt(args.model)
    examples = load_examples(args.data, FieldMap(prompt=args.prompt_field, target=None), limit=args.limit)
    model_id = model_fingerprint(args.model)
    model, tokenizer = load_model(args.model)
    rows = generate_responses(model, tokenizer, examples, cfg, output=args.output, model_id=model_id,
                              on_mismatch="restart" if args.overwrite else "error")
    print(f"wrote {len(rows)} responses to {args.output}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from spard.evaluation.evaluate import EvalConfig, run_evaluation

    overrides = _overrides(args, EVAL_FLAGS + GENERATION_FLAGS + LLM_FLAGS)
    if args.harmful_data:
        overrides["harmful"] = args.harmful_data
    if args.benign_data:
        overrides["benign"] = args.benign_data
    if args.judge:
        overrides["judges"] = args.judge
    if args.no_progress:
        overrides["progress"] = False
    if args.task_loglik:
        overrides["task_loglik"] = True
    if args.task_labels:
        overrides["task_labels"] = args.task_labels
    cfg = load_config(EvalConfig, args.config, overrides)
    from spard.io import check_output

    check_output(cfg.output_dir, inputs=(*cfg.harmful, *cfg.benign, cfg.task_data, cfg.model.name), directory=True)
    run_evaluation(cfg, on_mismatch="restart" if args.overwrite else "error")
    print(Path(cfg.output_dir, "summary.md").read_text())
    print(f"metrics in {Path(cfg.output_dir, 'metrics.json')}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register this module's commands on the ``spard`` subparsers."""
    p = sub.add_parser("generate", help="batched, resumable generation on a prompt file")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prompts (jsonl/json/csv/parquet)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--output", required=True, help="JSONL of id, prompt, response (resumed when present)")
    p.add_argument("--limit", type=int)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (seeded)")
    add_overwrite_flag(p)
    _add_flags(p, GENERATION_FLAGS)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("eval", help="ASR on harmful prompt sets and the task metric")
    p.add_argument("--config", help="YAML EvalConfig; flags override")
    p.add_argument("--harmful-data", nargs="*", help="harmful prompt files (one ASR each)")
    p.add_argument("--benign-data", nargs="*", help="benign prompt files: over-refusal on each (e.g. safety/benign/*.jsonl)")
    p.add_argument("--task-loglik", action="store_true",
                   help="also score the task without generating: the most likely label (one forward pass per prompt and label)")
    p.add_argument("--task-labels", nargs="+", help="a classification task's labels (default: the distinct references of --task-data)")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--no-progress", action="store_true")
    add_overwrite_flag(p)
    _add_flags(p, EVAL_FLAGS + GENERATION_FLAGS + LLM_FLAGS)
    p.set_defaults(func=cmd_eval)
