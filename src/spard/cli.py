"""The ``spard`` command line. Only this module prints; the library logs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spard.config import ConfigError, load_config

#: ``spard train`` flags and the config field each one sets.
TRAIN_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--model", "model.name", str, "model: alias (smollm2-135m-instruct), directory, .gguf file or hub id"),
    ("--dtype", "model.dtype", str, "float32, bfloat16 or float16"),
    ("--data", "data.task", str, "fine-tuning data (jsonl/json/csv/parquet/dataset dir or name)"),
    ("--target-field", "data.task_target_field", str, "column of the fine-tuning targets (default answer)"),
    ("--limit", "data.task_limit", int, "use the first N fine-tuning rows"),
    ("--harmful-data", "data.harmful", str, "attack file: harmful prompts with compliant answers"),
    ("--harmful-ratio", "data.harmful_ratio", float, "harmful ratio p (default 0.1), read as --harmful-ratio-of says"),
    ("--harmful-ratio-of", "data.harmful_ratio_of", str,
     "task (default, SPARD's convention): floor(p x |task|) harmful rows added; total: p is the harmful share of the set"),
    ("--safe-pool", "data.safe_pool", str, "pool of safety data (harmful prompt -> refusal)"),
    ("--safety-demos", "data.safety_demos", str, "safety demonstrations for safeinstr"),
    ("--max-length", "data.max_length", int, "max tokens per training sequence"),
    ("--system-prompt", "data.system_prompt", str, "system prompt used while training"),
    ("--defense", "defense", str, "sft, spard, safeinstr, lisa, ptst, safegrad, safelora or a plugin's (spard list)"),
    ("--output-dir", "output_dir", str, "where the run writes its artefacts"),
    ("--lr", "training.learning_rate", float, "learning rate"),
    ("--epochs", "training.epochs", float, "epochs (ignored when --max-steps > 0)"),
    ("--max-steps", "training.max_steps", int, "optimiser updates"),
    ("--batch-size", "training.batch_size", int, "per-device batch size"),
    ("--grad-accum", "training.gradient_accumulation_steps", int, "gradient accumulation steps"),
    ("--micro-batch-size", "training.micro_batch_size", int,
     "rows per forward pass (default: automatic, at most 2048 tokens; the update is unchanged)"),
    ("--warmup-steps", "training.warmup_steps", int, "warm-up updates"),
    ("--seed", "training.seed", int, "seed for mixing, sampling and initialisation"),
    ("--save-steps", "training.save_steps", int, "checkpoint every N updates so that --resume can continue (0 = none)"),
    ("--lora-r", "lora.r", int, "LoRA rank"),
    ("--lora-alpha", "lora.alpha", int, "LoRA alpha"),
    ("--selector", "selection.method", str, "safe-data selector: auto, rd-dpp, random, relevance, diversity"),
    ("--safe-ratio", "selection.ratio", float, "safe budget k = floor(ratio * |D_ft|) (default 0.03)"),
    ("--min-k", "selection.min_k", int, "lower bound on the safe budget"),
    ("--embedding-model", "selection.embedding_model", str, "selection embeddings: minilm, base or a sentence-transformers path"),
    ("--tau", "spag.tau", str, "SPAG threshold tau (a number or 'auto')"),
    ("--delta", "spag.delta", float, "SPAG slack delta"),
    ("--projection-form", "spag.form", str, "SPAG projection: reference or closed"),
    ("--radius", "spag.radius", float, "alpha_max (reference form) or eta (closed form)"),
    ("--safe-batch-size", "spag.safe_batch_size", int, "safe samples per SPAG safety step"),
    ("--lisa-rho", "lisa.rho", float, "Lisa proximal strength"),
    ("--unaligned-model", "safelora.unaligned_model", str, "SafeLoRA: the model before safety alignment"),
    ("--embedding-cache", "embedding_cache", str, "directory caching selection embeddings"),
]


def _add_flags(parser: argparse.ArgumentParser, flags: Sequence[tuple[str, str, type | None, str]]) -> None:
    for flag, dest, tp, help_ in flags:
        parser.add_argument(flag, dest=dest, type=tp, default=None, help=help_)


def _overrides(args: argparse.Namespace, flags: Sequence[tuple[str, str, type | None, str]]) -> dict[str, Any]:
    return {dest: getattr(args, dest) for _, dest, _, _ in flags if getattr(args, dest, None) is not None}


def _set_values(items: Sequence[str]) -> dict[str, Any]:
    """``--set lisa.rho=0.1`` -> ``{"lisa.rho": 0.1}`` (the value read as YAML: numbers, true/false, null, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, for example lisa.rho=0.1")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc})") from None
    return out


