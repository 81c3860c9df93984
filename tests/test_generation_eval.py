import json

import pytest

from spard.cli import main
from spard.data import FieldMap, load_examples
from spard.evaluation import generation
from spard.evaluation.generation import GenerationConfig, generate_responses


def test_batched_generation_equals_one_at_a_time(tiny, toy_data):
    model, tok = tiny
    examples = load_examples(toy_data["eval"], FieldMap(target=None), limit=7)
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4)
    batched = generate_responses(model, tok, examples, cfg, progress=False)
    single = generate_responses(model, tok, examples, GenerationConfig(max_new_tokens=12, batch_size=1), progress=False)
    assert [r["response"] for r in batched] == [r["response"] for r in single]
    assert [r["id"] for r in batched] == [ex.id for ex in examples]
    assert any(r["response"] for r in batched)
    assert tok.padding_side == "right"  # restored after generation


def test_interrupted_generation_resumes_to_the_same_file(tiny, toy_data, tmp_path, monkeypatch):
    model, tok = tiny
    examples = load_examples(toy_data["eval"], FieldMap(target=None), limit=9)
    cfg = GenerationConfig(max_new_tokens=8, batch_size=2)
    generate_responses(model, tok, examples, cfg, output=tmp_path / "full.jsonl", progress=False)

    real = generation._generate_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "_generate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        generate_responses(model, tok, examples, cfg, output=tmp_path / "resumed.jsonl", progress=False)
    assert len((tmp_path / "resumed.jsonl").read_text().splitlines()) == 4
    monkeypatch.setattr(generation, "_generate_batch", real)
    generate_responses(model, tok, examples, cfg, output=tmp_path / "resumed.jsonl", progress=False)
    assert (tmp_path / "resumed.jsonl").read_bytes() == (tmp_path / "full.jsonl").read_bytes()


def test_sampling_is_seeded(tiny, toy_data):
    model, tok = tiny
    examples = load_examples(toy_data["eval"], FieldMap(target=None), limit=3)
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, seed=5, temperature=1.5)
    a = generate_responses(model, tok, examples, cfg, progress=False)
    b = generate_responses(model, tok, examples, cfg, progress=False)
    greedy = generate_responses(model, tok, examples, GenerationConfig(max_new_tokens=10), progress=False)
    assert a == b and a != greedy


def test_spard_eval_writes_metrics_and_summary(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "--model", str(tiny_model_dir), "--harmful-data", str(toy_data["eval"]), str(toy_data["attack"]),
               "--task-data", str(toy_data["task_test"]), "--task", "gsm8k", "--limit", "6", "--task-limit", "5",
               "--max-new-tokens", "8", "--judge", "keyword", "--output-dir", str(out), "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["asr"]) == {"eval_harmful", "attack"}
    row = metrics["asr"]["eval_harmful"]
    assert row["n"] == 6 and row["keyword"]["judged"] == 6 and 0 <= row["keyword"]["asr"] <= 1
    assert metrics["asr_mean"]["keyword"] is not None
    assert metrics["task"]["n"] == 5 and 0 <= metrics["task"]["accuracy"] <= 1 and metrics["task"]["answer_nll"] > 0
    assert metrics["decoding"] == "greedy"
    from spard.evaluation.judges import KeywordJudge

    task_rows = [json.loads(line) for line in (out / "generations" / "task.jsonl").read_text().splitlines()]
    refused = [not v.harmful for v in KeywordJudge().judge([r["prompt"] for r in task_rows], [r["response"] for r in task_rows])]
    assert metrics["task"]["over_refusal"] == pytest.approx(sum(refused) / 5)
    summary = (out / "summary.md").read_text()
    assert "non-refusal rate, `keyword`" in summary and "gsm8k" in summary and "over-refusal" in summary
    assert len((out / "generations" / "eval_harmful.jsonl").read_text().splitlines()) == 6
    assert len((out / "judgements" / "eval_harmful.keyword.jsonl").read_text().splitlines()) == 6
    assert "Attack success" in capsys.readouterr().out
    assert len(metrics["eval_key"]) == 64
    assert metrics["total_wall_seconds"] == metrics["wall_seconds"]

    # a re-judge of the stored generations (one more judge): its seconds add to the generating evaluation's
    rejudge = ["eval", "--model", str(tiny_model_dir), "--harmful-data", str(toy_data["eval"]), str(toy_data["attack"]),
               "--task-data", str(toy_data["task_test"]), "--task", "gsm8k", "--limit", "6", "--task-limit", "5",
               "--max-new-tokens", "8", "--judge", "keyword", "--judge", "keyword:v1", "--output-dir", str(out), "--no-progress"]
    assert main(rejudge) == 0
    rejudged = json.loads((out / "metrics.json").read_text())
    assert rejudged["eval_key"] != metrics["eval_key"] and rejudged["generation_key"] == metrics["generation_key"]
    assert rejudged["total_wall_seconds"] == pytest.approx(metrics["wall_seconds"] + rejudged["wall_seconds"])
    metrics = rejudged
    capsys.readouterr()

    # Rerun under other decoding: the old code reused the 8-token responses; now a clear error...
    before = (out / "generations" / "eval_harmful.jsonl").read_text()
    again = ["eval", "--model", str(tiny_model_dir), "--harmful-data", str(toy_data["eval"]), "--limit", "6",
             "--max-new-tokens", "4", "--output-dir", str(out), "--no-progress"]
    assert main(again) == 2
    err = capsys.readouterr().err
    assert "generation.max_new_tokens" in err and "--overwrite" in err
    assert (out / "generations" / "eval_harmful.jsonl").read_text() == before  # nothing changed
    # ... and --overwrite starts the stale files over
    assert main([*again, "--overwrite"]) == 0
    redone = json.loads((out / "metrics.json").read_text())
    assert redone["max_new_tokens"] == 4 and redone["eval_key"] != metrics["eval_key"]
    assert redone["total_wall_seconds"] == redone["wall_seconds"]  # generated anew: the old seconds are not its cost


def test_eval_picks_up_the_system_prompt_saved_with_a_run(tiny_model_dir, toy_data, tmp_path):
    from spard.evaluation.evaluate import saved_eval_system_prompt

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"eval_system_prompt": "Be safe."}))
    assert saved_eval_system_prompt(str(run / "model")) == ("Be safe.", True)
    assert saved_eval_system_prompt(str(tiny_model_dir)) == (None, False)
