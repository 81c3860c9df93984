"""A benchmark's results page and files: ``results.{json,csv,md}`` and the plots, rewritten atomically
after every run. The tables themselves are in :mod:`spard.bench.tables` (per-run rows) and
:mod:`spard.bench.inference` (per-prompt outcomes: intervals, paired tests)."""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spard.bench.config import TargetsConfig, defense_specs
from spard.bench.tables import (
    REUSED_MARK,
    _fmt,
    _pm,
    ablation_labels,
    ablation_table,
    asr_matrix,
    families_in,
    grid_cell,
    judge_note,
    judge_quality_table,
    judges_in,
    lowest,
    lowest_by_attack,
    mean_by_attack,
    over_refusal_table,
    start_table,
    summary_by_defense,
)
from spard.io import atomic_write_json, atomic_write_text


def with_task_gain(rows: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """``rows`` with ``task_gain_kept``: the share of plain fine-tuning's task gain a run keeps,

        (NLL_start - NLL_run) / (NLL_start - NLL_sft),

    NLL being the held-out answer NLL, start the starting model before fine-tuning and sft the
    ``baseline`` run (plain fine-tuning) with the same model, attack, harmful ratio and seed. 1 = as much as SFT, 0 = none
    (still the starting model), negative = worse than the start. Missing where either is missing, where
    SFT did not lower the NLL, or where the run was evaluated under a system prompt the other two were
    not (PTST: its NLL answers a longer prompt, so it is not on the same scale)."""
    start = {s["model"]: s for s in starts}
    sft = {grid_cell(r): r for r in rows if r["label"] == baseline}
    out = []
    for r in rows:
        ends = (start.get(r["model"]), sft.get(grid_cell(r)), r)
        nll = [e.get("answer_nll") if e else None for e in ends]
        same_prompt = len({bool(e.get("eval_system_prompt")) for e in ends if e}) == 1
        gain = (nll[0] - nll[2]) / (nll[0] - nll[1]) if None not in nll and nll[0] > nll[1] and same_prompt else None
        out.append({**r, "task_gain_kept": gain} if gain is not None else dict(r))
    return out


def targets(rows: Sequence[dict[str, Any]], judge: str, policy: TargetsConfig | None = None, *,
            intervals_above: bool = False) -> list[str]:
    """The headline check of ``policy`` (a :class:`TargetsConfig`; by default the paper's: SPARD's mean
    ASR over the attacks against SFT's, target ratio 0.25) and against every other defense.

    Compares mean ASR over the attacks on which both the baseline and the method ran (harmful ratio > 0), and the
    task metrics (accuracy in points, answer NLL) on the same runs. Ablations (a defense under another
    label) are left out of "lowest"; per attack, the lowest defense is named among all that ran on it.
    ``intervals_above``: the page checks the targets on intervals already
    (:func:`spard.bench.inference.inference_section`), so this section is titled and worded as the
    point estimates it is (mean of per-attack means, every p pooled), not as a second verdict.
    """
    policy = policy or TargetsConfig()
    base, method = policy.baseline, policy.method
    asr = mean_by_attack(rows, f"asr_mean[{judge}]")
    sft, spard = asr.get(base, {}), asr.get(method, {})
    attacks = sorted(set(sft) & set(spard))
    if not attacks:
        return []
    ablations = ablation_labels(rows)
    defenses = sorted(label for label in asr if label not in ablations)
    mean = {label: statistics.fmean([asr[label][a] for a in attacks])
            for label in defenses if all(a in asr[label] for a in attacks)}
    if intervals_above:
        lines = [f"## Point estimates over attacks ({judge_note(judge)}, attacks: {', '.join(attacks)}; "
                 "means of per-attack means, no intervals: the targets are checked on intervals above)", ""]
    else:
        lines = [f"## Targets ({judge_note(judge)}, attacks: {', '.join(attacks)})", ""]
    ratio = mean[method] / mean[base] if mean[base] else float("nan")
    under = ratio <= policy.asr_ratio
    check = (f"<= {policy.asr_ratio:g} on the estimate: {'yes' if under else 'no'}" if intervals_above
             else f"target <= {policy.asr_ratio:g}: {'met' if under else 'not met'}")
    lines.append(f"- {method} mean ASR {_fmt(mean[method], pct=True)} vs {base} {_fmt(mean[base], pct=True)}: "
                 f"ratio {ratio:.2f} ({check})")
    if len(mean) > 1:
        lines.append(f"- lowest ASR among defenses run on the same attacks: {', '.join(lowest(mean))} "
                     f"({', '.join(f'{k} {_fmt(v, pct=True)}' for k, v in sorted(mean.items(), key=lambda kv: kv[1]))})")
    gain = mean_by_attack(rows, "task_gain_kept")
    kept = {label: statistics.fmean([gain[label][a] for a in attacks])
            for label in mean if all(a in gain.get(label, {}) for a in attacks)}
    if len(kept) > 1:
        lines.append(f"- task gain kept (share of {base}'s answer-NLL drop from the start model, same attack and seed): "
                     + ", ".join(f"{k} {_fmt(v, pct=True)}" for k, v in sorted(kept.items(), key=lambda kv: -kv[1])))
        useful = {k: mean[k] for k, v in kept.items() if v >= policy.useful_gain and k != base}
        if useful:
            lines.append(f"- lowest ASR among defenses that keep at least {policy.useful_gain:.0%} of {base}'s task gain: "
                         f"{', '.join(lowest(useful))} ("
                         + ", ".join(f"{k} {_fmt(v, pct=True)}" for k, v in sorted(useful.items(), key=lambda kv: kv[1])) + ")")
    per_attack = [f"{a}: {', '.join(labels)} ({_fmt(best, pct=True)} of {n} defenses)"
                  for a, (best, labels, n) in lowest_by_attack(asr, ablations).items()]
    if per_attack:
        lines.append(f"- lowest ASR per attack: {'; '.join(per_attack)}")
    for key, name, scale in (("task_accuracy", "task accuracy", 100.0), ("answer_nll", "answer NLL", 1.0)):
        by = mean_by_attack(rows, key)
        a, b = by.get(method, {}), by.get(base, {})
        common = [x for x in attacks if x in a and x in b]
        if common:
            diff = scale * (statistics.fmean([a[x] for x in common]) - statistics.fmean([b[x] for x in common]))
            unit = " points" if scale == 100.0 else ""
            lines.append(f"- {name}: {method} minus {base} = {diff:+.3f}{unit}")
    return lines + [""]


def markdown(rows: Sequence[dict[str, Any]], title: str, starts: Sequence[dict[str, Any]] = (),
             changes: dict[str, dict[str, Any]] | None = None, judge_quality: list[str] = (),
             policy: TargetsConfig | None = None, inference: list[str] = ()) -> str:
    """The results page: targets, start models, ASR by defense and attack, ablations, per-defense summary, every run.

    ``rows`` are the fine-tuning runs (with ``task_gain_kept`` where known), ``starts`` the start-model
    rows, ``changes`` the config overrides of each labelled variant, ``judge_quality`` the lines of
    :func:`judge_quality_table`, ``inference`` those of :func:`spard.bench.inference.inference_section`
    (intervals and paired tests, where the runs stored per-prompt outcomes)."""
    primary = (policy or TargetsConfig()).judge
    judges = judges_in(rows, primary)
    lines = [f"# {title}", ""]
    if not rows:
        return "\n".join(lines + ["No finished runs yet.", ""])
    lines += list(judge_quality)
    shas = sorted({r["start_model"] for r in rows if r.get("start_model")})
    if len(shas) > 1:
        lines += [f"**Warning:** these runs started from {len(shas)} different aligned models "
                  f"(sha256 {', '.join(shas)}); compare runs that share one (column `start_model` in results.csv).", ""]
    lines += list(inference)
    for judge in judges:
        lines += targets(rows, judge, policy, intervals_above=bool(inference))
    for judge in judges_in(starts, primary):
        lines += start_table(starts, judge)
    lines += over_refusal_table(rows, starts)
    for judge in judges:
        lines += asr_matrix(rows, judge)
    for judge in judges:
        lines += ablation_table(rows, judge, changes)
    for judge in judges:
        lines += [f"## By defense (ASR {judge_note(judge)}; mean ± sd over attacks and seeds)", "",
                  "| defense | p | runs | ASR | task accuracy | answer NLL | task gain kept | s / update |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in sorted(summary_by_defense(rows, judge), key=lambda s: (s["harmful_ratio"], s["label"])):
            lines.append(
                f"| {s['label']} | {s['harmful_ratio']:g} | {s['runs']} | {_pm(s['asr'], pct=True)} | "
                f"{_pm(s['task_accuracy'], pct=True)} | {_pm(s['answer_nll'])} | {_pm(s['task_gain_kept'], pct=True)} | "
                f"{_pm(s['seconds_per_update'], digits=2)} |"
            )
        lines.append("")
    families = families_in(rows)
    if families and judges:
        j = judges[0]
        lines += [f"## Every run (ASR per held-out family, {judge_note(j)})", "",
                  "| defense | attack | p | seed | " + " | ".join(families) + " | mean | task acc. | answer NLL | task prompts refused | s/upd. | wall | fired |",
                  "|---|---|---|---|" + "---|" * (len(families) + 7)]
        for r in rows:
            cells = [_fmt(r.get(f"asr[{f}][{j}]"), pct=True) for f in families]
            fired = f"{r['projections_fired']}/{r['updates']}" if "projections_fired" in r else ""
            lines.append(
                f"| {r['label']} | {r['attack']} | {r['harmful_ratio']:g} | {r['seed']} | " + " | ".join(cells)
                + f" | {_fmt(r.get(f'asr_mean[{j}]'), pct=True)} | {_fmt(r.get('task_accuracy'), pct=True)} | "
                f"{_fmt(r.get('answer_nll'))} | {_fmt(r.get('over_refusal'), pct=True)} | "
                f"{_fmt(r.get('seconds_per_update'), digits=2)} | "
                f"{_fmt((r.get('wall_seconds') or 0) / 60, digits=1)} min{REUSED_MARK if r.get('reused_training_from') else ''} | {fired} |"
            )
        lines += ["", "wall: the training's seconds plus its evaluations' (a re-judge of stored generations adds its own "
                  "seconds to those of the evaluation that generated them; evaluations made before 2026-12-01's "
                  "`total_wall_seconds` count the latest only)."]
        if any(r.get("reused_training_from") for r in rows):
            lines += ["", f"{REUSED_MARK} the training was the same computation as a finished run's (see "
                      "`Defense.trains_like`) and was copied from it; the wall time counts that training."]
        lines.append("")
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_results(out: Path, rows: Sequence[dict[str, Any]], cfg: Any, starts: Sequence[dict[str, Any]] = ()) -> None:
    """Write ``results.{json,csv,md}`` and the plots; the start-model rows come first in JSON and CSV."""
    policy = getattr(cfg, "targets", None) or TargetsConfig()
    rows = with_task_gain(rows, starts, policy.baseline)
    atomic_write_json(out / "results.json", [*starts, *rows])
    write_csv(out / "results.csv", [*starts, *rows])
    changes = {label: spec.overrides for label, spec in defense_specs(cfg).items()}
    quality: list[str] = []
    if getattr(cfg, "judge_quality", None):
        path = Path(cfg.judge_quality)
        quality = (judge_quality_table(json.loads(path.read_text()), str(path)) if path.is_file()
                   else [f"Judge quality report `{path}` not found: run `spard judge agreement --output {path}`.", ""])
    from spard.bench.inference import inference_section

    judges = judges_in(rows, policy.judge)
    inference = inference_section(rows, out / "runs", judges[0], policy, plot_dir=out, starts=starts) if judges else []
    if judges and getattr(cfg, "labels", None):
        from spard.bench.labelled import labelled_section

        benign = {Path(path).stem: path for path in cfg.eval.get("benign") or []}
        inference += labelled_section(rows, out / "runs", cfg.labels, cfg.eval_sets, cfg.eval.get("harmful_limit"),
                                      judges[0], policy, starts, benign, cfg.eval.get("benign_limit"))
    atomic_write_text(out / "results.md", markdown(rows, f"Benchmark `{cfg.name}`", starts, changes, quality, policy,
                                                   inference))
    from spard.bench.plots import plot_results

    plot_results(out, rows, starts, primary=policy.judge)
