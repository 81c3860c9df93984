"""Benchmark tables (CSV, JSON, Markdown) and plots (PNG), rewritten atomically after every run."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spard.bench.config import TargetsConfig, defense_specs
from spard.io import atomic_write, atomic_write_json, atomic_write_text, read_jsonl

#: Label of the rows that evaluate a starting model before any fine-tuning.
START_LABEL = "start model"
#: Marks a run whose training was copied from an identical finished run (``reused_training_from``).
REUSED_MARK = "†"


def judge_note(judge: str) -> str:
    """How a table names its judge: the keyword rule measures refusal, so its "ASR" is a non-refusal rate."""
    return f"judge `{judge}`" + (" = non-refusal rate, not a harm judgement" if judge.split(":")[0] == "keyword" else "")


def judges_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for row in rows:
        for key in row:
            if key.startswith("asr_mean[") and key[9:-1] not in found:
                found.append(key[9:-1])
    return found


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


def with_task_gain(rows: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]], baseline: str = "sft") -> list[dict[str, Any]]:
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


def targets(rows: Sequence[dict[str, Any]], judge: str, policy: TargetsConfig | None = None) -> list[str]:
    """The headline check of ``policy`` (a :class:`TargetsConfig`; by default the paper's: SPARD's mean
    ASR over the attacks against SFT's, target ratio 0.25) and against every other defense.

    Compares mean ASR over the attacks on which both the baseline and the method ran (harmful ratio > 0), and the
    task metrics (accuracy in points, answer NLL) on the same runs. Ablations (a defense under another
    label) are left out of "lowest"; per attack, the lowest defense is named among all that ran on it.
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
    lines = [f"## Targets ({judge_note(judge)}, attacks: {', '.join(attacks)})", ""]
    ratio = mean[method] / mean[base] if mean[base] else float("nan")
    lines.append(f"- {method} mean ASR {_fmt(mean[method], pct=True)} vs {base} {_fmt(mean[base], pct=True)}: "
                 f"ratio {ratio:.2f} (target <= {policy.asr_ratio:g}: {'met' if ratio <= policy.asr_ratio else 'not met'})")
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
             "| model | " + " | ".join(families) + " | mean ASR | task acc. | answer NLL | over-refusal |",
             "|---|" + "---|" * (len(families) + 4)]
    for r in starts:
        lines.append(f"| {r['model']} | " + " | ".join(_fmt(r.get(f"asr[{f}][{judge}]"), pct=True) for f in families)
                     + f" | {_fmt(r.get(f'asr_mean[{judge}]'), pct=True)} | {_fmt(r.get('task_accuracy'), pct=True)} | "
                     f"{_fmt(r.get('answer_nll'))} | {_fmt(r.get('over_refusal'), pct=True)} |")
    return lines + [""]


def over_refusal_table(rows: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]]) -> list[str]:
    """Over-refusal (benign prompts refused, keyword refusal rule) per benign set: start models, then
    each defense label (mean over its runs); shown beside every ASR table so that a low ASR that comes
    from refusing everything is visible."""
    sets = sorted({k[13:-1] for r in [*starts, *rows] for k in r if k.startswith("over_refusal[")})
    if not sets:
        return []
    lines = ["## Over-refusal on benign prompts (share refused, keyword refusal rule; mean over runs)", "",
             "| model / defense | runs | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in starts:
        groups.setdefault(f"{START_LABEL}: {r['model']}", []).append(r)
    for r in rows:
        groups.setdefault(r["label"], []).append(r)
    for label, items in groups.items():
        cells = []
        for name in sets:
            vals = [r[f"over_refusal[{name}]"] for r in items if r.get(f"over_refusal[{name}]") is not None]
            cells.append(_fmt(statistics.fmean(vals), pct=True) if vals else "n/a")
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
             "| judge | measures | agreement with harm label | Cohen's kappa [95%] | judged harmful | labelled harmful |",
             "|---|---|---|---|---|---|"]
    for j in report.get("judges", []):
        h, k = j["harm"], j["harm"]["kappa"]
        lines.append(f"| `{j.get('spec', j['judge'])}` | {j['measures']} | {format_rate(h['accuracy'])} "
                     f"| {_fmt(k['value'], digits=2)} [{_fmt(k['low'], digits=2)}, {_fmt(k['high'], digits=2)}] "
                     f"| {format_rate(h['predicted_rate'])} | {format_rate(h['label_rate'])} |")
    return lines + [""]


