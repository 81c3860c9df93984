"""``spard eval``: attack success rate on harmful prompt sets and the task metric, in one run.

Writes under the output directory: ``generations/<set>.jsonl``, ``judgements/<set>.<judge>.jsonl``
(both resumable under the same settings only), ``metrics.json`` and ``summary.md`` (which names the
judge behind every rate). ``metrics.json`` carries ``eval_key``, the hash of every setting that decides
its numbers (:func:`eval_fingerprint`), so a benchmark can tell a stale evaluation from a current one.

A judge that measures refusal (the keyword rule) gives a *non-refusal rate*; only harm judges give an
attack success rate proper. Over-refusal on benign task prompts uses the refusal rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spard.config import config_hash, to_dict
from spard.data.records import FieldMap, load_examples
from spard.evaluation.generation import GenerationConfig, generate_responses, generation_fingerprint
from spard.evaluation.judges import (
    LLMJudgeConfig,
    agreement,
    attack_success_rate,
    judge_fingerprint,
    make_judge,
)
from spard.evaluation.judges.keyword import is_refusal
from spard.evaluation.judging import as_verdicts, judge_rows
from spard.evaluation.loss import response_nll
from spard.evaluation.metrics import LABEL_TASKS, REFERENCE_FIELD, TASK_METRICS, correct_items
from spard.io import atomic_write_json, atomic_write_text
from spard.models.loading import ModelConfig, load_model, model_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    harmful: list[str] = field(default_factory=list)
    harmful_limit: int | None = None
    task_data: str | None = None
    task: str = "gsm8k"
    task_limit: int | None = None
    #: a classification task's labels (default: the distinct references of the whole ``task_data`` file)
    task_labels: list[str] = field(default_factory=list)
    #: also score the task without generating: the most likely label (classification.py), one
    #: teacher-forced pass per (prompt, label); needs a label set (``task: label``, ``openbookqa``...)
    task_loglik: bool = False
    #: benign prompt sets (e.g. XSTest's safe prompts, everyday instructions): over-refusal on each
    benign: list[str] = field(default_factory=list)
    benign_limit: int | None = None
    judges: list[str] = field(default_factory=lambda: ["keyword"])
    llm: LLMJudgeConfig = field(default_factory=LLMJudgeConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    answer_nll: bool = True
    output_dir: str = "runs/eval"
    progress: bool = True


def benign_generations_stem(name: str) -> str:
    """The stem of benign prompt set ``name``'s generations file (``generations/<stem>.jsonl``); ``name`` is
    the set file's stem, the key of ``metrics["over_refusal"]``."""
    return f"benign.{name}"


def saved_eval_system_prompt(model_path: str) -> tuple[str | None, bool]:
    """The system prompt a training run asked evaluation to use (PTST), from its ``metrics.json``.

    Returns ``(prompt, found)``; looks next to the model directory (``RUN/model`` -> ``RUN/metrics.json``).
    """
    path = Path(model_path)
    for candidate in (path / "metrics.json", path.parent / "metrics.json"):
        if candidate.is_file():
            try:
                meta = json.loads(candidate.read_text())
            except json.JSONDecodeError:
                continue
            if "eval_system_prompt" in meta:
                return meta["eval_system_prompt"], True
    return None, False


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "judge"


#: Evaluation settings added after evaluations had been keyed, with the value that does what the code
#: did before; left out of the key while they have it, so finished evaluations stay current.
EVAL_NEUTRAL_DEFAULTS: dict[str, Any] = {"task_labels": [], "task_loglik": False}


def eval_fingerprint(cfg: EvalConfig) -> dict[str, Any]:
    """Every evaluation setting that decides the numbers, the model aside (the data files, limits,
    decoding, judges with their versions); :func:`eval_key` hashes it."""
    settings = to_dict(cfg)
    for name in ("model", "output_dir", "progress", "llm"):
        settings.pop(name)
    for name, neutral in EVAL_NEUTRAL_DEFAULTS.items():
        if settings.get(name) == neutral:
            settings.pop(name)
    settings["generation"].pop("batch_size")
    settings["judges"] = [judge_fingerprint(spec, cfg.llm) for spec in cfg.judges]
    return settings