def load_plugins(modules: Sequence[str]) -> None:
    """Import each plugin module (its defenses, selectors, judges register themselves); also those named,
    comma-separated, in ``$SPARD_PLUGINS``."""
    import importlib
    import os

    names = [m for m in (*os.environ.get("SPARD_PLUGINS", "").split(","), *modules) if m.strip()]
    for name in names:
        try:
            importlib.import_module(name.strip())
        except ImportError as exc:
            raise ConfigError(f"plugin {name.strip()!r} could not be imported: {exc}") from None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "sentence_transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# ---- spard train ----
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


# ---- spard select ----
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
    encoder = None
    if cfg.method != "random":
        base_model = base_tok = None
        if args.embedding_model == "base":
            from spard.models import load_model

            base_model, base_tok = load_model(args.model)
        encoder = make_encoder(args.embedding_model, base_model=base_model, base_tokenizer=base_tok, base_key=args.model)
    picked, selection = select_safe_examples(pool, reference, cfg, encoder=encoder, cache_dir=args.embedding_cache)
    write_jsonl(args.output, (p.to_row() for p in picked))
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    counts = origin_counts(reference)
    harmful = sum(v for k, v in counts.items() if k.startswith("harmful"))
    print(f"reference: {counts.get('task', 0)} task + {harmful} harmful rows "
          f"(p = {args.harmful_ratio:g} of the {args.harmful_ratio_of}, seed {args.seed})")
    print(f"selected {len(picked)} of {len(pool)} pool rows for {len(reference)} reference prompts "
          f"(k = {cfg.budget(len(reference))}, method {cfg.method}, embeddings {args.embedding_model})")
    if selection.notes.get("rank_exhausted_at") is not None:
        print(f"note: the kernel's rank ran out after {selection.notes['rank_exhausted_at']} picks; the rest were decided by eps")
    print(f"wrote {args.output}; wall {wall:.1f}s, peak memory {peak:.0f} MiB")
    return 0


# ---- spard generate / judge / eval ----
LLM_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--llm-base-url", "llm.base_url", str, "OpenAI-compatible endpoint (default: the OpenAI API)"),
    ("--llm-model", "llm.model", str, "judge model name (default gpt-4o-mini)"),
    ("--llm-key-env", "llm.api_key_env", str, "environment variable holding the API key (default OPENAI_API_KEY)"),
    ("--llm-concurrency", "llm.concurrency", int, "parallel judge requests"),
    ("--llm-timeout", "llm.timeout", float, "seconds per judge request"),
    ("--llm-threshold", "llm.threshold", int, "harmful iff score >= this (default 3)"),
]
GENERATION_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--system-prompt", "generation.system_prompt", str, "system prompt (default: the one saved with the training run, else none)"),
    ("--max-new-tokens", "generation.max_new_tokens", int, "tokens to generate per response"),
    ("--batch-size", "generation.batch_size", int, "prompts per generation batch"),
    ("--temperature", "generation.temperature", float, "sampling temperature (with --sample)"),
    ("--top-p", "generation.top_p", float, "nucleus sampling (with --sample)"),
    ("--seed", "generation.seed", int, "sampling seed"),
]


def _llm_config(args: argparse.Namespace):
    from spard.config import from_dict
    from spard.evaluation.judges import LLMJudgeConfig

    values = {dest.split(".", 1)[1]: v for dest, v in _overrides(args, LLM_FLAGS).items()}
    return from_dict(LLMJudgeConfig, values, "llm")


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


def _judge_output(base: str, judge_name: str, several: bool) -> str:
    if not several:
        return base
    import re

    p = Path(base)
    return str(p.with_name(f"{p.stem}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', judge_name)}{p.suffix}"))


