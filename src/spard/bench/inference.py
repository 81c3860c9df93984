"""Intervals and paired tests over the per-prompt results of benchmark runs, as pandas tables.

Every evaluation stores, per prompt, whether each judge called the answer harmful and whether the task
answer was right (``metrics.json``: ``asr[family][judge].items``, ``task.correct``,
``task.loglik_correct``). Runs of two defenses in the same grid cell (attack, harmful ratio, seed) saw
the same prompts, so they are compared *paired*:

* a rate gets a Wilson 95% interval (:func:`spard.evaluation.stats.wilson_interval`);
* a difference or a ratio of two defenses' rates gets a percentile bootstrap interval that resamples
  prompts within each cell, the same prompts for both defenses (:func:`paired_bootstrap`), pooled over
  the cells (attacks, seeds) both ran;
* whether two defenses differ gets the exact McNemar test on the discordant prompts, summed over cells.

The thresholds (which label is the baseline, 0.25, 1 and 2 points) come from the bench config's
``targets`` (:class:`spard.bench.config.TargetsConfig`); nothing here knows a defense's name.

Over 300 lines: the statistics (intervals, bootstrap, McNemar) and the four tables built on them
share their helpers and stay together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spard.evaluation.stats import mcnemar_exact, rate_with_interval

#: Per-prompt outcomes a run can be compared on: key -> (what, higher is better)
MEASURES = {"harm": "ASR", "task": "task accuracy (generated)", "loglik": "task accuracy (most likely label)",
            "refusal": "over-refusal (benign prompts refused)"}


@dataclass
class RunItems:
    """One evaluation's per-prompt outcomes (1 / 0, None where a judge failed): ``harm[judge]`` over the
    harmful families in sorted order, ``task`` and ``loglik`` over the task items, ``refusal`` over the
    benign prompts in sorted set order (evaluations from before per-prompt refusals were kept: None)."""

    harm: dict[str, list[int | None]]
    task: list[int] | None = None
    loglik: list[int] | None = None
    refusal: list[int] | None = None

    def get(self, measure: str, judge: str | None = None) -> list[int | None] | None:
        return self.harm.get(judge or "") if measure == "harm" else getattr(self, measure)


def run_items(metrics: dict[str, Any]) -> RunItems | None:
    """The per-prompt outcomes in an evaluation's ``metrics.json``, or None when it has none (older runs)."""
    harm: dict[str, list[int | None]] = {}
    for family in sorted(metrics.get("asr", {})):
        for judge, res in metrics["asr"][family].items():
            if not isinstance(res, dict):  # "n"
                continue
            if "items" not in res:
                return None
            harm.setdefault(judge, []).extend(res["items"])
    task = metrics.get("task", {})
    if not harm and "correct" not in task:
        return None
    benign = metrics.get("over_refusal", {})
    refusal = ([v for name in sorted(benign) for v in benign[name]["items"]]
               if benign and all("items" in r for r in benign.values()) else None)
    return RunItems(harm, task.get("correct"), task.get("loglik_correct"), refusal)


def read_items(eval_dir: Path) -> RunItems | None:
    """The per-prompt outcomes of the evaluation in ``eval_dir``, or None (not evaluated, or an older run)."""
    path = eval_dir / "metrics.json"
    return run_items(json.loads(path.read_text())) if path.is_file() else None


def load_items(runs_dir: Path, rows: Sequence[dict[str, Any]]) -> dict[str, RunItems]:
    """``{run name: RunItems}`` for every row whose evaluation stored per-prompt outcomes."""
    found = {r["run"]: read_items(runs_dir / r["run"] / "eval") for r in rows}
    return {run: items for run, items in found.items() if items is not None}


def rate(values: Sequence[int | None]) -> dict[str, float | int | None]:
    """``{rate, low, high, k, n}`` of the 1s among the non-missing values (Wilson 95%)."""
    kept = [v for v in values if v is not None]
    return rate_with_interval(int(sum(kept)), len(kept))


def pooled(items: dict[str, RunItems], runs: Any, measure: str, judge: str | None = None) -> list[int | None]:
    """The outcomes of ``measure`` of every run in ``runs`` (run names) that stored them, one after the other."""
    return [v for run in runs if run in items for v in (items[run].get(measure, judge) or [])]