def eval_key(cfg: EvalConfig) -> str:
    return config_hash(eval_fingerprint(cfg))


def run_evaluation(cfg: EvalConfig, *, on_mismatch: str = "error") -> dict[str, Any]:
    """Evaluate ``cfg.model``; ``on_mismatch`` (``error`` or ``restart``) decides what happens to output
    files made under other settings (another model, decoding or judge)."""
    if not cfg.harmful and not cfg.task_data and not cfg.benign:
        raise ValueError("nothing to evaluate: give harmful prompt files (--harmful-data) and/or --task-data")
    TASK_METRICS.get(cfg.task)  # an unknown task fails here, before any generation
    started = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    judges = [make_judge(spec, cfg.llm) for spec in cfg.judges]
    gen_cfg = cfg.generation
    system_source = "config"
    if gen_cfg.system_prompt is None:
        saved, found = saved_eval_system_prompt(cfg.model.name)
        if found:
            from dataclasses import replace

            gen_cfg = replace(gen_cfg, system_prompt=saved)
            system_source = "training run"
            if saved:
                logger.info("using the evaluation system prompt saved with the training run")
    model_id = model_fingerprint(cfg.model.name)
    generation_key = config_hash(generation_fingerprint(gen_cfg, model_id))
    earlier = _earlier_seconds(out / "metrics.json", generation_key)
    model, tokenizer = load_model(cfg.model)
    io = {"model_id": model_id, "on_mismatch": on_mismatch}

    metrics: dict[str, Any] = {
        "model": cfg.model.name,
        "eval_key": eval_key(cfg),
        "system_prompt": gen_cfg.system_prompt,
        "system_prompt_source": system_source,
        "decoding": "sampled" if gen_cfg.do_sample else "greedy",
        "max_new_tokens": gen_cfg.max_new_tokens,
        "judges": [j.name for j in judges],
        "judge_measures": {j.name: j.measures for j in judges},
        "asr": {},
        "agreement": {},
    }
    responses = hashlib.sha256()  # every generated response in order: two evaluations that agree here saw the same text
    for path in cfg.harmful:
        name = Path(path).stem
        prompts = load_examples(path, FieldMap(target=None), origin=f"eval:{name}", limit=cfg.harmful_limit)
        rows = generate_responses(model, tokenizer, prompts, gen_cfg, output=out / "generations" / f"{name}.jsonl",
                                  progress=cfg.progress, **io)
        _digest(responses, rows)
        per_judge, verdicts = {}, {}
        for judge in judges:
            judged = judge_rows(rows, judge, output=out / "judgements" / f"{name}.{_slug(judge.name)}.jsonl",
                                progress=cfg.progress, on_mismatch=on_mismatch)
            verdicts[judge.name] = as_verdicts(judged)
            per_judge[judge.name] = rate_fields(attack_success_rate(verdicts[judge.name]), verdicts[judge.name])
        metrics["asr"][name] = {"n": len(rows), **per_judge}
        names = list(verdicts)
        metrics["agreement"][name] = {
            f"{a} | {b}": agreement(verdicts[a], verdicts[b]) for i, a in enumerate(names) for b in names[i + 1 :]
        }
    if cfg.harmful:
        metrics["asr_mean"] = {
            j.name: _mean([metrics["asr"][Path(p).stem][j.name]["asr"] for p in cfg.harmful]) for j in judges
        }
    if cfg.benign:
        from spard.evaluation.stats import rate_with_interval

        metrics["over_refusal"] = {}
        for path in cfg.benign:
            name = Path(path).stem
            prompts = load_examples(path, FieldMap(target=None), origin=f"benign:{name}", limit=cfg.benign_limit)
            rows = generate_responses(model, tokenizer, prompts, gen_cfg, output=out / "generations" / f"{benign_generations_stem(name)}.jsonl",
                                      progress=cfg.progress, **io)
            _digest(responses, rows)
            refused = [int(is_refusal(r["response"])) for r in rows]
            metrics["over_refusal"][name] = {**rate_with_interval(sum(refused), len(refused)), "items": refused}
        metrics["over_refusal_mean"] = _mean([r["rate"] for r in metrics["over_refusal"].values()])
    if cfg.task_data:
        task_metrics = _evaluate_task(cfg, model, tokenizer, gen_cfg, out, io, responses)
        metrics["task"] = task_metrics
    metrics["wall_seconds"] = time.perf_counter() - started
    # what evaluating this model has cost so far: a re-judge of stored generations adds its own seconds to
    # those of the evaluations that generated them
    metrics["generation_key"] = generation_key
    metrics["responses_sha256"] = responses.hexdigest()
    metrics["total_wall_seconds"] = earlier + metrics["wall_seconds"]
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "summary.md", summary_markdown(metrics))
    return metrics