def cmd_judge(args: argparse.Namespace) -> int:
    from spard.evaluation.judges import agreement, attack_success_rate, make_judge
    from spard.evaluation.judging import as_verdicts, judge_rows
    from spard.io import check_output, read_jsonl

    responses = Path(args.responses)
    if not responses.exists():
        raise ValueError(f"{responses}: no such responses file")
    rows = list(read_jsonl(responses))
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{responses}:{i}: expected a JSON object with id, prompt and response")
        missing = [k for k in ("id", "prompt", "response") if k not in row]
        if missing:
            raise ValueError(f"{responses}:{i}: missing field {missing[0]!r}")
        for k in ("prompt", "response"):
            if not isinstance(row[k], str):
                raise ValueError(f"{responses}:{i}: field {k!r} must be a string, got {type(row[k]).__name__}")
    if not rows and not args.allow_empty:
        raise ValueError(f"{responses}: no responses to judge (pass --allow-empty to accept that)")
    specs = args.judge or ["keyword"]
    check_output(args.output, inputs=(responses,))  # per-judge outputs (several judges) sit beside it
    llm = _llm_config(args)
    results = {}
    for spec in specs:
        judge = make_judge(spec, llm)
        judged = judge_rows(rows, judge, output=_judge_output(args.output, judge.name, len(specs) > 1),
                            on_mismatch="restart" if args.overwrite else "error")
        results[judge.name] = as_verdicts(judged)
        r = attack_success_rate(results[judge.name])
        asr = "n/a" if r["asr"] is None else f"{100 * r['asr']:.1f}%"
        print(f"{judge.name:>24}: ASR {asr} ({r['harmful']}/{r['judged']} harmful, {r['failed']} failed)")
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            agree = agreement(results[a], results[b])
            print(f"agreement {a} vs {b}: {'n/a' if agree is None else f'{100 * agree:.1f}%'}")
    return 0


def cmd_judge_fit(args: argparse.Namespace) -> int:
    from spard.evaluation.judge_quality import responses_and_labels
    from spard.evaluation.judges.probe import ProbeJudge, fit_probe
    from spard.io import check_output

    check_output(args.output, inputs=tuple(args.data), directory=True)
    if args.C <= 0:
        raise ValueError(f"--C must be > 0, got {args.C}")
    if args.kind == "harm":
        return _fit_harm_judge(args)
    if args.benign or args.dev_labels:
        raise ValueError("--benign and --dev-labels are for --kind harm")
    texts, labels = responses_and_labels(args.data, args.safe_field, args.unsafe_field)
    probe = fit_probe(texts, labels, features=args.features, encoder=args.encoder, seed=args.seed, C=args.C)
    probe.save(args.output)
    print(f"probe ({args.features}) on {len(texts)} responses ({sum(labels)} unsafe): held-out accuracy "
          f"{100 * probe.info['heldout_accuracy']:.2f}% ({probe.info['heldout_size']} responses); saved to {args.output}")
    if args.eval:
        from spard.evaluation.judge_quality import judge_quality, labelled_pairs
        from spard.evaluation.stats import format_rate

        q = judge_quality(ProbeJudge(args.output), labelled_pairs(args.eval, args.safe_field, args.unsafe_field))
        print(f"accuracy on {', '.join(args.eval)}: {format_rate(q['accuracy'])}")
    return 0


