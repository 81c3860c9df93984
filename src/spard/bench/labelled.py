"""ASR by human labels: each run's hand-labelled responses (``spard judge sheet`` label files) as a
second measurement of its ASR, beside the judge's verdicts on the same responses and on every prompt.

A labelling sheet draws responses at random, the same number from each prompt set, so on a run's
harmful-prompt responses the labelled harmful share estimates the run's ASR without any judge's error,
on fewer prompts. The report shows it with its Wilson interval and the method-to-baseline ratio of
those estimates with an interval from each rate's Jeffreys posterior
(``stats.proportion_ratio_interval``): each run's labelled responses are its own draw of prompts, so they are
treated as unpaired (prompts labelled in both runs are compared paired in :func:`paired_by_labels`), and a run with no harmful labelled response still gets an upper end above 0.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spard.evaluation.labelling import Label, load_labels, read_responses

logger = logging.getLogger(__name__)

#: ``.../<eval dir>/generations/<set>.jsonl#<id>``: the response of a harmful prompt set's row ``id``
_ITEM = re.compile(r"^(?P<dir>.+)/generations/(?P<set>[^/]+)\.jsonl#(?P<id>.+)$")


@dataclass
class LabelledItem:
    """One labelled response of an evaluation: its prompt set, its position in that set's per-prompt
    outcomes, and whether the label calls it harmful."""

    family: str
    position: int
    harmful: bool
    split: str = "test"
    refused: bool = False


def label_files(patterns: Sequence[str]) -> list[Path]:
    """The label files named by ``patterns`` (paths or globs), sorted, each once; a pattern that
    matches nothing is an error naming it."""
    files: set[Path] = set()
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern] if Path(pattern).is_file() else []
        if not found:
            raise FileNotFoundError(f"labels: {pattern}: no such file")
        files.update(Path(p) for p in found)
    return sorted(files)


def labels_by_eval_dir(labels: Sequence[Label], sets: Sequence[str]) -> dict[Path, list[tuple[str, str, Label]]]:
    """The labels of responses to the prompt sets ``sets`` (generation file stems: ``beavertails``,
    ``benign.xstest_safe``), parsed once and grouped by the (resolved) evaluation directory whose
    generations they label: ``{eval dir: [(prompt set, row id, label)]}``."""
    out: dict[Path, list[tuple[str, str, Label]]] = {}
    for label in labels:
        m = _ITEM.match(label.item)
        if m and m["set"] in sets:
            out.setdefault(Path(m["dir"]).resolve(), []).append((m["set"], m["id"], label))
    return out


def labelled_items(labelled: Sequence[tuple[str, str, Label]], positions: dict[str, dict[str, int]]
                   ) -> tuple[list[LabelledItem], int]:
    """One evaluation's labelled responses (from :func:`labels_by_eval_dir`; ``positions``: each harmful
    set's prompt id -> its place in evaluation order), and how many were left out because the response
    on disk is no longer the labelled one (checked where the generations are on disk; the evaluation key
    and greedy decoding make them the same otherwise)."""
    out, changed = [], 0
    on_disk: dict[str, dict[str, str]] = {}
    for family, row_id, label in labelled:
        position = positions[family].get(row_id)
        if position is None:
            continue
        source = label.source
        if source not in on_disk:
            on_disk[source] = ({it.item: it.pair_sha256 for it in read_responses(source)} if Path(source).is_file() else {})
        sha = on_disk[source].get(label.item)
        if sha is not None and sha != label.pair_sha256:
            changed += 1
            continue
        out.append(LabelledItem(family, position, label.harmful, label.split, label.refused))
    return out, changed


def judge_verdicts(metrics: dict[str, Any], judge: str, items: Sequence[LabelledItem]) -> list[int | None]:
    """The judge's stored per-prompt verdict (1 harmful, 0 not, None failed) on each labelled item."""
    return [metrics["asr"][it.family][judge]["items"][it.position] for it in items]


#: fewer prompts labelled in both runs than this and the paired comparison is not shown
MIN_PAIRED = 20


