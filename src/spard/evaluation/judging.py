"""Judging a file of responses, appending verdicts as they come so an interrupted run resumes.

Each response ends with exactly one row in the output: a verdict, or a failure (``error`` set).
Failed rows are retried on the next run unless ``retry_failed=False``. An output is resumed only
under the same judge settings (its fingerprint, :func:`spard.io.claim_output`), and a verdict is
reused only for the very (prompt, response) it judged (``pair_sha256`` in each row): other responses
under the same ids are judged again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from spard.data.records import write_jsonl
from spard.evaluation.judges.base import Judge, Verdict
from spard.io import JsonlAppender, claim_output, read_jsonl

logger = logging.getLogger(__name__)


def _verdicts(judge: Judge, prompts: Sequence[str], responses: Sequence[str], chunk: int) -> Iterator[tuple[int, Verdict]]:
    if hasattr(judge, "iter_judge"):
        yield from judge.iter_judge(prompts, responses)
        return
    for start in range(0, len(prompts), chunk):
        for offset, verdict in enumerate(judge.judge(prompts[start : start + chunk], responses[start : start + chunk])):
            yield start + offset, verdict


def judge_rows(
    rows: Sequence[dict[str, Any]],
    judge: Judge,
    *,
    output: str | Path | None = None,
    retry_failed: bool = True,
    chunk: int = 32,
    progress: bool = True,
    on_mismatch: str = "error",
) -> list[dict[str, Any]]:
    """Judge ``rows`` (``id``, ``prompt``, ``response``); returns one verdict row per input row, in order.

    ``on_mismatch`` (``error`` or ``restart``): what to do with an output made by another judge setting."""
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("response ids must be unique")
    pair = {r["id"]: pair_sha256(r["prompt"], r["response"]) for r in rows}
    done: dict[str, dict[str, Any]] = {}
    others: list[dict[str, Any]] = []
    if output is not None and claim_output(output, judge.fingerprint, on_mismatch=on_mismatch):
        for row in read_jsonl(output):
            if row.get("id") not in pair:
                others.append(row)
            elif row.get("pair_sha256") == pair[row["id"]]:
                done[row["id"]] = row
    todo = [i for i, r in enumerate(rows) if r["id"] not in done or (retry_failed and done[r["id"]].get("error"))]
    if output is not None and len(todo) < len(rows):
        logger.info("%s: %d of %d verdicts already there, judging the rest", output, len(rows) - len(todo), len(rows))
    writer = JsonlAppender(output) if output is not None else None
    try:
        with tqdm(total=len(todo), desc=f"judging ({judge.name})", disable=not progress or not todo) as bar:
            prompts = [rows[i]["prompt"] for i in todo]
            responses = [rows[i]["response"] for i in todo]
            for pos, verdict in _verdicts(judge, prompts, responses, chunk):
                rid = rows[todo[pos]]["id"]
                row = {"id": rid, "judge": judge.name, "pair_sha256": pair[rid], **verdict.as_dict()}
                done[row["id"]] = row
                if writer:
                    writer.write(row)
                bar.update(1)
    finally:
        if writer:
            writer.close()
    result = [done[i] for i in ids]
    if output is not None:
        write_jsonl(output, result + others)
    failed = sum(1 for r in result if r.get("error"))
    if failed:
        logger.warning("%s: %d of %d responses could not be judged", judge.name, failed, len(result))
    return result


def pair_sha256(prompt: str, response: str) -> str:
    """A short hash of one judged (prompt, response) pair."""
    return hashlib.sha256(f"{prompt}\x00{response}".encode()).hexdigest()[:16]


def as_verdicts(rows: Sequence[dict[str, Any]]) -> list[Verdict]:
    return [Verdict(r.get("harmful"), r.get("score"), r.get("reason", ""), r.get("error")) for r in rows]
