"""``spard bench``: run a grid of fine-tuning runs, evaluate each, and write tables and plots.

Layout under ``output_dir``: ``align/`` (when the config aligns first), ``runs/<run name>/`` (the
training artefacts, ``eval/``, and ``run.json`` naming the grid cell), and ``results.{csv,json,md}``
plus PNG plots. A run's key hashes its resolved training config and the aligned start model's sha256;
its evaluation carries ``eval_key``, the hash of the evaluation settings (data, limits, decoding,
judges and their versions). A run counts as finished when ``run.json`` has its key, ``metrics.json``
is there and ``eval/metrics.json`` has the current ``eval_key``. Finished runs are skipped; a partial
or stale training is trained again from scratch; a current training with a stale evaluation is only
evaluated again (generations made under the same decoding are kept); an interrupted evaluation
resumes. The start model's own evaluation (the zero of "task gain kept") follows the same rule.

Over 300 lines because resume semantics (keys, stale runs, reuse, shards, the start model) are one
story that reads best in one place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spard.bench.config import (
    ALIGN_KEY_NEUTRAL_DEFAULTS,
    ALIGNED,
    BenchConfig,
    RunSpec,
    config_hash,
    eval_config,
    expand,
    prune_neutral,
    select_runs,
)
from spard.bench.report import write_results
from spard.bench.tables import START_LABEL
from spard.config import from_dict, load_yaml, to_dict
from spard.io import atomic_write, atomic_write_json, remove_tree

logger = logging.getLogger(__name__)

#: what an alignment writes of its training (beside ``alignment.json``) that a re-alignment on a fresh clone rewrites
ALIGN_TRAINING_RECORD = ("metrics.json", "train_log.jsonl")


def load_bench_config(path: str | Path) -> BenchConfig:
    """The grid config at ``path``, its labels and attack names checked (they become folder names)."""
    from spard.bench.config import check_name, defense_specs

    cfg = from_dict(BenchConfig, load_yaml(path), str(path))
    defense_specs(cfg)
    for name in cfg.attacks:
        check_name("attack", name)
    return cfg


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_align_stage(cfg: BenchConfig, out: Path, progress: bool, ev_key: str | None = None) -> tuple[str | None, str | None]:
    """Align once and return (aligned model, unaligned model).

    Skipped when ``align/alignment.json`` and the model are there and the report was made with the same
    align settings. The report is committed and the model is not, so on a fresh clone the model is trained
    again. Its sha256 is compared with the report's: equal, the refusal checks are reused (greedy checks of
    identical weights). Unequal (another CPU rounds differently), the model is checked again and, when the
    report's start-model evaluation was made under the grid's evaluation settings ``ev_key``, evaluated
    again: if every measured value matches (:func:`~spard.evaluation.evaluate.same_measurements`) and so do
    the refusal checks, it is the same start model up to rounding; the report keeps its sha256 (the runs
    their keys) and lists the new one under ``equivalent_sha256``. Otherwise it is another start model and
    the runs from it are new runs.
    """
    if not cfg.align:
        return None, None
    from spard.training.align import AlignConfig, model_sha256, run_alignment

    align_cfg = from_dict(AlignConfig, {**cfg.align, "output_dir": str(out / "align"), "progress": progress}, "align")
    settings = to_dict(align_cfg)
    settings.pop("output_dir"), settings.pop("progress")
    key = config_hash(prune_neutral(settings, ALIGN_KEY_NEUTRAL_DEFAULTS))
    model_dir = out / "align" / "model"
    report_path = out / "align" / "alignment.json"
    report = _read_json(report_path)
    if report is not None and (model_dir / "config.json").exists() and report.get("config_key", key) == key:
        if "model_sha256" not in report or "config_key" not in report:  # a report from before fingerprints
            report.update(model_sha256=model_sha256(model_dir), config_key=key)
        else:
            sha = model_sha256(model_dir)
            if sha != report["model_sha256"] and sha not in report.get("equivalent_sha256", []):
                report = _reconcile_start_model(cfg, out, align_cfg, report, sha, ev_key, progress)
        atomic_write_json(report_path, report)
        return report["aligned_model"], align_cfg.model.name

    earlier = report if report is not None and report.get("config_key") == key and report.get("after") else None
    logger.info("alignment stage: training %s%s", align_cfg.model.name,
                " again (the report is here, the model is not)" if earlier else "")
    record = {name: (out / "align" / name).read_bytes() for name in ALIGN_TRAINING_RECORD
              if (out / "align" / name).exists()} if earlier else {}
    report = run_alignment(dataclasses.replace(align_cfg, check_harmful=[], check_benign=None) if earlier else align_cfg)
    report["config_key"] = key
    if earlier:
        sha, kept = report["model_sha256"], {k: earlier.get(k) for k in ("model_sha256", "before", "after")}
        report = {**earlier, **report, **kept}
        if sha in (earlier.get("model_sha256"), *earlier.get("equivalent_sha256", [])):
            logger.info("the re-aligned model is identical to %s one (sha256 %s); its refusal checks stand",
                        "the earlier" if sha == earlier.get("model_sha256") else "an earlier equivalent", sha[:12])
        else:
            report = _reconcile_start_model(cfg, out, align_cfg, report, sha, ev_key, progress)
        if report["model_sha256"] == earlier.get("model_sha256"):
            report = _keep_training_record(out / "align", report, earlier, record)
    atomic_write_json(report_path, report)
    return report["aligned_model"], align_cfg.model.name


def _keep_training_record(align_dir: Path, report: dict[str, Any], earlier: dict[str, Any],
                          record: dict[str, bytes]) -> dict[str, Any]:
    """The same start model made again (identical, or equivalent up to rounding): its committed training
    record (``metrics.json``, ``train_log.jsonl``, the report's ``train_seconds``) describes the model the
    report names, so it is written back over this re-alignment's; this one's time is logged, not recorded."""
    for name, data in record.items():
        atomic_write(align_dir / name, lambda tmp, data=data: tmp.write_bytes(data))
    logger.info("re-aligned in %.0f s here; the committed training record of the start model is kept",
                report.get("train_seconds", float("nan")))
    return {**report, "train_seconds": earlier.get("train_seconds", report.get("train_seconds"))}


def _reconcile_start_model(cfg: BenchConfig, out: Path, align_cfg: Any, report: dict[str, Any], sha: str,
                           ev_key: str | None, progress: bool) -> dict[str, Any]:
    """``report`` (the earlier start model's, sha256 ``report["model_sha256"]``) updated for the model now
    in ``align/model`` (sha256 ``sha``): the same start model when its refusal checks and its evaluation
    measure the same as the earlier one's, another start model otherwise (see :func:`run_align_stage`)."""
    from spard.evaluation.evaluate import same_measurements
    from spard.training.align import refusal_rates

    was = report["model_sha256"]
    model_dir = out / "align" / "model"
    after = refusal_rates(str(model_dir), align_cfg, out / "align" / "check_after")
    eval_dir, recheck = out / "align" / "eval", out / "align" / "eval-recheck"
    same_checks = after == report.get("after")
    comparable = ev_key is not None and is_evaluated(eval_dir, ev_key, was)
    if same_checks and comparable:
        logger.info("the re-aligned model differs in its bits (sha256 %s, was %s) and its refusal checks match: "
                    "evaluating it again to compare with the earlier start model's evaluation", sha[:12], was[:12])
        evaluate_model(cfg, str(model_dir), recheck, progress, {"start_model_sha256": sha})
        if same_measurements(_read_json(eval_dir / "metrics.json"), _read_json(recheck / "metrics.json")):
            logger.info("every measured value of the re-aligned model (sha256 %s) equals the earlier start model's "
                        "(sha256 %s): the same start model up to rounding; the runs keep their keys", sha[:12], was[:12])
            for sub in ("generations", "judgements"):  # the earlier evaluation's files were not committed: these
                if (eval_dir / sub).exists():  # are what the labelling sheets read
                    remove_tree(eval_dir / sub, out)
                if (recheck / sub).exists():
                    (recheck / sub).rename(eval_dir / sub)
            remove_tree(recheck, out)
            return {**report, "equivalent_sha256": [*report.get("equivalent_sha256", []), sha]}
    reason = ("its refusal checks differ" if not same_checks else "its start-model evaluation differs" if comparable
              else "there is no current evaluation of the earlier one to compare")
    logger.warning("the re-aligned model differs from the one earlier runs started from (sha256 %s, was %s; %s); "
                   "runs are labelled with the model they started from", sha[:12], was[:12], reason)
    if recheck.exists():  # its evaluation of the new start model is the start row's
        if eval_dir.exists():
            remove_tree(eval_dir, out)
        recheck.rename(eval_dir)
    return {**report, "model_sha256": sha, "after": after}


def fit_probe_stage(cfg: BenchConfig) -> None:
    """Fit the configured probe judge unless its directory already holds one."""
    if not cfg.probe or _probe_saved(cfg):
        return
    from spard.evaluation.judge_quality import responses_and_labels
    from spard.evaluation.judges.probe import fit_probe

    texts, labels = responses_and_labels(cfg.probe["data"])
    fit_probe(texts, labels, features=cfg.probe.get("features", "tfidf")).save(Path(cfg.probe["output"]))


def _probe_saved(cfg: BenchConfig) -> bool:
    from spard.evaluation.judges.probe import Probe

    return Probe.is_saved(cfg.probe["output"])


def is_trained(run_dir: Path, run: RunSpec) -> bool:
    meta = _read_json(run_dir / "run.json")
    return meta is not None and meta.get("key") == run.key and _read_json(run_dir / "metrics.json") is not None


def is_evaluated(eval_dir: Path, ev_key: str, start_sha256: str | None = None) -> bool:
    """Whether ``eval_dir`` holds an evaluation made with the evaluation settings ``ev_key`` (and, when
    given, of the start model with sha256 ``start_sha256``)."""
    ev = _read_json(eval_dir / "metrics.json")
    return (ev is not None and ev.get("eval_key") == ev_key
            and (start_sha256 is None or ev.get("start_model_sha256") == start_sha256))


def is_finished(run_dir: Path, run: RunSpec, ev_key: str) -> bool:
    return is_trained(run_dir, run) and is_evaluated(run_dir / "eval", ev_key)


def has_model(run_dir: Path) -> bool:
    """Whether the run's trained weights are on disk (a fresh clone has a run's files but not its model)."""
    return any((run_dir / "model").glob("*.safetensors"))


def find_same_training(run: RunSpec, train_cfg: Any, runs_dir: Path) -> Path | None:
    """A finished run (with its model on disk) whose training is the same as ``run``'s, or None.

    That is a run of the defense ``run``'s defense trains like (see ``Defense.trains_like``) with
    every other setting equal, found by its key."""
    from spard.defenses import get_defense

    like = get_defense(run.defense, train_cfg).trains_like()
    if like is None:
        return None
    key = run.key_for({**run.train, "defense": like})
    for meta_path in sorted(runs_dir.glob("*/run.json")):
        meta = _read_json(meta_path)
        d = meta_path.parent
        if meta and meta.get("key") == key and not meta.get("pending") and _read_json(d / "metrics.json") and has_model(d):
            return d
    return None


def evaluate_model(cfg: BenchConfig, model: str | Path, eval_dir: Path, progress: bool,
                   extra: dict[str, Any] | None = None) -> None:
    """Evaluate ``model`` with the grid's evaluation settings into ``eval_dir``: files made under the same
    settings resume, files made under others start over. ``extra`` is added to its ``metrics.json``."""
    from spard.evaluation.evaluate import run_evaluation

    ev = eval_config(cfg)
    (eval_dir / "metrics.json").unlink(missing_ok=True)  # it marks a finished evaluation: not until this one is
    metrics = run_evaluation(dataclasses.replace(ev, output_dir=str(eval_dir), progress=progress,
                                                 model=dataclasses.replace(ev.model, name=str(model))),
                             on_mismatch="restart")
    if extra:
        atomic_write_json(eval_dir / "metrics.json", {**metrics, **extra})


def execute_run(run: RunSpec, run_dir: Path, cfg: BenchConfig, progress: bool) -> None:
    """Train (unless a finished training with the same key is there) and evaluate one run."""
    from spard.training.config import TrainConfig
    from spard.training.run import reuse_training, run_training

    trained = is_trained(run_dir, run)
    if not trained or not has_model(run_dir):
        if run_dir.exists():
            logger.info("%s: %s, training again", run_dir.name, "partial or stale run" if not trained
                        else "its model is not on disk (a fresh clone) and its evaluation is to be made again")
            remove_tree(run_dir, Path(cfg.output_dir))
        run_dir.mkdir(parents=True)
        atomic_write_json(run_dir / "run.json", {"key": run.key, "pending": True, **_cell(run)})
        train_cfg = from_dict(TrainConfig, {**run.train_config(), "output_dir": str(run_dir), "progress": progress})
        donor = find_same_training(run, train_cfg, run_dir.parent)
        if donor is not None:
            reuse_training(train_cfg, donor)
        else:
            run_training(train_cfg)
    else:
        logger.info("%s: trained; evaluating again under the current evaluation settings", run_dir.name)
    evaluate_model(cfg, run_dir / "model", run_dir / "eval", progress)
    stamp = {"start_model_sha256": run.start_sha256} if run.start_sha256 else {}
    atomic_write_json(run_dir / "run.json", {"key": run.key, **_cell(run), **stamp})


def _cell(run: RunSpec) -> dict[str, Any]:
    return {"model": run.model, "attack": run.attack, "label": run.label, "defense": run.defense,
            "harmful_ratio": run.harmful_ratio, "seed": run.seed}


def eval_fields(ev: dict[str, Any]) -> dict[str, Any]:
    """The result columns an evaluation's ``metrics.json`` gives: ASR per family and judge, task metrics."""
    row: dict[str, Any] = {}
    for family, res in ev.get("asr", {}).items():
        for judge in ev.get("judges", []):
            row[f"asr[{family}][{judge}]"] = res[judge]["asr"]
    for judge, value in ev.get("asr_mean", {}).items():
        row[f"asr_mean[{judge}]"] = value
    task = ev.get("task", {})
    row["task"] = task.get("name")
    row["task_accuracy"] = task.get("accuracy")
    row["task_loglik_accuracy"] = task.get("loglik_accuracy")
    row["answer_nll"] = task.get("answer_nll")
    row["over_refusal"] = task.get("over_refusal")
    for name, r in ev.get("over_refusal", {}).items():
        row[f"over_refusal[{name}]"] = r["rate"]
        row[f"over_refusal_n[{name}]"] = r.get("n")
    if "over_refusal_mean" in ev:
        row["benign_over_refusal"] = ev["over_refusal_mean"]
    row["eval_system_prompt"] = bool(ev.get("system_prompt"))
    return row


def start_eval_dir(out: Path, model: str) -> Path:
    """Where the starting model ``model`` (as written in the grid) is evaluated before fine-tuning."""
    if model == ALIGNED:
        return out / "align" / "eval"
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.strip("/")) or "model"
    return out / "start" / slug / "eval"


def start_rows(cfg: BenchConfig, runs: list[RunSpec], out: Path, *, evaluate: bool, progress: bool,
               ev_key: str) -> list[dict[str, Any]]:
    """One row per starting model of the grid, evaluated as it is (evaluated now when ``evaluate``
    and not current: made under other evaluation settings or, for ``@aligned``, of another aligned
    model); label ``start model``. Empty when ``cfg.evaluate_start`` is off."""
    if not cfg.evaluate_start:
        return []
    rows = []
    for model, path, sha in dict.fromkeys((r.model, r.model_path or r.model, r.start_sha256) for r in runs):
        eval_dir = start_eval_dir(out, model)
        current = is_evaluated(eval_dir, ev_key, sha)
        if evaluate and not current:
            logger.info("evaluating the starting model %s before any fine-tuning", model)
            evaluate_model(cfg, path, eval_dir, progress, {"start_model_sha256": sha} if sha else None)
            current = True
        ev = _read_json(eval_dir / "metrics.json")
        if ev is not None and current:
            rows.append({"model": model, "attack": "none", "label": START_LABEL, "defense": "none",
                         "harmful_ratio": 0.0, "seed": None, "run": str(eval_dir.parent.relative_to(out)), **eval_fields(ev)})
    return rows


def result_row(run: RunSpec, run_dir: Path) -> dict[str, Any]:
    train = _read_json(run_dir / "metrics.json") or {}
    ev = _read_json(run_dir / "eval" / "metrics.json") or {}
    t = train.get("training", {})
    row: dict[str, Any] = {**_cell(run), "run": run_dir.name}
    start = (_read_json(run_dir / "run.json") or {}).get("start_model_sha256")
    if start:
        row["start_model"] = start[:12]
    row.update(eval_fields(ev))
    row["updates"] = train.get("updates")
    row["seconds_per_update"] = train.get("seconds_per_update")
    row["train_seconds"] = train.get("train_seconds")
    row["wall_seconds"] = (train.get("wall_seconds") or 0.0) + (ev.get("total_wall_seconds") or ev.get("wall_seconds") or 0.0)
    row["k"] = train.get("selection", {}).get("k")
    if train.get("reused_training_from"):
        row["reused_training_from"] = train["reused_training_from"]
    for key in ("projections_fired", "projection_rate", "tau", "safe_loss_first", "safe_loss_last",
                "heldout_safe_loss_first", "heldout_safe_loss_last", "conflict_rate"):
        if key in t:
            row[key] = t[key]
    return row


def run_bench(cfg: BenchConfig, *, progress: bool = True, dry_run: bool = False,
              report_only: bool = False, only: Sequence[str] = (),
              shard: tuple[int, int] | None = None, launcher: str = "inline",
              launcher_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the whole grid and write the results; returns one row per run.

    ``dry_run``: train nothing, write nothing; finished runs get their result row, the rest a
    ``status: "to do"`` row. ``report_only``: train nothing, rewrite the tables and plots from the
    finished runs (after copying runs in from other machines, say). ``only`` and ``shard`` restrict
    which unfinished runs are executed or listed (:func:`~spard.bench.config.select_runs`); the tables
    still cover every finished run of the grid. Unless ``cfg.evaluate_start`` is
    off, each starting model is evaluated first, as it is; its row goes to the tables, not the returned list.
    ``launcher`` ``local`` or ``slurm`` runs the unfinished runs as submitit jobs (:mod:`spard.bench.launch`)."""
    out = Path(cfg.output_dir)
    if not dry_run:  # a dry run writes nothing, not even the folder
        out.mkdir(parents=True, exist_ok=True)
    training = not (dry_run or report_only)
    needs_align = any(ALIGNED in g.models for g in cfg.grids)
    if training or report_only:  # its weights enter the evaluation key: a fresh clone fits the missing probe (seconds)
        fit_probe_stage(cfg)
    elif cfg.probe and not _probe_saved(cfg):
        logger.warning("the probe judge %s is not fitted in this checkout and a dry run writes nothing, so no "
                       "evaluation can match the grid's key and every run is listed as to do; `spard bench CONFIG "
                       "--report-only` fits it (seconds, from its recorded data), then a dry run tells", cfg.probe["output"])
    from spard.evaluation.evaluate import eval_key

    ev_key = eval_key(eval_config(cfg))
    aligned, unaligned = (None, None)
    if needs_align and training:
        aligned, unaligned = run_align_stage(cfg, out, progress, ev_key)
    elif needs_align:
        aligned, unaligned = str(out / "align" / "model"), (cfg.align or {}).get("model", {}).get("name")
    start_sha256 = (_read_json(out / "align" / "alignment.json") or {}).get("model_sha256") if needs_align else None
    runs = expand(cfg, aligned, unaligned, start_sha256)
    logger.info("%s: %d runs in the grid", cfg.name, len(runs))
    mine = {r.name for r in select_runs(runs, only, shard)}
    if len(mine) < len(runs):
        logger.info("%s: %d of them selected (--only %s, --shard %s)", cfg.name, len(mine), list(only) or "-",
                    "/".join(map(str, shard)) if shard else "-")
    starts = start_rows(cfg, runs, out, evaluate=training, progress=progress, ev_key=ev_key)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    done = skipped = 0
    if training and launcher != "inline":
        from spard.bench.launch import launch

        pending = [(r, out / "runs" / r.name) for r in runs
                   if r.name in mine and not is_finished(out / "runs" / r.name, r, ev_key)]
        failed = launch(pending, cfg, launcher, launcher_options)
        done, training = len(pending) - len(failed), False  # the jobs ran them: only collect the rows below
    for run in tqdm(runs, desc=f"bench {cfg.name}", disable=not progress or not training):
        run_dir = out / "runs" / run.name
        is_new = not is_finished(run_dir, run, ev_key)
        if not is_new:
            skipped += 1
        elif run.name not in mine:
            continue
        elif not training:
            if dry_run:
                rows.append({**_cell(run), "run": run.name, "status": "to do"})
            continue
        else:
            execute_run(run, run_dir, cfg, progress)
            done += 1
        rows.append(result_row(run, run_dir))
        if is_new:
            write_results(out, rows, cfg, starts)  # after every new run, so a long grid shows its progress
    if not dry_run:
        write_results(out, rows, cfg, starts)
    logger.info("%s: %d runs done now, %d already finished, %.0fs", cfg.name, done, skipped, time.perf_counter() - started)
    return rows