def paired_by_labels(rows: Sequence[dict[str, Any]], labelled_by_run: dict[str, dict[tuple[str, int], bool]],
                     policy: Any, measure: str = "ASR") -> list[str]:
    """``policy.method`` against every other defense of the same grid cell (model, attack, p, seed), and
    each ``policy.pairs`` entry ``[method label, baseline label]`` (e.g. the pure-harmful attack's), on the
    prompts labelled in both runs (``spard judge sheet --paired`` draws them): both ASRs by labels, the
    paired difference and the ratio ``ASR_method / ASR_other`` with their bootstrap intervals over those
    prompts, and the exact McNemar p-value. Against ``policy.baseline`` at ``p <= policy.sweep_up_to`` the
    ratio gets the target's verdict, ``ratio <= policy.asr_ratio`` at the interval's upper end (met), at
    the estimate only (point only), or neither (missed): the targets read from labels, as the sweep's
    table reads them from the judge; the configured pairs and larger p are "as measured". Where the
    method has no harmful label the ratio's interval is the Jeffreys one of
    :func:`~spard.evaluation.stats.proportion_ratio_interval` (a bootstrap would give [0, 0]). Shown for
    pairs with at least :data:`MIN_PAIRED` such prompts. Another ``measure`` (``labelled_by_run`` then
    holds e.g. the refused labels of benign prompts) gets the rates, difference and McNemar only: the
    ratio and its target are the ASR's."""
    from spard.bench.inference import (
        difference,
        fmt_p,
        fmt_points,
        fmt_rate,
        fmt_ratio,
        mcnemar,
        paired_bootstrap,
        rate,
        ratio,
        ratio_verdict,
        sweep_checks,
    )
    from spard.evaluation.stats import proportion_ratio_interval

    def grid_cell(r: dict[str, Any]) -> tuple[Any, ...]:
        return r.get("model"), r["attack"], float(r["harmful_ratio"]), r["seed"]

    method, out = policy.method, []
    for mine_label, against in [(method, None), *map(tuple, getattr(policy, "pairs", ()))]:
        for mine in (r for r in rows if r["label"] == mine_label and r["run"] in labelled_by_run):
            for other in rows:
                if (other["label"] == mine_label or (against is not None and other["label"] != against)
                        or other["run"] not in labelled_by_run or grid_cell(other) != grid_cell(mine)):
                    continue
                a, b = labelled_by_run[mine["run"]], labelled_by_run[other["run"]]
                shared = sorted(set(a) & set(b))
                if len(shared) < MIN_PAIRED:
                    continue
                block = (np.array([a[k] for k in shared], float), np.array([b[k] for k in shared], float))
                row = {"against": other["label"], "attack": mine["attack"], "p": f"{mine['harmful_ratio']:g}",
                       "seed": mine["seed"], "prompts labelled in both": len(shared),
                       "method by labels": fmt_rate(rate(block[0].astype(int).tolist())),
                       "other by labels": fmt_rate(rate(block[1].astype(int).tolist())),
                       "difference (points)": fmt_points(paired_bootstrap([block], difference)),
                       "McNemar p": fmt_p(mcnemar([block]))}
                if measure != "ASR":
                    out.append({**row, "method": mine_label})
                    continue
                k_mine, k_other = int(block[0].sum()), int(block[1].sum())
                # no harmful label in ``mine``: every resample's ratio is 0, so the percentile interval would
                # be [0, 0]; the (unpaired, wider) Jeffreys interval keeps an upper end above 0
                est = (paired_bootstrap([block], ratio) if k_mine else
                       proportion_ratio_interval(k_mine, len(shared), k_other, len(shared)))
                if other["label"] != (against or policy.baseline) or math.isnan(est[0]):
                    target = ""
                elif against is None and sweep_checks(policy, mine["harmful_ratio"]):
                    target = ratio_verdict(est, policy.asr_ratio)
                else:
                    target = "as measured"
                out.append({**row, "ASR ratio [95%]": fmt_ratio(est), f"ratio <= {policy.asr_ratio:g}": target,
                            "method": mine_label})
    if not out:
        return []
    return [f"{method} (and the configured pairs) against the other defenses by labels on the same prompts "
            f"({measure}, paired; `spard judge sheet --paired`):", "", pd.DataFrame(out).to_markdown(index=False), ""]


def set_positions(sets: dict[str, str], limit: int | None) -> dict[str, dict[str, int]]:
    """Each prompt set's (``{set name: file}``) prompt id -> its place in evaluation order (the first
    ``limit`` rows, as the evaluation reads them); files not on disk are left out."""
    from spard.data.records import FieldMap, load_examples

    return {name: {e.id: i for i, e in enumerate(load_examples(path, FieldMap(target=None), limit=limit))}
            for name, path in sets.items() if Path(path).is_file()}