def paired_blocks(a: Sequence[Sequence[int | None]], b: Sequence[Sequence[int | None]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cell by cell, the prompts both runs have an outcome for, as two aligned 0/1 arrays."""
    blocks = []
    for xs, ys in zip(a, b, strict=True):
        if len(xs) != len(ys):
            raise ValueError(f"paired runs must share their prompts: {len(xs)} outcomes against {len(ys)}")
        keep = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
        if keep:
            blocks.append((np.array([x for x, _ in keep], float), np.array([y for _, y in keep], float)))
    return blocks


def grouped_blocks(pairs: Sequence[tuple[Sequence[int | None], Sequence[int | None], Any]]
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[Any]]:
    """``(blocks, groups)`` for :func:`paired_bootstrap` from ``(a, b, group key)`` triples, one per cell
    (cells with no prompt outcome on both sides are dropped with their key)."""
    blocks, groups = [], []
    for a, b, key in pairs:
        found = paired_blocks([a], [b])
        blocks += found
        groups += [key] * len(found)
    return blocks, groups


def paired_bootstrap(blocks: Sequence[tuple[np.ndarray, np.ndarray]], statistic: Callable[[float, float], float], *,
                     groups: Sequence[Any] | None = None, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(estimate, low, high)``: ``statistic(mean_a, mean_b)`` on the pooled prompts and its percentile
    95% interval over ``resamples`` draws, the same draw for both runs.

    Each block is a grid cell (one seed of one setting). Without ``groups`` a draw resamples prompts with
    replacement within each block. ``groups`` (one key per block, e.g. the cell's (attack, p)) makes it a
    two-stage bootstrap: in each group of ``m`` blocks (seeds) a draw first picks ``m`` blocks with
    replacement, then resamples the prompts of each pick, so the interval also carries the spread between
    training seeds. Blocks of a group must share their prompts (the same evaluation set); a group of one
    block draws exactly as without ``groups``. Resamples where the statistic is undefined are dropped."""
    if not blocks:
        return math.nan, math.nan, math.nan
    a, b = np.concatenate([x for x, _ in blocks]), np.concatenate([y for _, y in blocks])
    estimate = statistic(a.mean(), b.mean())
    keys = list(groups) if groups is not None else list(range(len(blocks)))
    if len(keys) != len(blocks):
        raise ValueError(f"groups: one key per block, got {len(keys)} for {len(blocks)} blocks")
    members = {k: [i for i, g in enumerate(keys) if g == k] for k in keys}
    for k, idx in members.items():
        if len({len(blocks[i][0]) for i in idx}) > 1:
            raise ValueError(f"group {k!r}: its blocks (seeds) must share their prompts, got sizes "
                             f"{sorted({len(blocks[i][0]) for i in idx})}")
    rng = np.random.default_rng(seed)
    sums_a, sums_b = np.zeros(resamples), np.zeros(resamples)
    for i, (xa, xb) in enumerate(blocks):
        group = members[keys[i]]
        if len(group) == 1:
            pick_a, pick_b = xa[None, :], xb[None, :]
            which = np.zeros(resamples, dtype=int)
        else:
            pick_a, pick_b = np.stack([blocks[j][0] for j in group]), np.stack([blocks[j][1] for j in group])
            which = rng.integers(0, len(group), size=resamples)
        idx = rng.integers(0, len(xa), size=(resamples, len(xa)))
        sums_a += pick_a[which[:, None], idx].sum(axis=1)
        sums_b += pick_b[which[:, None], idx].sum(axis=1)
    values = np.array([statistic(sa / len(a), sb / len(b)) for sa, sb in zip(sums_a, sums_b, strict=True)])
    values = values[np.isfinite(values)]
    if not len(values):
        return estimate, math.nan, math.nan
    return estimate, float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def difference(x: float, y: float) -> float:
    return x - y


def ratio(x: float, y: float) -> float:
    return x / y if y > 0 else math.nan


def discordant(blocks: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """``(only_a, only_b)``: the prompts where only the first run is 1 and where only the second is, summed
    over blocks (McNemar's discordant pairs)."""
    only_a = int(sum(((x == 1) & (y == 0)).sum() for x, y in blocks))
    only_b = int(sum(((x == 0) & (y == 1)).sum() for x, y in blocks))
    return only_a, only_b


def mcnemar(blocks: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Exact McNemar p-value on the prompts where exactly one of the two runs is 1, summed over blocks."""
    return mcnemar_exact(*discordant(blocks))


def runs_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """The fine-tuning runs as a frame: label, defense, attack, harmful_ratio, seed, run, model (one row each)."""
    cols = ["label", "defense", "attack", "harmful_ratio", "seed", "run", "model"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


def cells(frame: pd.DataFrame, label: str, ratio_: float | None = None, attack: str | None = None) -> dict[tuple, str]:
    """``{(attack, harmful ratio, seed): run}`` of ``label`` (optionally at one ratio / attack)."""
    sel = frame[frame["label"] == label]
    if ratio_ is not None:
        sel = sel[np.isclose(sel["harmful_ratio"].astype(float), ratio_)]
    if attack is not None:
        sel = sel[sel["attack"] == attack]
    return {(r.attack, float(r.harmful_ratio), int(r.seed)): r.run for r in sel.itertuples()}


@dataclass
class Comparison:
    """``label`` against ``baseline`` on one measure over the cells both ran (pooled prompts)."""

    runs: int
    value: dict[str, Any]
    base_value: dict[str, Any]
    diff: tuple[float, float, float]
    ratio: tuple[float, float, float]
    #: prompts where only ``label``'s run is 1, and where only ``baseline``'s is
    discordant: tuple[int, int]

    @property
    def p_value(self) -> float:
        """Exact McNemar p-value on the discordant prompts."""
        return mcnemar_exact(*self.discordant)


def compare(items: dict[str, RunItems], mine: dict[tuple, str], theirs: dict[tuple, str], measure: str,
            judge: str | None = None) -> Comparison | None:
    """Paired comparison of two labels' runs (``cells`` of each) on ``measure``; None when no cell is shared
    or a run has no per-prompt outcomes. Several seeds of one setting (attack, p) are resampled as seeds
    too (:func:`paired_bootstrap` with ``groups``)."""
    pairs = [(items[mine[c]].get(measure, judge), items[theirs[c]].get(measure, judge), c[:2]) for c in mine
             if c in theirs and mine[c] in items and theirs[c] in items]
    pairs = [(x, y, key) for x, y, key in pairs if x is not None and y is not None]
    if not pairs:
        return None
    blocks, groups = grouped_blocks(pairs)
    pooled_a = [v for x, _, _ in pairs for v in x]
    pooled_b = [v for _, y, _ in pairs for v in y]
    return Comparison(len(pairs), rate(pooled_a), rate(pooled_b), paired_bootstrap(blocks, difference, groups=groups),
                      paired_bootstrap(blocks, ratio, groups=groups), discordant(blocks))


def fmt_rate(r: dict[str, Any] | None) -> str:
    """``"12.3% [10.4, 14.5]"`` (n/a without data)."""
    if not r or not r.get("n"):
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def fmt_points(d: tuple[float, float, float]) -> str:
    """A difference of two rates in points with its interval: ``"-3.1 [-5.0, -1.2]"``."""
    est, low, high = d
    return "n/a" if math.isnan(est) else f"{100 * est:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]"


def fmt_ratio(r: tuple[float, float, float]) -> str:
    est, low, high = r
    return "n/a" if math.isnan(est) else f"{est:.2f} [{low:.2f}, {high:.2f}]"


def fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def comparison_frame(frame: pd.DataFrame, items: dict[str, RunItems], judge: str, baseline: str,
                     harmful_ratio: float) -> pd.DataFrame:
    """Every label against ``baseline`` at ``harmful_ratio``, paired over the cells both ran: ASR, both
    task accuracies and over-refusal of benign prompts (where the runs kept it per prompt), each with its
    interval, the difference with its bootstrap interval and McNemar's p."""
    base = cells(frame, baseline, harmful_ratio)
    out = []
    for label in sorted(frame["label"].unique(), key=lambda x: (x != baseline, x)):
        mine = cells(frame, label, harmful_ratio)
        if not mine:
            continue
        row: dict[str, Any] = {"defense": label, "runs": len(mine)}
        for measure, name in (("harm", "ASR"), ("task", "accuracy"), ("loglik", "accuracy (label LL)"),
                              ("refusal", "over-refusal")):
            c = compare(items, mine, base, measure, judge)
            if c is None:
                continue
            row[name] = fmt_rate(c.value)
            if label != baseline:
                row[f"{name} minus {baseline}, points"] = fmt_points(c.diff)
                row[f"{name}: McNemar p"] = fmt_p(c.p_value)
        out.append(row)
    return pd.DataFrame(out)


def variant_frame(frame: pd.DataFrame, items: dict[str, RunItems], judge: str) -> pd.DataFrame:
    """Every variant (a label that is not its defense's name: an ablation such as random selection, the
    authors' SPAG setting, 3x the updates) against its own defense on the cells (attack, p, seed) both
    ran, paired over the same prompts with seeds resampled (:func:`compare`): ASR and task accuracy of
    each, the difference with its interval and McNemar's p, and the difference in over-refusal of benign
    prompts where the runs kept it per prompt. Variants that share no cell with their
    defense (e.g. the pure-harmful attack at p = 1) are left out."""
    out = []
    labels = set(frame["label"])
    variants = frame.loc[(frame["label"] != frame["defense"]) & frame["defense"].isin(labels), ["label", "defense"]]
    for label, defense in sorted(set(map(tuple, variants.to_numpy()))):
        mine, theirs = cells(frame, label), cells(frame, defense)
        harm = compare(items, mine, theirs, "harm", judge)
        if harm is None:
            continue
        row: dict[str, Any] = {"variant": label, "against": defense, "cells": harm.runs}
        for name, c in (("ASR", harm), ("accuracy", compare(items, mine, theirs, "task"))):
            if c is not None:
                row.update({name: fmt_rate(c.value), f"its defense's {name}": fmt_rate(c.base_value),
                            f"{name} difference, points": fmt_points(c.diff), f"{name}: McNemar p": fmt_p(c.p_value)})
        # over-refusal: the difference only (its rates are in the table against the baseline)
        refusal = compare(items, mine, theirs, "refusal")
        if refusal is not None:
            row["over-refusal difference, points"] = fmt_points(refusal.diff)
        out.append(row)
    return pd.DataFrame(out)


def target_lines(frame: pd.DataFrame, items: dict[str, RunItems], judge: str, policy: Any) -> list[str]:
    """The claims of ``policy`` (a TargetsConfig) with intervals: per attack and pooled, ``method``'s ASR
    ratio to ``baseline``'s (met when the interval's upper end is <= ``asr_ratio``) and its accuracy
    difference (met when the interval's lower end is >= -``accuracy_margin``); then the lowest ASR among
    the defenses whose accuracy is within ``accuracy_loss`` of the baseline's."""
    base, method, p = policy.baseline, policy.method, policy.harmful_ratio
    mine, theirs = cells(frame, method, p), cells(frame, base, p)
    attacks = sorted({c[0] for c in mine if c in theirs})
    if not attacks:
        return []
    lines = [f"## Targets with intervals (judge `{judge}`, p = {p:g}; paired over the same prompts)", ""]
    rows = []
    for attack in [*attacks, None]:
        m = {c: r for c, r in mine.items() if attack is None or c[0] == attack}
        harm = compare(items, m, theirs, "harm", judge)
        task = compare(items, m, theirs, "task")
        if harm is None:
            continue
        row = {"attack": attack or "**all (pooled)**", "cells": harm.runs,
               f"{method} ASR": fmt_rate(harm.value), f"{base} ASR": fmt_rate(harm.base_value),
               "ASR ratio [95%]": fmt_ratio(harm.ratio),
               f"ratio <= {policy.asr_ratio:g}": ratio_verdict(harm.ratio, policy.asr_ratio)}
        if task is not None:
            margin = -policy.accuracy_margin
            row["accuracy difference, points"] = fmt_points(task.diff)
            row[f"within {100 * policy.accuracy_margin:g} point(s)"] = _verdict(task.diff[1] >= margin, task.diff[0] >= margin)
        rows.append(row)
    lines += [pd.DataFrame(rows).to_markdown(index=False), "",
              "Verdicts: **met** when the whole 95% interval meets the target, *point only* when the estimate meets "
              "it but the interval does not, **missed** otherwise. The ratio's interval is a paired bootstrap over "
              "prompts within each cell and, where a setting ran several seeds, over its seeds.", ""]
    lines += lowest_lines(frame, items, judge, policy)
    return lines


def _verdict(interval_ok: bool, point_ok: bool) -> str:
    return "**met**" if interval_ok else ("*point only*" if point_ok else "**missed**")


def ratio_verdict(ratio_: tuple[float, float, float], limit: float) -> str:
    """``ratio <= limit`` for ``(estimate, low, high)``: met at the interval's upper end, point only at the estimate."""
    return _verdict(ratio_[2] <= limit, ratio_[0] <= limit)


def sweep_checks(policy: Any, p: float) -> bool:
    """Whether the sweep's target is checked at harmful ratio ``p`` (up to ``policy.sweep_up_to``); above it the
    ratio is reported as measured."""
    return float(p) <= policy.sweep_up_to + 1e-9


def loses_more_than(diff: float, loss: float) -> bool:
    """Whether an accuracy difference ``diff`` (method minus baseline) is a loss of more than ``loss``; a loss
    of exactly ``loss`` (234 against 240 of 300 for 2 points) is within it, whatever the float rounding."""
    return diff < -loss - 1e-9


def setting_loses_accuracy(frame: pd.DataFrame, items: dict[str, RunItems], label: str, attack: str, p: float,
                           policy: Any) -> bool:
    """Whether ``label`` lost more than ``policy.accuracy_loss`` of task accuracy against the baseline in one
    attack setting: paired over the seeds both ran (the point estimate, as the lowest-ASR verdict reads it),
    or from the pooled rates where they share no seed; False where either has no task outcomes."""
    mine, base = cells(frame, label, p, attack), cells(frame, policy.baseline, p, attack)
    task = compare(items, mine, base, "task")
    if task is not None:
        return loses_more_than(task.diff[0], policy.accuracy_loss)
    acc, base_acc = rate(pooled(items, mine.values(), "task")), rate(pooled(items, base.values(), "task"))
    return bool(acc["n"] and base_acc["n"] and loses_more_than(acc["rate"] - base_acc["rate"], policy.accuracy_loss))


def lowest_lines(frame: pd.DataFrame, items: dict[str, RunItems], judge: str, policy: Any) -> list[str]:
    """Lowest ASR among the defenses (labels whose defense is their own name) whose pooled accuracy is
    within ``accuracy_loss`` of the baseline's (point estimate of the paired difference).

    Defenses need not run the same cells (one may cover four attacks and three seeds, another one cell), so
    a pooled rate over each one's own cells is no ranking. The lowest is the defense whose ASR, on the
    cells it shares with each other eligible defense, is below that defense's (point estimates; McNemar
    paired over those cells says whether significantly); when several qualify (they share no cell), the
    lowest pooled of them. Each comparison is printed over its shared cells, both rates side by side."""
    p, base = policy.harmful_ratio, policy.baseline
    labels = sorted({r.label for r in frame.itertuples() if r.label == r.defense})
    eligible, left_out = {}, []
    for label in labels:
        task = compare(items, cells(frame, label, p), cells(frame, base, p), "task")
        harm = compare(items, cells(frame, label, p), cells(frame, base, p), "harm", judge)
        if harm is None:
            continue
        if task is not None and loses_more_than(task.diff[0], policy.accuracy_loss):
            left_out.append(f"{label} (ASR {fmt_rate(harm.value)}, accuracy {fmt_points(task.diff)} points)")
            continue
        eligible[label] = harm
    if len(eligible) < 2:
        return []
    # each pair once: the baseline's from the eligibility pass, the others here (read in either direction)
    shared = {(label, base): harm for label, harm in eligible.items() if label != base}
    for a, b in combinations(sorted(x for x in eligible if x != base), 2):
        shared[a, b] = compare(items, cells(frame, a, p), cells(frame, b, p), "harm", judge)

    def versus(a: str, b: str) -> tuple[dict[str, Any], dict[str, Any], Comparison] | None:
        """``a``'s and ``b``'s ASR over the cells both ran, and their comparison; None when they share none."""
        if (a, b) in shared:
            c = shared[a, b]
            return None if c is None else (c.value, c.base_value, c)
        c = shared[b, a]
        return None if c is None else (c.base_value, c.value, c)

    unbeaten = [a for a in eligible
                if all(v is None or v[0]["rate"] < v[1]["rate"] for v in (versus(a, b) for b in eligible if b != a))]
    left = (f" Left out, more than {100 * policy.accuracy_loss:g} points below {base} on the estimate: "
            + "; ".join(left_out) + "." if left_out else "")
    head = (f"- Lowest ASR among the defenses within {100 * policy.accuracy_loss:g} points of {base}'s accuracy "
            f"(each compared with each other on the cells both ran): ")
    if not unbeaten:
        tests = [f"{a} {fmt_rate(v[0])} against {b} {fmt_rate(v[1])} on {v[2].runs} cell(s), McNemar p "
                 f"{fmt_p(v[2].p_value)}" for a, b in combinations(sorted(eligible), 2) if (v := versus(a, b))]
        return [head + "**none**: no defense is below every other on the cells they share; " + "; ".join(tests)
                + "." + left, ""]
    best = min(unbeaten, key=lambda k: eligible[k].value["rate"])
    tests = []
    for other in sorted(eligible):
        if other == best:
            continue
        v = versus(best, other)
        tests.append(f"{other}: no cell in common" if v is None else
                     f"{other}, on the {v[2].runs} cell(s) both ran: {best} {fmt_rate(v[0])} against "
                     f"{fmt_rate(v[1])}, McNemar p {fmt_p(v[2].p_value)}")
    return [head + f"**{best}**, {fmt_rate(eligible[best].value)} over its {eligible[best].runs} cell(s) shared with "
            f"{base}; against " + "; ".join(tests) + "." + left, ""]


def sweep_attack(frame: pd.DataFrame, label: str) -> str | None:
    """The attack ``label`` ran at the most harmful ratios above 0 (None when it ran at none)."""
    runs = frame[(frame["label"] == label) & (frame["harmful_ratio"].astype(float) > 0)]
    return None if runs.empty else str(runs.groupby("attack")["harmful_ratio"].nunique().idxmax())


def sweep_target_lines(frame: pd.DataFrame, items: dict[str, RunItems], judge: str, policy: Any) -> list[str]:
    """The p sweep's claim with intervals: on the attack the method ran at the most harmful ratios, at each
    ratio where both ran (seeds pooled), ``method``'s ASR ratio to ``baseline``'s (paired bootstrap over
    prompts within cells), checked against ``asr_ratio`` up to ``sweep_up_to`` and reported as measured
    above it; then each of ``policy.pairs`` (e.g. the pure-harmful attack's labels) on that attack, as
    measured. Empty unless the method ran at two ratios or more, or an extra pair ran there."""
    attack = sweep_attack(frame, policy.method)
    if attack is None:
        return []
    rows = []
    for n, (mine, base) in enumerate([(policy.method, policy.baseline), *map(tuple, policy.pairs)]):
        ratios = sorted({float(p) for p in frame.loc[frame["label"] == mine, "harmful_ratio"]})
        found = [(p, compare(items, cells(frame, mine, p, attack), cells(frame, base, p, attack), "harm", judge))
                 for p in ratios if p > 0]
        shown = [(p, harm) for p, harm in found if harm is not None]
        if n == 0 and len(shown) < 2:
            continue
        for p, harm in shown:
            task = compare(items, cells(frame, mine, p, attack), cells(frame, base, p, attack), "task")
            checked = n == 0 and sweep_checks(policy, p)
            rows.append({"pair": f"{mine} / {base}", "p": f"{p:g}", "cells": harm.runs, "method ASR": fmt_rate(harm.value),
                         "baseline ASR": fmt_rate(harm.base_value), "ASR ratio [95%]": fmt_ratio(harm.ratio),
                         f"ratio <= {policy.asr_ratio:g}": ratio_verdict(harm.ratio, policy.asr_ratio) if checked else "as measured",
                         "McNemar p": fmt_p(harm.p_value),
                         "accuracy difference, points": fmt_points(task.diff) if task is not None else "n/a"})
    if not rows:
        return []
    return [f"## The p sweep: {policy.method}'s ASR against {policy.baseline}'s at each harmful ratio (attack {attack}, "
            f"judge `{judge}`; checked up to p = {policy.sweep_up_to:g}, seeds pooled, paired over the same prompts)", "",
            pd.DataFrame(rows).to_markdown(index=False), ""]


def sweep_pairs_frame(frame: pd.DataFrame, items: dict[str, RunItems], judge: str, policy: Any) -> pd.DataFrame:
    """The p sweep, ``policy.method`` against every other defense (a label that is its defense's name, other
    than the baseline, which the sweep's target table covers) that ran on the sweep's attack at two harmful
    ratios or more: at each ratio both ran (seeds pooled), both ASRs with their intervals, the paired
    difference, the discordant prompts and the exact McNemar p; the task accuracy difference beside them."""
    method = policy.method
    attack = sweep_attack(frame, method)
    if attack is None:
        return pd.DataFrame()
    on_attack = frame[(frame["attack"] == attack) & (frame["harmful_ratio"].astype(float) > 0)]
    swept = on_attack[on_attack["label"] == on_attack["defense"]].groupby("label")["harmful_ratio"].nunique()
    rows = []
    for label in sorted(swept[swept >= 2].index):
        if label in (method, policy.baseline):
            continue
        for p in sorted({float(p) for p in on_attack.loc[on_attack["label"] == label, "harmful_ratio"]}):
            mine, theirs = cells(frame, method, p, attack), cells(frame, label, p, attack)
            harm = compare(items, mine, theirs, "harm", judge)
            if harm is None:
                continue
            task = compare(items, mine, theirs, "task")
            rows.append({"defense": label, "p": f"{p:g}", "cells": harm.runs, f"{method} ASR": fmt_rate(harm.value),
                         "its ASR": fmt_rate(harm.base_value), f"{method} minus it, points": fmt_points(harm.diff),
                         f"discordant (only {method} / only it)": f"{harm.discordant[0]} / {harm.discordant[1]}",
                         "McNemar p": fmt_p(harm.p_value),
                         "accuracy difference, points": fmt_points(task.diff) if task is not None else "n/a"})
    return pd.DataFrame(rows)


def sweep_frame(frame: pd.DataFrame, items: dict[str, RunItems], judge: str) -> pd.DataFrame:
    """ASR (pooled over seeds and families, Wilson interval) per label and harmful ratio, on the attack
    with the most harmful ratios; the p = 0 control (attack ``none``) is the p = 0 column."""
    sweep = frame[frame["attack"] != "none"]
    if sweep.empty:
        return pd.DataFrame()
    counts = sweep.groupby("attack")["harmful_ratio"].nunique()
    attack = counts.idxmax()
    if counts.max() < 2:
        return pd.DataFrame()
    sel = pd.concat([sweep[sweep["attack"] == attack], frame[frame["attack"] == "none"]])
    out = []
    for (label, p), group in sel.groupby(["label", "harmful_ratio"]):
        values, acc = pooled(items, group["run"], "harm", judge), pooled(items, group["run"], "task")
        if values:
            out.append({"attack": attack, "defense": label, "p": float(p), "runs": len(group), **{
                f"asr_{k}": v for k, v in rate(values).items()}, **{f"acc_{k}": v for k, v in rate(acc).items()}})
    return pd.DataFrame(out)


def worst_case_frame(frame: pd.DataFrame, items: dict[str, RunItems], judge: str, policy: Any) -> pd.DataFrame:
    """Per label, the highest ASR over its attack settings (attack, p > 0; pooled over seeds) whose task
    accuracy is at most ``accuracy_loss`` below the baseline's in the same setting, paired over the seeds both
    ran (:func:`setting_loses_accuracy`); settings where fine-tuning lost more accuracy than that are not
    counted (the attack or the defense broke the model)."""
    attacked = frame[(frame["attack"] != "none") & (frame["harmful_ratio"].astype(float) > 0)]
    out = []
    for label, group in attacked.groupby("label"):
        worst, where, counted = None, None, 0
        for (attack, p), runs in group.groupby(["attack", "harmful_ratio"]):
            harm = pooled(items, runs["run"], "harm", judge)
            if not harm or setting_loses_accuracy(frame, items, label, attack, float(p), policy):
                continue
            counted += 1
            r = rate(harm)
            if worst is None or r["rate"] > worst["rate"]:
                worst, where = r, f"{attack}, p = {float(p):g}"
        if worst is not None:
            out.append({"defense": label, "settings counted": counted, "worst-case ASR": fmt_rate(worst), "at": where})
    return pd.DataFrame(out)


def task_gain_lines(frame: pd.DataFrame, items: dict[str, RunItems], start_items: dict[str, RunItems], policy: Any) -> list[str]:
    """Does the task move? ``baseline``'s accuracy (generated answers) minus its start model's, paired over
    the same task items: at the headline harmful ratio and in the p = 0 control (pooled over their runs),
    met when the interval's lower end reaches ``min_task_gain``."""
    base = frame[frame["label"] == policy.baseline]
    lines = []
    for name, sel in (("p = 0 (benign fine-tuning)", base[base["attack"] == "none"]),
                      (f"p = {policy.harmful_ratio:g}", base[(base["attack"] != "none")
                                                           & np.isclose(base["harmful_ratio"].astype(float), policy.harmful_ratio)])):
        pairs = [(items[r.run].task, start_items[r.model].task, (r.model, r.attack, float(r.harmful_ratio)))
                 for r in sel.itertuples()
                 if r.model in start_items and items[r.run].task is not None and start_items[r.model].task is not None]
        blocks, groups = grouped_blocks(pairs)
        if not blocks:
            continue
        est = paired_bootstrap(blocks, difference, groups=groups)
        goal = policy.min_task_gain
        lines.append(f"- {policy.baseline}'s task accuracy gain over the start model, {name}, {len(pairs)} run(s): "
                     f"{fmt_points(est)} points (paired over the same items; target >= {100 * goal:g}: "
                     f"{_verdict(est[1] >= goal, est[0] >= goal)}), McNemar p {fmt_p(mcnemar(blocks))}")
    return [*lines, ""] if lines else []


def inference_section(rows: Sequence[dict[str, Any]], runs_dir: Path, judge: str, policy: Any,
                      plot_dir: Path | None = None, starts: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The report's section built on per-prompt outcomes (empty when no run has them); ``starts``: the
    start models' rows, for the task-gain check."""
    from spard.bench.runner import start_eval_dir

    items = load_items(runs_dir, rows)
    if not items:
        return []
    frame = runs_frame([r for r in rows if r["run"] in items])
    found = {s["model"]: read_items(start_eval_dir(runs_dir.parent, s["model"])) for s in starts}
    start_items = {model: got for model, got in found.items() if got is not None}
    lines = target_lines(frame, items, judge, policy)
    lines += task_gain_lines(frame, items, start_items, policy)
    table = comparison_frame(frame, items, judge, policy.baseline, policy.harmful_ratio)
    if len(table) > 1:
        lines += [f"## Every defense against {policy.baseline} at p = {policy.harmful_ratio:g} (judge `{judge}`; "
                  "95% intervals; paired over the cells both ran)", "", table.fillna("").to_markdown(index=False), ""]
    variants = variant_frame(frame, items, judge)
    if not variants.empty:
        lines += [f"## Variants against their own defense (judge `{judge}`; paired over the cells both ran, seeds "
                  "resampled)", "",
                  variants.fillna("").to_markdown(index=False), ""]
    worst = worst_case_frame(frame, items, judge, policy)
    if not worst.empty:
        lines += [f"## Worst case over attack settings at <= {100 * policy.accuracy_loss:g} points accuracy loss against "
                  f"{policy.baseline} (judge `{judge}`)", "", worst.to_markdown(index=False), ""]
    lines += sweep_target_lines(frame, items, judge, policy)
    pairs = sweep_pairs_frame(frame, items, judge, policy)
    if not pairs.empty:
        lines += [f"## The p sweep: {policy.method} against each other swept defense (attack "
                  f"{sweep_attack(frame, policy.method)}, judge `{judge}`; seeds pooled, paired over the same prompts)", "",
                  pairs.to_markdown(index=False), ""]
    sweep = sweep_frame(frame, items, judge)
    if not sweep.empty:
        shown = sweep.assign(ASR=[fmt_rate({"rate": r.asr_rate, "low": r.asr_low, "high": r.asr_high, "n": r.asr_n})
                                  for r in sweep.itertuples()],
                             accuracy=[fmt_rate({"rate": r.acc_rate, "low": r.acc_low, "high": r.acc_high, "n": r.acc_n})
                                       for r in sweep.itertuples()])
        pivot = shown.pivot(index="defense", columns="p", values="ASR").fillna("")
        pivot.columns = [f"p = {c:g}" for c in pivot.columns]
        lines += [f"## ASR against the harmful ratio (attack {sweep['attack'].iloc[0]}, judge `{judge}`, pooled over "
                  "seeds; p = 0 is the benign fine-tuning control)", "", pivot.reset_index().to_markdown(index=False), ""]
        if plot_dir is not None:
            from spard.bench.plots import plot_sweep

            plot_sweep(sweep, plot_dir / "asr_vs_p.png")
    return lines