def markdown(rows: Sequence[dict[str, Any]], title: str, starts: Sequence[dict[str, Any]] = (),
             changes: dict[str, dict[str, Any]] | None = None, judge_quality: list[str] = (),
             policy: TargetsConfig | None = None, inference: list[str] = ()) -> str:
    """The results page: targets, start models, ASR by defense and attack, ablations, per-defense summary, every run.

    ``rows`` are the fine-tuning runs (with ``task_gain_kept`` where known), ``starts`` the start-model
    rows, ``changes`` the config overrides of each labelled variant, ``judge_quality`` the lines of
    :func:`judge_quality_table`, ``inference`` those of :func:`spard.bench.inference.inference_section`
    (intervals and paired tests, where the runs stored per-prompt outcomes)."""
    judges = judges_in(rows)
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
        lines += targets(rows, judge, policy)
    for judge in judges_in(starts):
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
                  "| defense | attack | p | seed | " + " | ".join(families) + " | mean | task acc. | answer NLL | over-refusal | s/upd. | wall | fired |",
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


def label_colors(labels: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per label, all distinct up to 20 labels (``tab10``, then ``tab20`` beyond ten)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def plot_results(out: Path, rows: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]] = ()) -> list[Path]:
    """ASR vs task metric (start models as black stars), ASR per attack per defense, and SPAG's safe loss over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    judges = judges_in(rows)
    if not rows or not judges:
        return written
    judge = judges[0]
    labels = sorted({r["label"] for r in rows})
    colors = label_colors(labels)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = ((axes[0], "task_accuracy", "task accuracy %", 100.0),
              (axes[1], "answer_nll", "held-out answer NLL (lower is better)", 1.0))
    for ax, metric, name, scale in panels:
        for label in labels:
            pts = [(r.get(metric), r.get(f"asr_mean[{judge}]")) for r in rows if r["label"] == label]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.scatter([scale * x for x, _ in pts], [100 * y for _, y in pts], color=colors[label], label=label, alpha=0.8)
        pts = [(r.get(metric), r.get(f"asr_mean[{judge}]")) for r in starts]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            ax.scatter([scale * x for x, _ in pts], [100 * y for _, y in pts], color="black", marker="*", s=120,
                       label="start model (no fine-tuning)")
        ax.set_xlabel(name)
        ax.set_ylabel(f"ASR % (judge: {judge})")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2 if len(labels) > 8 else 1)
    fig.suptitle("Attack success rate against task metric, one point per run")
    fig.tight_layout()
    written.append(_save(fig, out / "asr_vs_task.png"))

    attacks = sorted({r["attack"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(attacks) + 2), 4.2))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        means = []
        for attack in attacks:
            vals = [r.get(f"asr_mean[{judge}]") for r in rows if r["label"] == label and r["attack"] == attack]
            mean, _ = _mean_std(vals)
            means.append(100 * mean if mean is not None else 0.0)
        ax.bar([a + i * width for a in range(len(attacks))], means, width, label=label, color=colors[label])
    ax.set_xticks([a + 0.4 - width / 2 for a in range(len(attacks))], attacks)
    ax.set_ylabel(f"ASR % (judge: {judge})")
    ax.set_title("ASR per attack and defense (mean over seeds)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out / "asr_per_attack.png"))

    spag_runs = [r for r in rows if r["defense"] == "spard"][:6]
    if spag_runs:
        fig, axes = plt.subplots(1, len(spag_runs), figsize=(4.2 * len(spag_runs), 3.6), squeeze=False)
        for ax, r in zip(axes[0], spag_runs, strict=False):
            log = list(read_jsonl(out / "runs" / r["run"] / "train_log.jsonl"))
            steps = [x["step"] for x in log]
            ax.plot(steps, [x["safe_loss"] for x in log], lw=1, label="safe loss before")
            fired = [x for x in log if x.get("fired")]
            ax.scatter([x["step"] for x in fired], [x["safe_loss"] for x in fired], s=10, color="red", label="projection fired")
            if r.get("tau") is not None:
                ax.axhline(r["tau"], color="gray", ls="--", lw=1, label="tau")
            ax.set_title(f"{r['label']} / {r['attack']} / seed {r['seed']}", fontsize=9)
            ax.set_xlabel("update")
            ax.set_ylabel("safe mini-batch loss")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / "spag_safe_loss.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


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

    judges = judges_in(rows)
    inference = inference_section(rows, out / "runs", judges[0], policy, plot_dir=out) if judges else []
    atomic_write_text(out / "results.md", markdown(rows, f"Benchmark `{cfg.name}`", starts, changes, quality, policy,
                                                   inference))
    plot_results(out, rows, starts)