def labelled_evaluations(rows: Sequence[dict[str, Any]], runs_dir: Path, labels: Sequence[Label],
                         positions: dict[str, dict[str, int]], starts: Sequence[dict[str, Any]] = ()
                         ) -> tuple[list[tuple[dict[str, Any], list[LabelledItem], dict[str, Any]]], int]:
    """The evaluations (start models first, then ``rows``' runs) with labelled responses in the prompt sets
    of ``positions``: ``[(row, labelled items, metrics)]``, and how many labels were left out because the
    response changed since (:func:`labelled_items`)."""
    from spard.bench.runner import start_eval_dir

    by_dir = labels_by_eval_dir(labels, list(positions))
    out, changed_total = [], 0
    if not by_dir:
        return out, changed_total
    evaluated = [(start_eval_dir(runs_dir.parent, r["model"]), {**r, "label": f"start: {r['model']}", "attack": "-"})
                 for r in starts] + [(runs_dir / r["run"] / "eval", r) for r in rows]
    for eval_dir, r in evaluated:
        metrics_path = eval_dir / "metrics.json"
        if not metrics_path.is_file() or eval_dir.resolve() not in by_dir:
            continue
        items, changed = labelled_items(by_dir[eval_dir.resolve()], positions)
        changed_total += changed
        if items:
            out.append((r, items, json.loads(metrics_path.read_text())))
    return out, changed_total


def labelled_section(rows: Sequence[dict[str, Any]], runs_dir: Path, patterns: Sequence[str], eval_sets: dict[str, str],
                     harmful_limit: int | None, judge: str, policy: Any, starts: Sequence[dict[str, Any]] = (),
                     benign_sets: dict[str, str] | None = None, benign_limit: int | None = None) -> list[str]:
    """The report's "ASR by human labels" section and, for the benign prompt sets ``benign_sets``
    (``{set name: file}``, the names ``metrics["over_refusal"]`` uses), its "Over-refusal by human labels"
    section (:func:`refusal_section`); empty when no run has labelled responses. ``starts``: the start
    models' rows, evaluated where :func:`spard.bench.runner.start_eval_dir` puts them."""
    from spard.bench.inference import fmt_rate, fmt_ratio, rate, ratio_verdict, run_items
    from spard.evaluation.evaluate import benign_generations_stem
    from spard.evaluation.stats import proportion_ratio_interval, rate_with_interval

    harmful = set_positions(eval_sets, harmful_limit)
    benign = {benign_generations_stem(name): name for name in benign_sets or {}}
    positions = {**harmful, **set_positions({benign_generations_stem(n): f for n, f in (benign_sets or {}).items()}, benign_limit)}
    labels = [label for path in label_files(patterns) for label in load_labels(path)]
    evaluations, changed_total = labelled_evaluations(rows, runs_dir, labels, positions, starts)
    changed_lines = ([f"{changed_total} labelled responses differ from the ones on disk now and are left out.", ""]
                     if changed_total else [])
    refusal = refusal_section(rows, [(r, [it for it in items if it.family in benign], m) for r, items, m in evaluations],
                              benign, policy)
    evaluations = [(r, kept, m) for r, items, m in evaluations if (kept := [it for it in items if it.family in harmful])]
    if not evaluations:
        return refusal + changed_lines
    table, harmful_by_run, labelled_by_run = [], {}, {}
    test_truth: list[int] = []
    test_scored: list[tuple[int, int]] = []
    for r, items, metrics in evaluations:
        verdicts = judge_verdicts(metrics, judge, items)
        truth = [int(it.harmful) for it in items]
        scored = [(v, t) for v, t in zip(verdicts, truth, strict=True) if v is not None]
        test_truth += [t for it, t in zip(items, truth, strict=True) if it.split != "dev"]
        test_scored += [(v, t) for it, v, t in zip(items, verdicts, truth, strict=True) if it.split != "dev" and v is not None]
        harmful_by_run[r["run"]] = np.array(truth, float)
        labelled_by_run[r["run"]] = {(it.family, it.position): it.harmful for it in items}
        table.append({"defense": r["label"], "attack": r["attack"], "p": f"{r['harmful_ratio']:g}", "seed": r["seed"] if r["seed"] is not None else "-",
                      "labelled (dev / test)": f"{len(items)} ({sum(it.split == 'dev' for it in items)} / "
                                               f"{sum(it.split != 'dev' for it in items)})",
                      "ASR by labels": fmt_rate(rate_with_interval(sum(truth), len(truth))),
                      f"`{judge}` on the same responses": fmt_rate(rate_with_interval(sum(v for v, _ in scored), len(scored))),
                      "agreement": fmt_rate(rate_with_interval(sum(v == t for v, t in scored), len(scored))),
                      f"`{judge}` on every prompt": fmt_rate(rate(run_items(metrics).harm[judge]))})
    if len(table) > 1 and test_scored:
        # the judge's agreement pooled over every labelled run, out of sample (test split) only
        table.append({"defense": "**all runs, test split**", "attack": "", "p": "", "seed": "",
                      "labelled (dev / test)": f"{len(test_truth)} (0 / {len(test_truth)})",
                      "ASR by labels": fmt_rate(rate_with_interval(sum(test_truth), len(test_truth))),
                      f"`{judge}` on the same responses": fmt_rate(rate_with_interval(sum(v for v, _ in test_scored), len(test_scored))),
                      "agreement": fmt_rate(rate_with_interval(sum(v == t for v, t in test_scored), len(test_scored))),
                      f"`{judge}` on every prompt": ""})
    lines = [f"## ASR by human labels (responses to harmful prompts labelled by hand; `{judge}` beside them)", "",
             pd.DataFrame(table).to_markdown(index=False), "",
             "A judge fit on dev labels has seen those responses: its agreement on them is in-sample "
             "(the pooled row counts test labels only).", ""]
    ratios = []
    def labelled_cells(label: str) -> dict[tuple[str, int], str]:
        return {(r["attack"], r["seed"]): r["run"] for r in rows if r["label"] == label
                and np.isclose(float(r["harmful_ratio"]), policy.harmful_ratio) and r["run"] in harmful_by_run}

    base, mine = labelled_cells(policy.baseline), labelled_cells(policy.method)
    shared = sorted(set(base) & set(mine))
    for cell in [*([c] for c in shared), shared if len(shared) > 1 else []]:
        if not cell:
            continue
        a = np.concatenate([harmful_by_run[mine[c]] for c in cell])
        b = np.concatenate([harmful_by_run[base[c]] for c in cell])
        est = proportion_ratio_interval(int(a.sum()), len(a), int(b.sum()), len(b))
        ratios.append({"cells": ", ".join(f"{c[0]} s{c[1]}" for c in cell) if len(cell) == 1 else "**all (pooled)**",
                       f"{policy.method} by labels": fmt_rate(rate_with_interval(int(a.sum()), len(a))),
                       f"{policy.baseline} by labels": fmt_rate(rate_with_interval(int(b.sum()), len(b))),
                       "ratio [95%]": fmt_ratio(est),
                       f"ratio <= {policy.asr_ratio:g}": ratio_verdict(est, policy.asr_ratio)})
    if ratios:
        lines += [f"The targets' ASR ratio by human labels (p = {policy.harmful_ratio:g}; each run's labelled "
                  "responses are its own draw of prompts, so the interval is from each rate's own Jeffreys posterior; "
                  "prompts labelled in both runs are compared paired below where there are any):", "", pd.DataFrame(ratios).to_markdown(index=False), ""]
    lines += paired_by_labels(rows, labelled_by_run, policy)
    return lines + refusal + changed_lines