def rate_fields(asr: dict[str, Any], verdicts: Sequence[Any]) -> dict[str, Any]:
    """An ASR entry with its Wilson 95% interval (``low``, ``high``) and the per-prompt verdicts
    (``items``: 1 harmful, 0 not, None failed) that paired tests between runs need."""
    from spard.evaluation.stats import rate_with_interval

    interval = rate_with_interval(asr["harmful"], asr["judged"])
    items = [None if v.harmful is None else int(v.harmful) for v in verdicts]
    return {**asr, "low": interval["low"], "high": interval["high"], "items": items}


def _evaluate_task(cfg: EvalConfig, model: Any, tokenizer: Any, gen_cfg: GenerationConfig, out: Path,
                   io: dict[str, Any], responses: Any) -> dict[str, Any]:
    """Task accuracy from generated answers (with its interval and per-item results), over-refusal on
    the task prompts, and where configured the answer NLL and the generation-free label accuracy; the
    answers go into the ``responses`` digest."""
    from spard.evaluation.classification import loglik_predictions, same_label, task_labels
    from spard.evaluation.stats import rate_with_interval

    fields = FieldMap(target=REFERENCE_FIELD[cfg.task])
    needs_labels = cfg.task in LABEL_TASKS or cfg.task_loglik
    if needs_labels and not cfg.task_labels:
        # the label set is the whole file's, so the file is read once, whole, and the items cut from it
        every = load_examples(cfg.task_data, fields, origin="task")
        labels = task_labels([ex.target for ex in every])
        examples = every[: cfg.task_limit] if cfg.task_limit else every
    else:
        examples = load_examples(cfg.task_data, fields, origin="task", limit=cfg.task_limit)
        labels = list(cfg.task_labels) if needs_labels else None
    rows = generate_responses(model, tokenizer, examples, gen_cfg, output=out / "generations" / "task.jsonl",
                              progress=cfg.progress, **io)
    _digest(responses, rows)
    references = [ex.target for ex in examples]
    correct = [int(c) for c in correct_items(cfg.task, [r["response"] for r in rows], references, labels)]
    task: dict[str, Any] = {
        "name": cfg.task, "data": cfg.task_data, "n": len(rows),
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "accuracy_interval": rate_with_interval(sum(correct), len(correct)),
        "correct": correct,
        # over-refusal: benign task prompts answered with a refusal (the keyword refusal rule)
        "over_refusal": _mean([float(is_refusal(r["response"])) for r in rows]),
    }
    if labels is not None:
        task["labels"] = list(labels)
    if cfg.task_loglik:
        predicted = loglik_predictions(model, tokenizer, examples, labels, system_prompt=gen_cfg.system_prompt,
                                       batch_size=gen_cfg.batch_size)
        hits = [int(same_label(p, ref)) for p, ref in zip(predicted, references, strict=True)]
        task.update(loglik_accuracy=sum(hits) / len(hits), loglik_interval=rate_with_interval(sum(hits), len(hits)),
                    loglik_correct=hits)
    if cfg.answer_nll:
        task["answer_nll"] = response_nll(model, tokenizer, examples, system_prompt=gen_cfg.system_prompt)
    return task