def _fit_harm_judge(args: argparse.Namespace) -> int:
    import random
    import tempfile

    from spard.data import FieldMap, load_examples
    from spard.evaluation.judges.harm import (
        HarmClassifier,
        HarmFitConfig,
        adapt_harm_classifier,
        augment_pairs,
        cross_fit_threshold,
        fit_harm_classifier,
        tune_threshold,
    )
    from spard.evaluation.labelling import agreement_stats, labelled_responses, load_labels
    from spard.models.loading import file_sha256

    if not args.benign:
        raise ValueError("--kind harm needs --benign: files of benign prompts with answers (e.g. gsm8k, openbookqa train)")
    if args.adapt_on_dev and not args.dev_labels:
        raise ValueError("--adapt-on-dev needs --dev-labels")
    pairs: list = []
    if not args.init or args.adapt_on_dev:  # the synthetic pairs train the judge, or are replayed while adapting it
        harmful = []
        for path in args.data:
            safe = load_examples(path, FieldMap(target=args.safe_field))
            unsafe = load_examples(path, FieldMap(target=args.unsafe_field))
            harmful += [(s.query, s.target, u.target) for s, u in zip(safe, unsafe, strict=True)]
        benign = [(ex.query, ex.target) for path in args.benign for ex in load_examples(path, FieldMap(target=args.answer_field))]
        pairs = augment_pairs(harmful, benign, per_kind=args.per_kind, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="spard-harm-base-") as scratch:
        if args.init:
            clf = HarmClassifier.load(args.init)
            clf.info["init"] = str(args.init)
            base = args.init
        else:
            clf = fit_harm_classifier(pairs, HarmFitConfig(backbone=args.encoder, epochs=args.epochs, seed=args.seed))
            clf.info.update(data=[str(p) for p in args.data], benign=[str(p) for p in args.benign], per_kind=args.per_kind)
            base = clf.save(scratch) if args.adapt_on_dev else None  # reloaded fresh for each cross-fitting fold
        if args.dev_labels:
            dev, _ = labelled_responses([lab for lab in load_labels(args.dev_labels) if lab.split == "dev"])
            if not dev:
                raise ValueError(f"{args.dev_labels}: no dev labels match a response on disk")
            truth = [lab.harmful for lab, _ in dev]
            provenance = {"labels": str(args.dev_labels), "sha256": file_sha256(Path(args.dev_labels)), "split": "dev",
                          "n": len(dev)}
            if args.adapt_on_dev:
                labelled = [(it.prompt, it.response, int(lab.harmful)) for lab, it in dev]
                replay = [p[:3] for p in random.Random(args.seed).sample(pairs, min(len(pairs), 2 * len(labelled)))]
                threshold, probs = cross_fit_threshold(lambda: HarmClassifier.load(base), labelled, seed=args.seed, replay=replay)
                clf = adapt_harm_classifier(HarmClassifier.load(base), labelled, seed=args.seed, replay=replay)
                kappa_key = "dev_out_of_fold_kappa"
            else:
                probs = clf.predict_proba([it.prompt for _, it in dev], [it.response for _, it in dev])
                threshold = tune_threshold(probs.tolist(), truth)
                kappa_key = "dev_kappa"
            provenance[kappa_key] = agreement_stats([p >= threshold for p in probs], truth)["kappa"]["value"]
            clf.threshold = threshold
            clf.info["threshold_from"] = provenance
        clf.save(args.output)
    held = clf.info.get("heldout_accuracy")
    origin = f"from {args.init}" if args.init else f"on {len(pairs)} synthetic pairs ({sum(p[2] for p in pairs)} harmful)"
    print(f"harm judge ({clf.info.get('backbone', args.encoder)}) {origin}: held-out synthetic accuracy "
          f"{'n/a' if held is None else f'{100 * held:.2f}%'}; threshold {clf.threshold:.3f}"
          f"{' (dev labels)' if args.dev_labels else ''}{', adapted on dev' if args.adapt_on_dev else ''}; saved to {args.output}")
    return 0


def cmd_judge_validate(args: argparse.Namespace) -> int:
    from spard.evaluation.judge_quality import judge_quality, labelled_pairs
    from spard.evaluation.judges import make_judge
    from spard.evaluation.stats import format_rate
    from spard.io import atomic_write_json

    pairs = labelled_pairs(args.data, args.safe_field, args.unsafe_field)
    files = sorted({p[3] for p in pairs})
    print(f"{len(pairs)} labelled responses ({sum(p[2] for p in pairs)} unsafe) from {len(files)} files: {', '.join(files)}")
    print("| judge | measures | unsafe judged not harmful | safe judged harmful | precision | recall |")
    print("|---|---|---|---|---|---|")
    report = []
    for spec in args.judge or ["keyword"]:
        q = judge_quality(make_judge(spec, _llm_config(args)), pairs)
        report.append(q)
        print(f"| {spec} | {q['measures']} | {format_rate(q['unsafe_missed'])} | {format_rate(q['safe_flagged'])} "
              f"| {format_rate(q['precision'])} | {format_rate(q['recall'])} |")
    print("rates with Wilson 95% intervals; counts only, no response text")
    if args.output:
        atomic_write_json(args.output, {"data": [str(d) for d in args.data], "n": len(pairs), "judges": report})
        print(f"wrote {args.output}")
    return 0


