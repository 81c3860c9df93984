"""The discriminating alignment (issue 17): mixed sources, self-distillation, over-refusal sets everywhere."""

from __future__ import annotations

import json

import pytest

from spard.cli import main
from spard.config import from_dict
from spard.training.align import AlignConfig, AlignSource, pick_source, run_alignment


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_keep_picks_refusals_or_answers_by_the_refusal_rule(tmp_path):
    import random

    from spard.evaluation.judges.keyword import is_refusal

    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "safe": "I cannot help with that." if i % 3 else f"Try this {i}."}) + "\n"
                            for i in range(30)))
    refusals = pick_source(AlignSource(str(data), "safe", n=50, keep="refusal"), random.Random(0))
    answers = pick_source(AlignSource(str(data), "safe", n=50, keep="answer"), random.Random(0))
    assert len(refusals) == 20 and all(is_refusal(ex.target) for ex in refusals)
    assert len(answers) == 10 and not any(is_refusal(ex.target) for ex in answers)
    with pytest.raises(ValueError, match="keep must be one of"):
        AlignSource(str(data), keep="some")


def test_align_mixes_sources_self_distills_and_reports_over_refusal_with_intervals(tiny_model_dir, toy_data, tmp_path):
    benign_check = tmp_path / "benign_check.jsonl"
    benign_check.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(5)))
    cfg = from_dict(AlignConfig, {
        "model": {"name": str(tiny_model_dir)}, "refusals": str(toy_data["safe_pool"]), "n_refusals": 8,
        "refusal_keep": "refusal",
        "mix": [{"path": str(toy_data["task"]), "n": 6, "self_distill": True},
                {"path": str(toy_data["task"]), "field": "answer", "n": 4}],
        "distill_max_new_tokens": 5,
        "training": {"max_steps": 2, "batch_size": 8, "warmup_steps": 0, "learning_rate": 1e-3},
        "lora": {"r": 4, "alpha": 8}, "check_harmful": [str(toy_data["eval"])], "check_benign": [str(benign_check)],
        "check_limit": 4, "max_new_tokens": 5, "output_dir": str(tmp_path / "align"), "progress": False,
    })
    report = run_alignment(cfg)
    assert report["refusal_examples"] == 8 and report["benign_examples"] == 10
    assert report["mix"] == {"refusal:safe_pool": 8, "benign:task_train:distilled": 6, "benign:task_train": 4}
    data = _rows(tmp_path / "align" / "align_data.jsonl")
    distilled = {r["id"]: r["response"] for r in _rows(tmp_path / "align" / "distill" / "1-task_train.jsonl")}
    task = {r["prompt"]: r["answer"] for r in _rows(toy_data["task"])}
    trained_distilled = [r for r in data if r["id"] in distilled]
    assert trained_distilled and all(r["answer"] == distilled[r["id"]] for r in trained_distilled)
    assert any(r["answer"] != task[r["prompt"]] for r in trained_distilled)  # the model's own words, not the file's
    for side in ("before", "after"):
        iv = report[side]["intervals"]
        assert set(iv) == {"eval_harmful", "benign_check"} and iv["benign_check"]["n"] == 4
        assert 0 <= iv["benign_check"]["low"] <= iv["benign_check"]["rate"] <= iv["benign_check"]["high"] <= 1
        assert report[side]["over_refusal"] == iv["benign_check"]["rate"]


def test_align_refuses_to_train_on_a_check_set(tiny_model_dir, toy_data, tmp_path):
    cfg = from_dict(AlignConfig, {
        "model": {"name": str(tiny_model_dir)}, "refusals": str(toy_data["safe_pool"]),
        "benign": str(toy_data["task_test"]), "check_benign": str(toy_data["task_test"]),
        "output_dir": str(tmp_path / "a"), "progress": False})
    with pytest.raises(ValueError, match="never be trained on"):
        run_alignment(cfg)
    assert not (tmp_path / "a").exists()


def test_eval_reports_over_refusal_on_each_benign_set(tiny_model_dir, toy_data, tmp_path, capsys):
    benign = tmp_path / "everyday.jsonl"
    benign.write_text("".join(json.dumps({"id": f"b{i}", "prompt": f"Name a colour, {i}."}) + "\n" for i in range(6)))
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--benign-data", str(benign), "--benign-limit", "5",
                 "--max-new-tokens", "4", "--output-dir", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    r = metrics["over_refusal"]["everyday"]
    assert r["n"] == 5 and r["low"] <= r["rate"] <= r["high"] and metrics["over_refusal_mean"] == r["rate"]
    assert len(r["items"]) == 5 and sum(r["items"]) == r["k"]  # per prompt, for paired comparisons
    assert "## Over-refusal" in (out / "summary.md").read_text()


def test_report_puts_over_refusal_beside_the_runs():
    from spard.bench.tables import over_refusal_table

    starts = [{"model": "m", "over_refusal[xstest_safe]": 0.9}]
    rows = [{"label": "sft", "over_refusal[xstest_safe]": 0.2}, {"label": "sft", "over_refusal[xstest_safe]": 0.4},
            {"label": "lisa", "over_refusal[xstest_safe]": 1.0}]
    lines = over_refusal_table(rows, starts)
    assert "| start model: m | 1 | 90.0% |" in lines and "| sft | 2 | 30.0% |" in lines and "| lisa | 1 | 100.0% |" in lines
    # with counts: pooled over the runs, with the Wilson interval and k/n
    for r, n in zip([*starts, *rows], (10, 10, 10, 10), strict=True):
        r["over_refusal_n[xstest_safe]"] = n
    lines = over_refusal_table(rows, starts)
    assert "| sft | 2 | 30.0% [14.5, 51.9] (6/20) |" in lines and "| start model: m | 1 | 90.0% [59.6, 98.2] (9/10) |" in lines
    assert over_refusal_table([{"label": "sft"}], []) == []


def test_the_replication_config_aligns_discriminatingly_and_measures_over_refusal():
    from pathlib import Path

    from spard.bench.config import eval_config, expand
    from spard.bench.runner import load_bench_config
    from spard.training.align import _check_not_trained_on

    root = Path(__file__).resolve().parents[1]
    cfg = load_bench_config(root / "configs" / "replication.yaml")
    align = from_dict(AlignConfig, cfg.align, "align")
    _check_not_trained_on(align)  # no check set is trained on
    assert {Path(p).stem for p in align.check_benign} == {"xstest_safe", "alpaca_seed"}
    trained = {Path(s.path).parent.name for s in align.sources()}
    assert not trained & {"sst2", "agnews", "benign"}  # never the tasks later grids fine-tune on, nor eval-only sets
    assert {Path(p).stem for p in eval_config(cfg).benign} == {"xstest_safe", "alpaca_seed"}
    assert eval_config(cfg).judges[0].startswith("probe:")  # the primary ASR judge
    assert len(expand(cfg, "/aligned", "base", "0" * 64)) == 44
