"""The tables of a benchmark's results page, one function each, over the result rows (one dict per run).

Every function returns Markdown lines (or the rows a table is built from); :mod:`spard.bench.report`
puts them together. Tables built on per-prompt outcomes (intervals, paired tests) are in
:mod:`spard.bench.inference`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

#: Label of the rows that evaluate a starting model before any fine-tuning.
START_LABEL = "start model"


#: Marks a run whose training was copied from an identical finished run (``reused_training_from``).
REUSED_MARK = "†"


def judge_note(judge: str) -> str:
    """How a table names its judge: the keyword rule measures refusal, so its "ASR" is a non-refusal rate."""
    return f"judge `{judge}`" + (" = non-refusal rate, not a harm judgement" if judge.split(":")[0] == "keyword" else "")


def judges_in(rows: Sequence[dict[str, Any]], primary: str | None = None) -> list[str]:
    """The judges the rows report an ASR for, in evaluation order, ``primary`` first when it is one of them."""
    found: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith("asr_mean[") and key[9:-1] not in found:
                found.append(key[9:-1])
    return sorted(found, key=lambda j: j != primary) if primary in found else found


def families_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The held-out prompt families that rows report an ASR for (``asr[FAMILY][JUDGE]`` columns)."""
    return sorted({k.split("]")[0][4:] for r in rows for k in r if k.startswith("asr[")})


def grid_cell(row: dict[str, Any]) -> tuple[Any, ...]:
    """(model, attack, harmful ratio, seed): the runs of different defenses that face the same data."""
    return row["model"], row["attack"], row["harmful_ratio"], row["seed"]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _fmt(value: float | None, pct: bool = False, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if pct else f"{value:.{digits}f}"


def _pm(values: list[float], pct: bool = False, digits: int = 3) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "n/a"
    if std and len([v for v in values if v is not None]) > 1:
        return f"{_fmt(mean, pct, digits)} ± {_fmt(std, pct, digits)}"
    return _fmt(mean, pct, digits)


def summary_by_defense(rows: Sequence[dict[str, Any]], judge: str) -> list[dict[str, Any]]:
    """Per (defense label, harmful ratio): mean ASR over attacks and seeds, task metrics, cost."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["label"], row["harmful_ratio"])].append(row)
    out = []
    for (label, ratio), items in groups.items():
        out.append({
            "label": label, "harmful_ratio": ratio, "runs": len(items),
            "attacks": sorted({r["attack"] for r in items}), "seeds": sorted({r["seed"] for r in items}),
            "asr": [r.get(f"asr_mean[{judge}]") for r in items],
            "task_accuracy": [r.get("task_accuracy") for r in items],
            "answer_nll": [r.get("answer_nll") for r in items],
            "task_gain_kept": [r.get("task_gain_kept") for r in items],
            "seconds_per_update": [r.get("seconds_per_update") for r in items],
        })
    return out


def mean_by_attack(rows: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """``{label: {attack: mean of key over seeds}}`` for the attack runs (harmful ratio > 0)."""
    groups: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["harmful_ratio"] > 0 and r.get(key) is not None:
            groups[r["label"]][r["attack"]].append(r[key])
    return {label: {a: statistics.fmean(v) for a, v in by.items()} for label, by in groups.items()}


def ablation_labels(rows: Sequence[dict[str, Any]]) -> set[str]:
    """Labels of defense variants run under their own label (``spard-random``): ablations, not competitors."""
    return {r["label"] for r in rows if r["label"] != r.get("defense", r["label"])}


def lowest(values: dict[str, float]) -> list[str]:
    """The keys at the minimum value (all of them when tied, up to float noise), sorted."""
    best = min(values.values())
    return sorted(k for k, v in values.items() if v <= best + 1e-12)


def lowest_by_attack(asr: dict[str, dict[str, float]], ablations: set[str]) -> dict[str, tuple[float, list[str], int]]:
    """Per attack on which two or more defenses (not ablations) ran: (lowest ASR, the defenses at it, how many ran)."""
    out = {}
    for a in sorted({a for by in asr.values() for a in by}):
        ran = {label: by[a] for label, by in asr.items() if a in by and label not in ablations}
        if len(ran) > 1:
            out[a] = (min(ran.values()), lowest(ran), len(ran))
    return out


def asr_matrix(rows: Sequence[dict[str, Any]], judge: str) -> list[str]:
    """Markdown table: mean ASR over seeds per defense (rows) and attack (columns); the lowest defense
    of each column in bold where two or more ran (ablations listed after the defenses, not counted for the bold)."""
    asr = mean_by_attack(rows, f"asr_mean[{judge}]")
    if not asr:
        return []
    attacks = sorted({a for by in asr.values() for a in by})
    ablations = ablation_labels(rows)
    order = sorted(asr, key=lambda label: (label in ablations, label))
    best = lowest_by_attack(asr, ablations)
    lines = [f"## ASR by defense and attack ({judge_note(judge)}; mean over seeds; lowest defense per attack in bold)", "",
             "| defense | " + " | ".join(attacks) + " | mean |", "|---|" + "---|" * (len(attacks) + 1)]
    for label in order:
        cells = []
        for a in attacks:
            v = asr[label].get(a)
            cell = _fmt(v, pct=True) if v is not None else ""
            cells.append(f"**{cell}**" if a in best and label in best[a][1] else cell)
        full = len(asr[label]) == len(attacks)
        mean = _fmt(statistics.fmean(asr[label].values()), pct=True) if full else ""
        lines.append(f"| {label}{' (ablation)' if label in ablations else ''} | " + " | ".join(cells) + f" | {mean} |")
    return lines + [""]


def ablation_table(rows: Sequence[dict[str, Any]], judge: str, changes: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Markdown table: each ablation (a defense under another label) against its defense on the same
    attacks and seeds: mean ASR of both, task gain kept by both, and the settings the ablation changed."""
    ablations = ablation_labels(rows)
    if not ablations:
        return []
    changes = changes or {}
    key = f"asr_mean[{judge}]"
    lines = [f"## Ablations against their defense ({judge_note(judge)}; same attacks and seeds)", "",
             "| variant | changes | runs | ASR | ASR of the defense | task gain kept | of the defense |", "|---|---|---|---|---|---|---|"]
    for label in sorted(ablations):
        variant = [r for r in rows if r["label"] == label and r.get(key) is not None]
        defense = variant[0]["defense"] if variant else None
        base = {grid_cell(r): r for r in rows if r["label"] == defense and r.get(key) is not None}
        pairs = [(r, base[grid_cell(r)]) for r in variant if grid_cell(r) in base]
        if not pairs:
            continue
        changed = ", ".join(f"{k}={v}" for k, v in changes.get(label, {}).items())
        lines.append(
            f"| {label} | {changed} | {len(pairs)} | {_pm([a[key] for a, _ in pairs], pct=True)} | "
            f"{_pm([b[key] for _, b in pairs], pct=True)} | {_pm([a.get('task_gain_kept') for a, _ in pairs], pct=True)} | "
            f"{_pm([b.get('task_gain_kept') for _, b in pairs], pct=True)} |")
    return [*lines, ""] if len(lines) > 4 else []


def start_table(starts: Sequence[dict[str, Any]], judge: str) -> list[str]:
    """Markdown table of the starting models evaluated before fine-tuning (one row each)."""
    if not starts:
        return []
    families = families_in(starts)
    lines = [f"## Start models before fine-tuning ({judge_note(judge)})", "",
             "| model | " + " | ".join(families) + " | mean ASR | task acc. | answer NLL | task prompts refused |",
             "|---|" + "---|" * (len(families) + 4)]
    for r in starts:
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(r.get(f"asr[{f}][{judge}]"), pct=True) for f in families)
                     + f" | {_fmt(r.get(f'asr_mean[{judge}]'), pct=True)} | {_fmt(r.get('task_accuracy'), pct=True)} | "
                     f"{_fmt(r.get('answer_nll'))} | {_fmt(r.get('over_refusal'), pct=True)} |")
    return lines + [""]