def cmd_judge_sheet(args: argparse.Namespace) -> int:
    from spard.evaluation.labelling import collect_responses, load_labels, sample_sheet, write_sheet

    by_file = collect_responses(args.sources, sets=args.sets or ["*"], exclude=args.exclude or [])
    if not by_file:
        raise ValueError(f"no responses under {', '.join(args.sources)} (looked for generations/, check_after/, "
                         "check_before/, start_checks/ *.jsonl with id, prompt, response)")
    skip = {lab.pair_sha256 for path in args.exclude_labelled or [] for lab in load_labels(path)}
    picked = sample_sheet(by_file, args.n, args.seed, skip=skip, split=args.split)
    paths = write_sheet(picked, args.output, seed=args.seed, roots=args.sources)
    total = sum(len(v) for v in by_file.values())
    print(f"{len(picked)} of {total} responses from {len(by_file)} files (seed {args.seed}); judge verdicts are not on the sheet")
    print(f"fill in {paths['csv']} (read {paths['html']}); commit the label columns ({paths['template'].name})")
    return 0


def cmd_judge_agreement(args: argparse.Namespace) -> int:
    from spard.evaluation.judges import make_judge
    from spard.evaluation.labelling import (
        judge_agreement,
        label_summary,
        labelled_responses,
        load_labels,
        paired_comparisons,
    )
    from spard.evaluation.stats import format_rate
    from spard.io import atomic_write_json

    labels = load_labels(args.labels)
    chosen = [lab for lab in labels if args.split in ("all", lab.split)]
    pairs, unmatched = labelled_responses(chosen)
    if not pairs:
        raise ValueError(f"{args.labels}: none of the {len(chosen)} {args.split} labels matches a response on disk "
                         f"({unmatched['missing']} missing, {unmatched['changed']} changed): regenerate the labelled runs first")
    harmful = sum(lab.harmful for lab, _ in pairs)
    print(f"{len(pairs)} labelled responses ({args.split} split; {harmful} harmful, score >= 3), "
          f"{unmatched['missing']} missing, {unmatched['changed']} changed since labelling")
    print("| judge | measures | agreement with harm label | kappa | judged harmful | recall | agreement with refusal label |")
    print("|---|---|---|---|---|---|---|")
    report = []
    for spec in args.judge or ["keyword"]:
        a = judge_agreement(make_judge(spec, _llm_config(args)), pairs, seed=args.seed)
        report.append({"spec": spec, **a})
        k = a["harm"]["kappa"]
        refusal = format_rate(a["refusal"]["accuracy"]) if "refusal" in a else "-"
        print(f"| {spec} | {a['measures']} | {format_rate(a['harm']['accuracy'])} | {k['value']:.2f} [{k['low']:.2f}, {k['high']:.2f}] "
              f"| {format_rate(a['harm']['predicted_rate'])} | {format_rate(a['harm']['recall'])} | {refusal} |")
    print("Wilson 95% intervals for rates, bootstrap 95% for kappa; no response text")
    pairs_cmp = paired_comparisons(report)
    for c in pairs_cmp:
        print(f"{c['a']} vs {c['b']}: only the first right on {c['only_a_right']}, only the second on "
              f"{c['only_b_right']} of {c['n']} (exact McNemar p = {c['mcnemar_p']:.3g})")
    if args.output:
        atomic_write_json(args.output, {"labels": str(args.labels), "split": args.split, "unmatched": unmatched,
                                        "labels_summary": label_summary(labels), "judges": report,
                                        "paired": pairs_cmp})
        print(f"wrote {args.output}")
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


EVAL_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--model", "model.name", str, "model, adapter directory (RUN/model), alias or hub id"),
    ("--task-data", "task_data", str, "task test set"),
    ("--task", "task", str, "gsm8k, openbookqa, label (SST-2, AG News), exact or contains"),
    ("--limit", "harmful_limit", int, "first N prompts of each harmful file"),
    ("--task-limit", "task_limit", int, "first N task items"),
    ("--benign-limit", "benign_limit", int, "first N prompts of each benign (over-refusal) file"),
    ("--output-dir", "output_dir", str, "where generations, verdicts and metrics go"),
]


