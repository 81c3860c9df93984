"""``spard train``, ``spard select`` and ``spard align``: making models."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from spard.cli.common import (
    ALIGN_FLAGS,
    TRAIN_FLAGS,
    _add_flags,
    _overrides,
    _set_values,
)
from spard.config import load_config


def cmd_train(args: argparse.Namespace) -> int:
    from spard.training.config import TrainConfig
    from spard.training.run import run_training

    overrides = {**_set_values(args.set_values), **_overrides(args, TRAIN_FLAGS)}
    if args.full_finetune:
        overrides["lora.enabled"] = False
    if args.merge:
        overrides["merge"] = True
    if args.no_progress:
        overrides["progress"] = False
    cfg = load_config(TrainConfig, args.config, overrides)
    from spard.io import check_output

    if not args.resume:
        check_output(cfg.output_dir, directory=True)
    if args.resume and args.overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces one: pass one of them")
    metrics = run_training(cfg, overwrite=args.overwrite, resume=args.resume)
    t = metrics["training"]
    print(f"defense={metrics['defense']} updates={metrics['updates']} "
          f"s/update={metrics['seconds_per_update'] or 0:.2f} peak_mem={metrics['peak_memory_mb']:.0f}MiB")
    if "projections_fired" in t:
        print(f"SPAG: tau={t['tau']:.4f} fired {t['projections_fired']}/{t['updates']} updates; "
              f"safe loss {t['safe_loss_first']:.4f} -> {t['safe_loss_last']:.4f}")
    print(f"artefacts in {cfg.output_dir}: config.yaml, model/, train_log.jsonl, metrics.json"
          + (", safe_set.jsonl" if metrics["selection"] else ""))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    import resource
    from dataclasses import replace

    from spard.config import check_ranges
    from spard.data import (
        DataConfig,
        FieldMap,
        load_examples,
        load_poisoned_task,
        origin_counts,
        poison_counts,
        write_jsonl,
    )
    from spard.io import check_output
    from spard.selection.safe_set import make_encoder, select_safe_examples
    from spard.selection.selectors import SelectionConfig

    check_output(args.output, inputs=(args.pool, args.reference, args.harmful_data))
    cfg = SelectionConfig(
        method=args.method, ratio=args.ratio, min_k=args.min_k, k=args.k, beta=args.beta, eps=args.eps,
        embedding_model=args.embedding_model, seed=args.seed,
    )
    check_ranges(cfg, "selection")
    poison_counts(0, args.harmful_ratio, args.harmful_ratio_of)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    started = time.perf_counter()
    data = DataConfig(task=args.reference, task_limit=args.limit, harmful=args.harmful_data,
                      harmful_ratio=args.harmful_ratio, harmful_ratio_of=args.harmful_ratio_of)
    pool = load_examples(args.pool, FieldMap(target=args.pool_target_field), origin="safety")
    # the very set `spard train --seed S` trains on (same mixing function, same seed)
    reference = load_poisoned_task(replace(data, task_target_field=None), args.seed)
    from spard.selection.embeddings import load_embeddings

    pool_emb = load_embeddings(args.pool_embeddings, len(pool), args.pool) if args.pool_embeddings else None
    ref_emb = None
    if args.reference_embeddings:
        if args.harmful_data:
            raise ValueError("--reference-embeddings covers the reference file only: embed the mixed set yourself and "
                             "pass it as --reference, or leave out --harmful-data")
        ref_emb = load_embeddings(args.reference_embeddings, len(reference), args.reference)
    encoder = None
    if cfg.method != "random" and (pool_emb is None or ref_emb is None):
        base_model = base_tok = None
        if args.embedding_model == "base":
            from spard.models import load_model

            base_model, base_tok = load_model(args.model)
        encoder = make_encoder(args.embedding_model, base_model=base_model, base_tokenizer=base_tok, base_key=args.model)
    picked, selection = select_safe_examples(pool, reference, cfg, encoder=encoder, cache_dir=args.embedding_cache,
                                             pool_embeddings=pool_emb, reference_embeddings=ref_emb)
    write_jsonl(args.output, (p.to_row() for p in picked))
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = origin_counts(reference)
    harmful = sum(v for k, v in counts.items() if k.startswith("harmful"))
    print(f"reference: {counts.get('task', 0)} task + {harmful} harmful rows "
          f"(p = {args.harmful_ratio:g} of the {args.harmful_ratio_of}, seed {args.seed})")
    source = "precomputed" if pool_emb is not None and ref_emb is not None else args.embedding_model
    print(f"selected {len(picked)} of {len(pool)} pool rows for {len(reference)} reference prompts "
          f"(k = {cfg.budget(len(reference))}, method {cfg.method}, embeddings {source})")
    if selection.notes.get("rank_exhausted_at") is not None:
        print(f"note: the kernel's rank ran out after {selection.notes['rank_exhausted_at']} picks; the rest were decided by eps")
    print(f"wrote {args.output}; wall {wall:.1f}s, peak memory {peak:.0f} MiB")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from spard.training.align import AlignConfig, run_alignment

    overrides = _overrides(args, ALIGN_FLAGS)
    if args.check_harmful:
        overrides["check_harmful"] = args.check_harmful
    if args.check_benign:
        overrides["check_benign"] = args.check_benign
    cfg = load_config(AlignConfig, args.config, overrides)
    from spard.io import check_output

    check_output(cfg.output_dir, directory=True, inputs=(cfg.refusals, cfg.benign, *cfg.check_harmful, *cfg.check_benign))
    report = run_alignment(cfg)
    from spard.evaluation.stats import format_rate

    print(f"alignment mix: {', '.join(f'{k} {v}' for k, v in report['mix'].items())}")
    print(f"refused, before -> after (keyword refusal rule, first {cfg.check_limit} prompts per set; 95% Wilson intervals):")
    before, after = report["before"].get("intervals", {}), report["after"].get("intervals", {})
    benign = {Path(p).stem for p in cfg.check_benign}
    for name in after or before:
        kind = "benign: over-refusal" if name in benign else "harmful: refusal"
        print(f"  {name:>16} ({kind}): {format_rate(before[name]) if name in before else 'n/a'} -> "
              f"{format_rate(after[name]) if name in after else 'n/a'}")
    print(f"aligned model: {report['aligned_model']}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register this module's commands on the ``spard`` subparsers."""
    from spard.training.config import TrainingSettings

    p = sub.add_parser("train", help="fine-tune a model with a defense (sft, spard, ...)")
    p.add_argument("--config", help="YAML config; flags override its fields")
    _add_flags(p, TRAIN_FLAGS)
    p.add_argument("--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field by its dotted name, value as YAML (lisa.rho=0.1, a plugin's section.field=...); "
                        "repeatable; the named flags win")
    p.add_argument("--full-finetune", action="store_true", help="train all weights instead of LoRA")
    p.add_argument("--merge", action="store_true", help="save the merged model instead of the adapter")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run in --output-dir (only once the new one has finished)")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --output-dir from its last checkpoint (see --save-steps)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("select", help="pick the safe set from a pool (RD-DPP or a baseline)")
    p.add_argument("--pool", required=True, help="safety pool (prompt, safe)")
    p.add_argument("--pool-target-field", default="safe")
    p.add_argument("--reference", required=True, help="fine-tuning data whose prompts the safe set should cover")
    p.add_argument("--harmful-data", help="attack file mixed into the reference, as the provider would see it")
    p.add_argument("--harmful-ratio", type=float, default=0.1)
    p.add_argument("--harmful-ratio-of", choices=("task", "total"), default="task",
                   help="task: floor(p x |reference|) harmful rows added (SPARD's convention); total: p is the "
                        "harmful share of the final set (Lisa's)")
    p.add_argument("--limit", type=int, help="use the first N reference rows (as spard train --limit)")
    p.add_argument("--method", default="rd-dpp", help="rd-dpp, random, relevance or diversity")
    p.add_argument("--ratio", type=float, default=0.03, help="k = floor(ratio * |reference|)")
    p.add_argument("--k", type=int, default=None, help="fixed budget (overrides --ratio)")
    p.add_argument("--min-k", type=int, default=0)
    p.add_argument("--beta", type=float, default=4.0)
    p.add_argument("--eps", type=float, default=1e-6)
    p.add_argument("--embedding-model", default="minilm", help="minilm, base or a sentence-transformers path")
    p.add_argument("--model", default="smollm2-135m-instruct", help="base LM for --embedding-model base")
    p.add_argument("--embedding-cache", default="default", help="directory caching embeddings (default $SPARD_CACHE/embeddings)")
    p.add_argument("--pool-embeddings", help="precomputed unit embeddings of the pool (.npy, one row per pool record, in order)")
    p.add_argument("--reference-embeddings", help="precomputed unit embeddings of the reference rows (.npy, after --limit)")
    p.add_argument("--seed", type=int, default=TrainingSettings.seed,
                   help="the training seed (default as spard train's): it mixes the poisoned reference set and "
                        "seeds the random selector, exactly as spard train --seed does")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("align", help="safety-align a model (refusals + benign data) and report refusal before/after")
    p.add_argument("--config", help="YAML AlignConfig; flags override")
    p.add_argument("--check-harmful", nargs="*", help="held-out harmful prompt files for the refusal check")
    p.add_argument("--check-benign", nargs="*", help="benign prompt files for the over-refusal check (never trained on)")
    _add_flags(p, ALIGN_FLAGS)
    p.set_defaults(func=cmd_align)