# what says how, where and how long an evaluation ran rather than what it measured
PROVENANCE_FIELDS = frozenset({"model", "wall_seconds", "total_wall_seconds", "generation_key", "responses_sha256",
                               "start_model_sha256"})


def _digest(digest: Any, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        digest.update(json.dumps([row["id"], row["response"]]).encode())


def same_measurements(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two evaluations' ``metrics.json`` measured the same thing with the same result: every
    field equal except :data:`PROVENANCE_FIELDS` (so every rate, interval and per-item verdict of every
    judge, every task answer's score), and the responses' digest equal where both recorded one."""
    if a.get("responses_sha256") and b.get("responses_sha256") and a["responses_sha256"] != b["responses_sha256"]:
        return False
    return ({k: v for k, v in a.items() if k not in PROVENANCE_FIELDS}
            == {k: v for k, v in b.items() if k not in PROVENANCE_FIELDS})


def _earlier_seconds(path: Path, generation_key: str) -> float:
    """The seconds earlier evaluations of the same model and decoding spent in ``path``'s folder (whose
    stored generations this one resumes); 0 when there were none or they were of something else."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0.0
    if not isinstance(earlier, dict) or earlier.get("generation_key") != generation_key:
        return 0.0
    return float(earlier.get("total_wall_seconds") or earlier.get("wall_seconds") or 0.0)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_markdown(metrics: dict[str, Any]) -> str:
    judges = metrics["judges"]
    measures = metrics.get("judge_measures", {})

    def column(j: str) -> str:
        return f"non-refusal rate, `{j}`" if measures.get(j) == "refusal" else f"ASR, judge `{j}`"

    lines = [f"# Evaluation of `{metrics['model']}`", "",
             f"Decoding: {metrics['decoding']}, at most {metrics['max_new_tokens']} new tokens. "
             f"System prompt: {'none' if not metrics['system_prompt'] else 'set'} (from {metrics['system_prompt_source']}).", ""]
    if metrics["asr"]:
        lines += ["## Attack success (share of harmful prompts answered harmfully; for a refusal rule, not refused; "
                  "95% Wilson interval)", "",
                  "| prompt set | n | " + " | ".join(column(j) for j in judges) + " |",
                  "|---|---|" + "---|" * len(judges)]
        for name, row in metrics["asr"].items():
            cells = []
            for j in judges:
                r = row[j]
                span = f" [{100 * r['low']:.1f}, {100 * r['high']:.1f}]" if r.get("low") is not None else ""
                cells.append(_pct(r["asr"]) + span + (f" ({r['failed']} failed)" if r["failed"] else ""))
            lines.append(f"| {name} | {row['n']} | " + " | ".join(cells) + " |")
        lines.append("| **mean** | | " + " | ".join(_pct(metrics["asr_mean"][j]) for j in judges) + " |")
        lines.append("")
    if metrics.get("over_refusal"):
        from spard.evaluation.stats import format_rate

        lines += ["## Over-refusal (benign prompts refused, keyword refusal rule; 95% Wilson interval)", "",
                  "| benign set | refused |", "|---|---|"]
        lines += [f"| {name} | {format_rate(r)} |" for name, r in metrics["over_refusal"].items()]
        lines.append("")
    if metrics.get("task"):
        t = metrics["task"]
        from spard.evaluation.stats import format_rate

        accuracy_text = format_rate(t["accuracy_interval"]) if "accuracy_interval" in t else _pct(t["accuracy"])
        lines += ["## Task", "", f"{t['name']} on {t['n']} items: accuracy {accuracy_text} (generated answers)"
                  + (f", {format_rate(t['loglik_interval'])} (most likely label, no generation)" if "loglik_interval" in t else "")
                  + (f", answer NLL {t['answer_nll']:.4f} nats/token" if "answer_nll" in t else "")
                  + (f", over-refusal {_pct(t['over_refusal'])} (keyword refusal rule)" if "over_refusal" in t else ""), ""]
    return "\n".join(lines) + "\n"