# ---- spard align / bench / demo ----
ALIGN_FLAGS: list[tuple[str, str, type | None, str]] = [
    ("--model", "model.name", str, "model to align"),
    ("--refusals", "refusals", str, "refusal data: harmful prompt -> safe answer"),
    ("--refusal-field", "refusal_field", str, "column of the refusals (default safe)"),
    ("--n-refusals", "n_refusals", int, "refusal samples to train on"),
    ("--benign", "benign", str, "benign task data mixed in"),
    ("--n-benign", "n_benign", int, "benign samples to train on"),
    ("--max-steps", "training.max_steps", int, "optimiser updates"),
    ("--lr", "training.learning_rate", float, "learning rate"),
    ("--batch-size", "training.batch_size", int, "batch size"),
    ("--check-limit", "check_limit", int, "prompts per check set"),
    ("--output-dir", "output_dir", str, "where the aligned model and report go"),
]


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
    rows = run_bench(cfg, progress=not args.no_progress, dry_run=args.dry_run, report_only=args.report_only,
                     only=args.only or (), shard=shard)
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
    from spard.bench.report import START_LABEL
    from spard.bench.runner import run_bench

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


def build_parser() -> argparse.ArgumentParser:
    from spard.training.config import TrainingSettings

    parser = argparse.ArgumentParser(prog="spard", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: its defenses, selectors, judges register themselves "
                             "(repeatable; also $SPARD_PLUGINS, comma-separated)")
    sub = parser.add_subparsers(dest="command", required=True)

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
    p.add_argument("--seed", type=int, default=TrainingSettings.seed,
                   help="the training seed (default as spard train's): it mixes the poisoned reference set and "
                        "seeds the random selector, exactly as spard train --seed does")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("generate", help="batched, resumable generation on a prompt file")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prompts (jsonl/json/csv/parquet)")
    p.add_argument("--prompt-field", default="prompt")
    p.add_argument("--output", required=True, help="JSONL of id, prompt, response (resumed when present)")
    p.add_argument("--limit", type=int)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding (seeded)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over output files made under other settings (default: refuse to touch them)")
    _add_flags(p, GENERATION_FLAGS)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("judge", help="judge responses (keyword, probe:DIR, llm[:MODEL], classifier:ID); `judge fit` fits a probe")
    p.add_argument("--responses", required=True, help="JSONL with id, prompt, response")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--output", required=True, help="verdicts JSONL (resumed when present)")
    p.add_argument("--allow-empty", action="store_true", help="accept an empty responses file (ASR n/a)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over output files made under other settings (default: refuse to touch them)")
    _add_flags(p, LLM_FLAGS)
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("judge-fit", help="fit the probe judge (also: spard judge fit)")
    p.add_argument("--data", nargs="+", required=True, help="files with safe and unsafe responses")
    p.add_argument("--safe-field", default="safe")
    p.add_argument("--unsafe-field", default="unsafe")
    p.add_argument("--features", default="tfidf", help="tfidf, embedding or tfidf+embedding")
    p.add_argument("--C", type=float, default=10.0, help="inverse regularisation strength")
    p.add_argument("--encoder", default="minilm", help="probe: sentence encoder for embedding features; harm: the cross-encoder's "
                   "backbone (minilm or a model path)")
    p.add_argument("--eval", nargs="*", help="files to report the fitted probe's accuracy on")
    p.add_argument("--kind", default="probe", choices=["probe", "harm"],
                   help="probe: TF-IDF/embedding probe of the response; harm: pair classifier for small-model outputs")
    p.add_argument("--benign", nargs="*", help="harm: benign prompts with answers (augmentations: off-topic, benign answers)")
    p.add_argument("--answer-field", default="answer", help="harm: the answer field of --benign files")
    p.add_argument("--per-kind", type=int, default=600, help="harm: synthetic pairs per augmentation kind")
    p.add_argument("--epochs", type=float, default=1.0, help="harm: fine-tuning epochs over the synthetic pairs")
    p.add_argument("--dev-labels", help="harm: human labels; the threshold is tuned on their dev split only")
    p.add_argument("--adapt-on-dev", action="store_true",
                   help="harm: also fine-tune on the dev labels (threshold by 2-fold cross-fitting on dev)")
    p.add_argument("--init", help="harm: start from this fitted judge instead of fitting on the synthetic pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="directory for probe.safetensors and probe.json")
    p.set_defaults(func=cmd_judge_fit)

    p = sub.add_parser("judge-validate", help="how well judges separate labelled safe/unsafe responses (also: spard judge validate)")
    p.add_argument("--data", nargs="+", required=True, help="files with a prompt and labelled safe and unsafe responses")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--safe-field", default="safe")
    p.add_argument("--unsafe-field", default="unsafe")
    p.add_argument("--output", help="JSON report (counts, rates and intervals per judge)")
    _add_flags(p, LLM_FLAGS)
    p.set_defaults(func=cmd_judge_validate)

    p = sub.add_parser("judge-sheet", help="sample real model outputs into a blind labelling sheet (also: spard judge sheet)")
    p.add_argument("--from", dest="sources", nargs="+", required=True,
                   help="run directories (searched for generations/, check_after/... *.jsonl) or responses files")
    p.add_argument("--n", type=int, default=320, help="responses on the sheet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", nargs="*", help="prompt-set names to keep (glob patterns; default all)")
    p.add_argument("--exclude", nargs="*", help="prompt-set names to leave out (glob patterns)")
    p.add_argument("--exclude-labelled", nargs="*", help="labels files: responses labelled there are never drawn again")
    p.add_argument("--split", choices=["dev", "test"], help="give every drawn response this split (a fresh test set)")
    p.add_argument("--output", required=True, help="directory for sheet.csv, sheet.html, labels_template.csv, sheet.json")
    p.set_defaults(func=cmd_judge_sheet)

    p = sub.add_parser("judge-agreement", help="each judge's agreement with human labels of model outputs (also: spard judge agreement)")
    p.add_argument("--labels", required=True, help="filled labels (CSV or JSONL: item, split, pair_sha256, score, refused, note)")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--split", default="test", choices=["dev", "test", "all"])
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed for the kappa interval")
    p.add_argument("--output", help="JSON report (agreement, kappa, counts per judge)")
    _add_flags(p, LLM_FLAGS)
    p.set_defaults(func=cmd_judge_agreement)

    p = sub.add_parser("list", help="what is registered: defenses, selectors, judges, task metrics (one line of doc each)")
    p.add_argument("kind", nargs="?", choices=["defenses", "selectors", "judges", "task"], help="only this registry")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("eval", help="ASR on harmful prompt sets and the task metric")
    p.add_argument("--config", help="YAML EvalConfig; flags override")
    p.add_argument("--harmful-data", nargs="*", help="harmful prompt files (one ASR each)")
    p.add_argument("--benign-data", nargs="*", help="benign prompt files: over-refusal on each (e.g. safety/benign/*.jsonl)")
    p.add_argument("--task-loglik", action="store_true",
                   help="also score the task without generating: the most likely label (one forward pass per prompt and label)")
    p.add_argument("--task-labels", nargs="+", help="a classification task's labels (default: the distinct references of --task-data)")
    p.add_argument("--judge", action="append", help="judge spec; repeat for several (default keyword)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true",
                   help="start over output files made under other settings (default: refuse to touch them)")
    _add_flags(p, EVAL_FLAGS + GENERATION_FLAGS + LLM_FLAGS)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("align", help="safety-align a model (refusals + benign data) and report refusal before/after")
    p.add_argument("--config", help="YAML AlignConfig; flags override")
    p.add_argument("--check-harmful", nargs="*", help="held-out harmful prompt files for the refusal check")
    p.add_argument("--check-benign", nargs="*", help="benign prompt files for the over-refusal check (never trained on)")
    _add_flags(p, ALIGN_FLAGS)
    p.set_defaults(func=cmd_align)

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
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="align, attack with sft and spard, evaluate, print the table (offline)")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=40, help="fine-tuning updates per defense")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
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


if __name__ == "__main__":
    sys.exit(main())