def over_refusal_table(rows: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]]) -> list[str]:
    """Over-refusal (benign prompts refused, keyword refusal rule) per benign set: start models, then
    each defense label, pooled over its runs with its Wilson 95% interval and count; shown beside every
    ASR table so that a low ASR that comes from refusing everything is visible."""
    from spard.evaluation.stats import format_rate, rate_with_interval

    sets = sorted({k[13:-1] for r in [*starts, *rows] for k in r if k.startswith("over_refusal[")})
    if not sets:
        return []
    lines = ["## Over-refusal on benign prompts (share refused, keyword refusal rule; pooled over runs, Wilson 95%)", "",
             "| model / defense | runs | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in starts:
        groups.setdefault(f"{START_LABEL}: {r['model']}", []).append(r)
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    for label, items in groups.items():
        cells = []
        for name in sets:
            counted = [(r[f"over_refusal[{name}]"], r.get(f"over_refusal_n[{name}]")) for r in items
                       if r.get(f"over_refusal[{name}]") is not None]
            if counted and all(n for _, n in counted):
                k, n = sum(round(rate * n) for rate, n in counted), sum(n for _, n in counted)
                cells.append(format_rate(rate_with_interval(k, n)))
            else:  # rows written before counts were kept
                cells.append(_fmt(statistics.fmean(v for v, _ in counted), pct=True) if counted else "n/a")
        lines.append(f"| {label} | {len(items)} | " + " | ".join(cells) + " |")
    return lines + [""]


def judge_quality_table(report: dict[str, Any] | None, source: str = "") -> list[str]:
    """Each judge's agreement with human labels of real model outputs (a ``spard judge agreement
    --output`` report), so that every ASR table can be read against how far its judge is trusted."""
    if not report:
        return []
    from spard.evaluation.stats import format_rate

    lines = [f"## Judges against human labels ({report.get('split', '?')} split of `{report.get('labels', '?')}`"
             f"{f', from `{source}`' if source else ''})", "",
             "| judge | measures | agreement with harm label | Cohen's kappa [95%] | judged harmful | labelled harmful "
             "| on harmful prompts only (what an ASR uses): agreement, kappa |",
             "|---|---|---|---|---|---|---|"]
    for j in report.get("judges", []):
        h, k = j["harm"], j["harm"]["kappa"]
        only = j.get("harm_on_harmful_prompts")
        only = f"{format_rate(only['accuracy'])}, {_fmt(only['kappa']['value'], digits=2)} (n = {only['n']})" if only else "-"
        lines.append(f"| `{j.get('spec', j['judge'])}` | {j['measures']} | {format_rate(h['accuracy'])} "
                     f"| {_fmt(k['value'], digits=2)} [{_fmt(k['low'], digits=2)}, {_fmt(k['high'], digits=2)}] "
                     f"| {format_rate(h['predicted_rate'])} | {format_rate(h['label_rate'])} | {only} |")
    return lines + [""]