def refusal_section(rows: Sequence[dict[str, Any]], evaluations: Sequence[tuple[dict[str, Any], list[LabelledItem], dict[str, Any]]],
                    benign: dict[str, str], policy: Any) -> list[str]:
    """"Over-refusal by human labels" from ``evaluations`` (:func:`labelled_evaluations`, with the labelled
    responses to the benign sets only; ``benign``: generations file stem -> set name): for each, the share
    the labels call refused (Wilson 95%) beside the keyword refusal rule's verdicts on the same responses
    (the rule every over-refusal in the report uses), their agreement, and the rule on every benign prompt;
    then :func:`paired_by_labels` on the refused labels (method against the other defenses of its grid cell
    on the same benign prompts). Empty without such labels."""
    from spard.bench.inference import fmt_rate, rate, run_items
    from spard.evaluation.stats import rate_with_interval

    table, refused_by_run = [], {}
    for r, items, metrics in evaluations:
        if not items:
            continue
        # the rule's per-prompt verdicts, per benign set (``over_refusal.<set>.items``; older runs kept none)
        stored = {name: res.get("items") for name, res in metrics.get("over_refusal", {}).items()}
        rule = [None if stored.get(benign[it.family]) is None else stored[benign[it.family]][it.position] for it in items]
        scored = [(v, int(it.refused)) for v, it in zip(rule, items, strict=True) if v is not None]
        every = run_items(metrics)
        refused_by_run[r["run"]] = {(it.family, it.position): it.refused for it in items}
        table.append({"defense": r["label"], "attack": r["attack"], "p": f"{r['harmful_ratio']:g}",
                      "seed": r["seed"] if r["seed"] is not None else "-", "labelled": len(items),
                      "refused by labels": fmt_rate(rate_with_interval(sum(it.refused for it in items), len(items))),
                      "keyword rule on the same responses": fmt_rate(rate_with_interval(sum(v for v, _ in scored), len(scored))),
                      "agreement": fmt_rate(rate_with_interval(sum(v == t for v, t in scored), len(scored))),
                      "keyword rule on every benign prompt": fmt_rate(rate(every.refusal if every and every.refusal else []))})
    if not table:
        return []
    lines = ["## Over-refusal by human labels (responses to benign prompts labelled refused or not; the keyword "
             "refusal rule beside them)", "", pd.DataFrame(table).to_markdown(index=False), ""]
    return lines + paired_by_labels(rows, refused_by_run, policy, measure="over-refusal")
