import dataclasses
import json
import logging
import shutil
from pathlib import Path

import pytest

from spard.bench import runner
from spard.bench.config import BenchConfig, expand, parse_shard, select_runs
from spard.bench.plots import label_colors
from spard.bench.runner import run_bench
from spard.config import ConfigError, from_dict
from spard.io import atomic_write_json


def bench_config(tiny_model_dir, toy_data, out, **extra):
    raw = {
        "name": "tiny",
        "output_dir": str(out),
        "train": {
            "data": {"task": str(toy_data["task"]), "safe_pool": str(toy_data["safe_pool"]), "max_length": 96},
            "lora": {"r": 4, "alpha": 8},
            "training": {"learning_rate": 3e-3, "max_steps": 3, "batch_size": 8, "gradient_accumulation_steps": 1,
                         "warmup_steps": 0},
            "selection": {"min_k": 8, "embedding_model": "base"},
        },
        "attacks": {"toy": str(toy_data["attack"])},
        "eval_sets": {"toy": str(toy_data["eval"])},
        "eval": {"harmful_limit": 3, "task_data": str(toy_data["task_test"]), "task_limit": 3,
                 "generation": {"max_new_tokens": 4}},
        "defenses": ["sft", "spard", {"label": "spard-closed", "defense": "spard", "overrides": {"spag.form": "closed"}}],
        "grids": [
            {"models": [str(tiny_model_dir)], "attacks": ["toy"], "defenses": ["sft", "spard", "spard-closed"],
             "harmful_ratios": [0.25], "seeds": [0]},
            {"models": [str(tiny_model_dir)], "attacks": ["none", "toy"], "defenses": ["sft"], "harmful_ratios": [0.25],
             "seeds": [0, 1]},
        ],
        **extra,
    }
    return from_dict(BenchConfig, raw, "test")


def test_grid_expansion_dedupes_and_resolves_overrides(tiny_model_dir, toy_data, tmp_path):
    runs = expand(bench_config(tiny_model_dir, toy_data, tmp_path))
    cells = [(r.label, r.attack, r.harmful_ratio, r.seed) for r in runs]
    # sft/toy/seed 0 appears in both grids but runs once; "none" forces p = 0
    assert cells == [("sft", "toy", 0.25, 0), ("spard", "toy", 0.25, 0), ("spard-closed", "toy", 0.25, 0),
                     ("sft", "none", 0.0, 0), ("sft", "none", 0.0, 1), ("sft", "toy", 0.25, 1)]
    assert runs[2].train["spag"]["form"] == "closed" and runs[1].train["spag"]["form"] == "reference"
    assert runs[3].train["data"]["harmful"] is None
    assert len({r.key for r in runs}) == len(runs) and len({r.name for r in runs}) == len(runs)


def test_bad_grids_are_reported(tiny_model_dir, toy_data, tmp_path):
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path)
    cfg.grids[0].attacks = ["nope"]
    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        expand(cfg)
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path)
    cfg.grids[0].defenses = ["magic"]
    with pytest.raises(ConfigError, match="unknown defense 'magic'"):
        expand(cfg)


def test_bench_runs_resumes_and_redoes_partial_runs(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    from spard.bench.config import TargetsConfig

    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "b")
    cfg.grids = cfg.grids[:1]
    cfg.targets = TargetsConfig(harmful_ratio=0.25)
    rows = run_bench(cfg, progress=False)
    out = tmp_path / "b"
    assert len(rows) == 3
    for name in ("results.csv", "results.json", "results.md", "asr_vs_task.png", "asr_per_attack.png", "spag_safe_loss.png"):
        assert (out / name).exists(), name
    table = (out / "results.md").read_text()
    assert "| sft | 0.25 | 1 |" in table and "spard-closed" in table and "(ASR judge `keyword` = non-refusal rate" in table
    assert "## Point estimates over attacks (judge `keyword` = non-refusal rate, not a harm judgement, attacks: toy;" in table and "spard mean ASR" in table
    assert all(r["asr_mean[keyword]"] is not None and r["answer_nll"] > 0 and r["wall_seconds"] > 0 for r in rows)
    assert " min |" in table  # wall time per run
    # per-prompt outcomes were stored, so the paired section is there: intervals, differences, McNemar
    assert "## Targets with intervals (judge `keyword`, p = 0.25" in table and "ASR ratio [95%]" in table
    assert "## Every defense against sft at p = 0.25" in table and "McNemar p" in table
    assert rows[1]["projections_fired"] is not None
    # the starting model was evaluated once, before fine-tuning, and heads the CSV (the resume below re-evaluates nothing)
    assert len(list((out / "start").glob("*/eval/metrics.json"))) == 1
    assert "## Start models before fine-tuning" in table and "task gain kept" in table
    assert "| spard-closed | spag.form=closed | 1 |" in table  # the ablation table names what it changed
    assert (out / "results.csv").read_text().splitlines()[1].split(",")[2] == "start model"

    calls = {"train": 0, "eval": 0}
    import spard.evaluation.evaluate as evaluate_mod
    import spard.training.run as run_mod

    real_train, real_eval = run_mod.run_training, evaluate_mod.run_evaluation

    def count_train(cfg):
        calls["train"] += 1
        return real_train(cfg)

    def count_eval(cfg, **kwargs):
        calls["eval"] += 1
        return real_eval(cfg, **kwargs)

    monkeypatch.setattr(run_mod, "run_training", count_train)
    monkeypatch.setattr(evaluate_mod, "run_evaluation", count_eval)
    again = run_bench(cfg, progress=False)
    assert calls == {"train": 0, "eval": 0}
    assert [r["run"] for r in again] == [r["run"] for r in rows]

    run_dirs = sorted((out / "runs").iterdir())
    (run_dirs[0] / "eval" / "metrics.json").unlink()  # evaluation interrupted
    (run_dirs[1] / "metrics.json").unlink()  # training interrupted
    (run_dirs[2] / "run.json").write_text("{not json")  # corrupted bookkeeping
    run_bench(cfg, progress=False)
    assert calls == {"train": 2, "eval": 3}
    assert all(json.loads((d / "run.json").read_text())["key"] for d in run_dirs)
    # a fresh clone whose evaluation settings changed: the training's files are committed, its model is not,
    # so the run is trained again (not evaluated from a model that is not there)
    shutil.rmtree(run_dirs[0] / "model")
    (run_dirs[0] / "eval" / "metrics.json").unlink()
    run_bench(cfg, progress=False)
    assert calls == {"train": 3, "eval": 4} and any((run_dirs[0] / "model").glob("*.safetensors"))

    # the whole grid: a dry run lists what is left and writes nothing; --report-only rewrites the tables
    full = bench_config(tiny_model_dir, toy_data, out)
    (out / "results.md").unlink()
    listed = run_bench(full, progress=False, dry_run=True)
    assert [r.get("status") for r in listed].count("to do") == 3 and len(listed) == 6
    assert not (out / "results.md").exists() and calls == {"train": 3, "eval": 4}
    reported = run_bench(full, progress=False, report_only=True)
    assert len(reported) == 3 and "to do" not in (out / "results.md").read_text()
    assert "| spard-closed | toy |" in (out / "results.md").read_text() and calls == {"train": 3, "eval": 4}


def test_dry_run_lists_what_is_left(tiny_model_dir, toy_data, tmp_path):
    rows = run_bench(bench_config(tiny_model_dir, toy_data, tmp_path / "d"), progress=False, dry_run=True)
    assert len(rows) == 6 and all(r["status"] == "to do" for r in rows)
    assert not (tmp_path / "d").exists()  # a dry run writes nothing, not even its output folder


def test_only_and_shards_pick_disjoint_runs_that_cover_the_grid(tiny_model_dir, toy_data, tmp_path):
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "s")
    runs = expand(cfg)
    assert [r.label for r in select_runs(runs, only=["spard-*"])] == ["spard", "spard-closed"]  # glob on the run name
    assert [r.label for r in select_runs(runs, only=["spard-closed-*"])] == ["spard-closed"]
    assert {r.attack for r in select_runs(runs, only=["*-none-*", "spard-toy-*"])} == {"none", "toy"}
    assert len(select_runs(runs, only=["*-s1-*"])) == 2
    shards = [select_runs(runs, shard=(i, 3)) for i in (1, 2, 3)]
    names = [r.name for part in shards for r in part]
    assert sorted(names) == sorted(r.name for r in runs)  # disjoint, and together the whole grid
    assert [r.name for r in select_runs(list(reversed(runs)), shard=(2, 3))] == [r.name for r in reversed(shards[1])]
    with pytest.raises(ConfigError, match="'lisa-\\*' matches none of the 6 runs"):
        select_runs(runs, only=["lisa-*"])
    for bad in ("3", "0/2", "3/2", "a/b"):
        with pytest.raises(ConfigError, match="shard: expected I/N"):
            parse_shard(bad)
    assert parse_shard("2/5") == (2, 5)
    # a dry run lists only the selected unfinished runs
    listed = run_bench(cfg, progress=False, dry_run=True, only=["sft-*"], shard=None)
    assert {r["run"].split("-")[0] for r in listed} == {"sft"} and len(listed) == 4


def test_align_stage_on_the_tiny_model(tiny_model_dir, toy_data, tmp_path):
    from spard.training.align import AlignConfig, run_alignment

    cfg = from_dict(AlignConfig, {
        "model": {"name": str(tiny_model_dir)}, "refusals": str(toy_data["safe_pool"]), "n_refusals": 16,
        "benign": str(toy_data["task"]), "n_benign": 16,
        "training": {"max_steps": 2, "batch_size": 8, "warmup_steps": 0, "learning_rate": 1e-3},
        "lora": {"r": 4, "alpha": 8}, "check_harmful": [str(toy_data["eval"])], "check_benign": str(toy_data["task_test"]),
        "check_limit": 4, "max_new_tokens": 6, "output_dir": str(tmp_path / "align"), "progress": False,
    })
    report = run_alignment(cfg)
    assert (tmp_path / "align" / "model" / "model.safetensors").exists()  # merged, loadable as a plain model
    assert not (tmp_path / "align" / "model" / "adapter_config.json").exists()
    assert report["refusal_examples"] == 16 and report["benign_examples"] == 16
    for side in ("before", "after"):
        assert 0 <= report[side]["refusal"] <= 1 and 0 <= report[side]["over_refusal"] <= 1
    assert json.loads((tmp_path / "align" / "alignment.json").read_text())["updates"] == 2
    # a fresh clone: the report and the training metrics are committed, the model is not; aligning again
    # re-makes the identical model instead of refusing the folder as a finished run
    shutil.rmtree(tmp_path / "align" / "model")
    again = run_alignment(dataclasses.replace(cfg, check_harmful=[], check_benign=None))
    assert again["model_sha256"] == report["model_sha256"]
    with pytest.raises(ValueError, match="finished run"):  # with its model there, the folder is still refused
        run_alignment(cfg)
    assert runner.run_align_stage(bench_config(tiny_model_dir, toy_data, tmp_path), tmp_path, False) == (None, None)


def test_targets_compare_spard_with_sft_and_the_other_defenses():
    from spard.bench.report import targets
    from spard.bench.tables import asr_matrix

    def row(label, attack, asr, acc, nll, seed=0):
        return {"label": label, "attack": attack, "harmful_ratio": 0.1, "seed": seed, "asr_mean[keyword]": asr,
                "task_accuracy": acc, "answer_nll": nll}

    rows = [row("sft", "a", 0.8, 0.10, 1.0), row("sft", "b", 0.6, 0.12, 1.2),
            row("spard", "a", 0.1, 0.10, 1.0), row("spard", "b", 0.2, 0.10, 1.1), row("spard", "b", 0.2, 0.08, 1.1, seed=1),
            row("lisa", "a", 0.3, 0.1, 1.0), row("lisa", "b", 0.3, 0.1, 1.0), row("ptst", "a", 0.05, 0.1, 1.0),
            {**row("sft", "none", 0.05, 0.1, 1.0), "harmful_ratio": 0.0}]
    lines = "\n".join(targets(rows, "keyword"))
    assert "attacks: a, b" in lines
    assert "spard mean ASR 15.0% vs sft 70.0%: ratio 0.21 (target <= 0.25: met)" in lines
    assert "lowest ASR among defenses run on the same attacks: spard" in lines  # ptst ran on one attack only
    assert "task accuracy: spard minus sft = -1.500 points" in lines
    assert "lowest ASR per attack: a: ptst (5.0% of 4 defenses); b: spard (20.0% of 3 defenses)" in lines
    assert targets([row("sft", "a", 0.8, 0.1, 1.0)], "keyword") == []
    # the policy comes from the bench config: another method, baseline and ratio, no name in the code
    from spard.bench.config import TargetsConfig

    other = "\n".join(targets(rows, "keyword", TargetsConfig(baseline="lisa", method="ptst", asr_ratio=0.1)))
    assert "ptst mean ASR 5.0% vs lisa 30.0%: ratio 0.17 (target <= 0.1: not met)" in other and "attacks: a" in other

    # an ablation below SPARD is not "the lowest defense", and stays out of the per-attack verdicts
    ablation = [{**row("spard-random", x, 0.01, 0.1, 1.0), "defense": "spard"} for x in ("a", "b")]
    lines = "\n".join(targets(rows + ablation, "keyword"))
    assert "lowest ASR among defenses run on the same attacks: spard" in lines and "spard-random" not in lines
    # a tie names every defense at the lowest ASR, not the first in alphabetical order
    tied = rows + [row("safelora", "a", 0.1, 0.1, 1.0), row("safelora", "b", 0.2, 0.1, 1.0)]
    assert "lowest ASR among defenses run on the same attacks: safelora, spard (" in "\n".join(targets(tied, "keyword"))

    table = asr_matrix(rows + ablation, "keyword")
    assert table[2] == "| defense | a | b | mean |"
    body = {line.split(" | ")[0][2:]: line for line in table[4:] if line}
    assert body["ptst"] == "| ptst | **5.0%** |  |  |"  # ran on one attack: no mean
    assert body["spard"] == "| spard | 10.0% | **20.0%** | 15.0% |"  # mean over seeds, then attacks
    assert body["spard-random (ablation)"] == "| spard-random (ablation) | 1.0% | 1.0% | 1.0% |"
    assert list(body)[-1] == "spard-random (ablation)"
    assert asr_matrix([row("sft", "a", 0.8, 0.1, 1.0)], "keyword")[4] == "| sft | 80.0% | 80.0% |"  # alone: no bold


def test_align_stage_fingerprints_the_aligned_model_and_rechecks_only_when_a_redo_differs(
        tiny_model_dir, toy_data, tmp_path, monkeypatch, caplog):
    import spard.training.align as align_mod
    from spard.bench.report import markdown

    weights = iter([b"first weights", b"first weights", b"second weights", b"third weights"])
    calls = []

    def fake_alignment(cfg):
        calls.append(cfg)
        model_dir = Path(cfg.output_dir) / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.json").write_text("{}")
        (model_dir / "model.safetensors").write_bytes(next(weights))
        checked = {"refusal": 0.9} if cfg.check_harmful else {}
        return {"aligned_model": str(model_dir), "updates": 1, "before": checked, "after": checked,
                "model_sha256": align_mod.model_sha256(model_dir)}

    monkeypatch.setattr(align_mod, "run_alignment", fake_alignment)
    monkeypatch.setattr(align_mod, "refusal_rates", lambda *a: {"refusal": 0.5})
    align = {"model": {"name": "base"}, "refusals": "r.jsonl", "benign": "b.jsonl", "check_harmful": ["h.jsonl"]}
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path, align=align)
    report_path = tmp_path / "align" / "alignment.json"
    runner.run_align_stage(cfg, tmp_path, False)
    first = json.loads(report_path.read_text())["model_sha256"]
    assert len(first) == 64 and len(calls) == 1
    runner.run_align_stage(cfg, tmp_path, False)  # model still there, same settings: nothing is redone
    assert len(calls) == 1

    report = json.loads(report_path.read_text())
    report_path.write_text(json.dumps({**report, "seeded_from": "elsewhere"}))  # provenance added by hand
    shutil.rmtree(tmp_path / "align" / "model")  # a fresh clone: the report is committed, the model is not
    runner.run_align_stage(cfg, tmp_path, False)
    report = json.loads(report_path.read_text())
    assert calls[-1].check_harmful == [] and report["model_sha256"] == first and report["after"] == {"refusal": 0.9}
    assert report["seeded_from"] == "elsewhere"  # kept when the model is made again

    shutil.rmtree(tmp_path / "align" / "model")
    with caplog.at_level("WARNING", logger="spard.bench.runner"):
        runner.run_align_stage(cfg, tmp_path, False)
    report = json.loads(report_path.read_text())
    second = report["model_sha256"]
    assert second != first and "re-aligned model differs" in caplog.text and report["after"] == {"refusal": 0.5}

    changed = bench_config(tiny_model_dir, toy_data, tmp_path, align={**align, "n_refusals": 10})
    runner.run_align_stage(changed, tmp_path, False)  # other settings: aligned again although a model is there
    assert len(calls) == 4 and calls[-1].check_harmful == ["h.jsonl"]

    rows = [{"label": "sft", "attack": "a", "harmful_ratio": 0.1, "seed": 0, "start_model": first[:12]},
            {"label": "sft", "attack": "a", "harmful_ratio": 0.1, "seed": 1, "start_model": second[:12]}]
    assert "different aligned models" in markdown(rows, "t")
    assert "different aligned models" not in markdown(rows[:1], "t")


def test_re_aligning_the_same_start_model_keeps_its_committed_training_record(
        tiny_model_dir, toy_data, tmp_path, monkeypatch, caplog):
    """A fresh clone trains the start model again: when it comes out the same, the committed training record
    (metrics, step log, training time) still describes the model the report names and is not rewritten with
    this machine's timings; when it comes out another model, the record is the new model's."""
    import spard.training.align as align_mod

    weights = iter([b"first", b"first", b"other"])
    seconds = iter([100.0, 250.0, 300.0])

    def fake_alignment(cfg):
        out = Path(cfg.output_dir)
        (out / "model").mkdir(parents=True, exist_ok=True)
        (out / "model" / "config.json").write_text("{}")
        (out / "model" / "model.safetensors").write_bytes(next(weights))
        took = next(seconds)
        atomic_write_json(out / "metrics.json", {"train_seconds": took})
        (out / "train_log.jsonl").write_text(json.dumps({"step": 1, "seconds": took}) + "\n")
        checked = {"refusal": 0.9} if cfg.check_harmful else {}
        return {"aligned_model": str(out / "model"), "before": checked, "after": checked, "train_seconds": took,
                "model_sha256": align_mod.model_sha256(out / "model")}

    monkeypatch.setattr(align_mod, "run_alignment", fake_alignment)
    monkeypatch.setattr(align_mod, "refusal_rates", lambda *a: {"refusal": 0.5})
    align = {"model": {"name": "base"}, "refusals": "r.jsonl", "benign": "b.jsonl", "check_harmful": ["h.jsonl"]}
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path, align=align)
    align_dir = tmp_path / "align"
    runner.run_align_stage(cfg, tmp_path, False)
    committed = {name: (align_dir / name).read_bytes() for name in runner.ALIGN_TRAINING_RECORD}

    shutil.rmtree(align_dir / "model")  # a fresh clone: the same bits again, in another time
    with caplog.at_level("INFO", logger="spard.bench.runner"):
        runner.run_align_stage(cfg, tmp_path, False)
    assert {name: (align_dir / name).read_bytes() for name in runner.ALIGN_TRAINING_RECORD} == committed
    assert json.loads((align_dir / "alignment.json").read_text())["train_seconds"] == 100.0
    assert "re-aligned in 250 s here" in caplog.text

    shutil.rmtree(align_dir / "model")  # other bits whose checks differ: another start model, its own record
    runner.run_align_stage(cfg, tmp_path, False)
    assert json.loads((align_dir / "metrics.json").read_text()) == {"train_seconds": 300.0}
    assert json.loads((align_dir / "alignment.json").read_text())["train_seconds"] == 300.0


def test_a_re_aligned_model_that_differs_only_in_rounding_keeps_the_start_model_and_the_run_keys(
        tiny_model_dir, toy_data, tmp_path, monkeypatch, caplog):
    """Another CPU re-aligns the same recipe to other bits: when its refusal checks and its whole start-model
    evaluation measure what the earlier model's did, the runs keep their keys; when one verdict differs,
    it is another start model, and its evaluation is the start row's."""
    import spard.training.align as align_mod

    weights = iter([b"first", b"first, rounded elsewhere", b"first, rounded elsewhere", b"third"])
    evaluated = []

    def fake_alignment(cfg):
        model_dir = Path(cfg.output_dir) / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.json").write_text("{}")
        (model_dir / "model.safetensors").write_bytes(next(weights))
        checked = {"refusal": 0.9} if cfg.check_harmful else {}
        return {"aligned_model": str(model_dir), "before": checked, "after": checked,
                "model_sha256": align_mod.model_sha256(model_dir)}

    measured = {"eval_key": "E", "asr": {"toy": {"keyword": {"asr": 0.5, "items": [1, 0]}}}}
    verdicts = iter([[1, 0], [0, 0]])  # the second re-alignment's evaluation flips one verdict

    def fake_evaluate(cfg, model, eval_dir, progress, extra):
        evaluated.append(Path(eval_dir).name)
        (eval_dir / "generations").mkdir(parents=True)
        (eval_dir / "generations" / "toy.jsonl").write_text("{}\n")
        items = next(verdicts)
        atomic_write_json(eval_dir / "metrics.json", {**measured, "asr": {"toy": {"keyword": {
            "asr": sum(items) / 2, "items": items}}}, "wall_seconds": 9.0, "model": str(model), **extra})

    monkeypatch.setattr(align_mod, "run_alignment", fake_alignment)
    monkeypatch.setattr(align_mod, "refusal_rates", lambda *a: {"refusal": 0.9})
    monkeypatch.setattr(runner, "evaluate_model", fake_evaluate)
    align = {"model": {"name": "base"}, "refusals": "r.jsonl", "benign": "b.jsonl", "check_harmful": ["h.jsonl"]}
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path, align=align)
    report_path, eval_dir = tmp_path / "align" / "alignment.json", tmp_path / "align" / "eval"
    runner.run_align_stage(cfg, tmp_path, False, "E")
    first = json.loads(report_path.read_text())["model_sha256"]
    # the committed start-model evaluation, made of the first model under the grid's evaluation settings
    atomic_write_json(eval_dir / "metrics.json", {**measured, "wall_seconds": 1.0, "start_model_sha256": first})

    shutil.rmtree(tmp_path / "align" / "model")  # a fresh clone on another CPU
    with caplog.at_level("INFO", logger="spard.bench.runner"):
        runner.run_align_stage(cfg, tmp_path, False, "E")
    report = json.loads(report_path.read_text())
    second = align_mod.model_sha256(tmp_path / "align" / "model")
    assert second != first and report["model_sha256"] == first and report["equivalent_sha256"] == [second]
    assert "the same start model up to rounding" in caplog.text and evaluated == ["eval-recheck"]
    assert json.loads((eval_dir / "metrics.json").read_text())["start_model_sha256"] == first  # the record stands
    assert (eval_dir / "generations" / "toy.jsonl").exists() and not (tmp_path / "align" / "eval-recheck").exists()
    runner.run_align_stage(cfg, tmp_path, False, "E")  # known as equivalent: nothing is checked again
    assert evaluated == ["eval-recheck"]

    shutil.rmtree(tmp_path / "align" / "model")  # the same bits again, then a model whose evaluation differs
    runner.run_align_stage(cfg, tmp_path, False, "E")
    assert evaluated == ["eval-recheck"] and json.loads(report_path.read_text())["model_sha256"] == first
    (tmp_path / "align" / "model" / "model.safetensors").write_bytes(b"third")  # swapped on disk, not retrained
    with caplog.at_level("WARNING", logger="spard.bench.runner"):
        runner.run_align_stage(cfg, tmp_path, False, "E")
    report = json.loads(report_path.read_text())
    assert report["model_sha256"] == align_mod.model_sha256(tmp_path / "align" / "model") not in (first, second)
    assert "re-aligned model differs" in caplog.text and evaluated == ["eval-recheck", "eval-recheck"]
    start_eval = json.loads((eval_dir / "metrics.json").read_text())
    assert start_eval["start_model_sha256"] == report["model_sha256"] and start_eval["asr"]["toy"]["keyword"]["items"] == [0, 0]


def test_same_measurements_ignores_provenance_and_nothing_else():
    from spard.evaluation.evaluate import same_measurements

    a = {"eval_key": "E", "task": {"correct": [1, 0, 1]}, "wall_seconds": 3.0, "model": "a", "responses_sha256": "x"}
    assert same_measurements(a, {**a, "wall_seconds": 9.0, "model": "b", "start_model_sha256": "s"})
    assert same_measurements(a, {k: v for k, v in a.items() if k != "responses_sha256"})  # recorded by one only
    assert not same_measurements(a, {**a, "responses_sha256": "y"})  # other text, the same scores
    assert not same_measurements(a, {**a, "task": {"correct": [1, 1, 1]}})
    assert not same_measurements(a, {**a, "eval_key": "F"})


def test_ptst_reuses_the_finished_sft_training_and_only_evaluates_differently(
        tiny_model_dir, toy_data, tmp_path, monkeypatch):
    import spard.training.run as run_mod

    trained = []
    real_train = run_mod.run_training
    monkeypatch.setattr(run_mod, "run_training", lambda cfg: trained.append(cfg.defense) or real_train(cfg))
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "p")
    cfg.defenses = ["sft", "ptst"]
    cfg.grids = cfg.grids[:1]
    cfg.grids[0].defenses = ["sft", "ptst"]
    cfg.train["ptst"] = {"eval_system_prompt": "Be safe."}  # the default fills the tiny model's context
    rows = run_bench(cfg, progress=False)
    assert trained == ["sft"]
    sft_dir, ptst_dir = (tmp_path / "p" / "runs" / r["run"] for r in rows)
    metrics = json.loads((ptst_dir / "metrics.json").read_text())
    assert metrics["defense"] == "ptst" and metrics["reused_training_from"] == sft_dir.name
    assert metrics["eval_system_prompt"] and metrics["train_seconds"] > 0
    assert ((ptst_dir / "model" / "adapter_model.safetensors").read_bytes()
            == (sft_dir / "model" / "adapter_model.safetensors").read_bytes())
    assert (ptst_dir / "train_log.jsonl").read_text() == (sft_dir / "train_log.jsonl").read_text()
    assert "defense: ptst" in (ptst_dir / "config.yaml").read_text()
    evals = [json.loads((d / "eval" / "metrics.json").read_text()) for d in (sft_dir, ptst_dir)]
    assert evals[0]["system_prompt"] is None and evals[1]["system_prompt"] == metrics["eval_system_prompt"]
    assert rows[1]["reused_training_from"] == sft_dir.name and "reused_training_from" not in rows[0]
    table = (tmp_path / "p" / "results.md").read_text()
    assert "min† |" in table and "copied from it" in table

    # with a training system prompt, plain fine-tuning uses it and PTST does not: no reuse
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "q")
    cfg.defenses, cfg.grids = ["sft", "ptst"], cfg.grids[:1]
    cfg.grids[0].defenses = ["sft", "ptst"]
    cfg.train["data"]["system_prompt"] = "Be brief."
    cfg.train["ptst"] = {"eval_system_prompt": "Be safe."}
    trained.clear()
    run_bench(cfg, progress=False)
    assert trained == ["sft", "ptst"]


def test_task_gain_kept_is_measured_from_the_start_model_against_sft_of_the_same_cell():
    from spard.bench.report import markdown, with_task_gain

    def row(label, nll, attack="a", seed=0):
        return {"model": "m", "attack": attack, "label": label, "defense": label, "harmful_ratio": 0.1, "seed": seed,
                "answer_nll": nll, "asr_mean[keyword]": 0.5, "task_accuracy": 0.1}

    starts = [{"model": "m", "attack": "none", "label": "start model", "defense": "none", "harmful_ratio": 0.0,
               "seed": None, "answer_nll": 1.0, "asr_mean[keyword]": 0.05, "asr[fam][keyword]": 0.05}]
    rows = [row("sft", 0.8), row("spard", 0.85), row("lisa", 1.0), row("worse", 1.1),
            row("spard", 0.9, seed=1), row("sft", 1.2, attack="b"), row("spard", 0.9, attack="b"),
            {**row("ptst", 0.9), "eval_system_prompt": True}]
    gained = with_task_gain(rows, starts, "sft")
    assert "task_gain_kept" not in gained[7]  # evaluated under a system prompt the start and SFT were not
    assert [r.get("task_gain_kept") for r in gained[:4]] == pytest.approx([1.0, 0.75, 0.0, -0.5])
    assert "task_gain_kept" not in gained[4]  # no SFT run with seed 1
    assert "task_gain_kept" not in gained[6]  # SFT did not lower the NLL on attack b
    assert with_task_gain(rows, [], "sft") == rows  # no start model: nothing to measure from
    variant = {**row("spard-random", 0.9), "defense": "spard", "asr_mean[keyword]": 0.25}
    page = markdown([*gained[:4], *with_task_gain([rows[0], variant], starts, "sft")[1:]], "t", starts,
                    {"spard-random": {"selection.method": "random"}})
    assert ("| spard-random | selection.method=random | 1 | 25.0% | 50.0% | 50.0% | 75.0% |" in page)
    assert "## Start models before fine-tuning (judge `keyword` = non-refusal rate, not a harm judgement)" in page and "| m | 5.0% | 5.0% |" in page
    assert "task gain kept (share of sft's answer-NLL drop" in page and "spard 75.0%" in page
    # lisa keeps none of the gain: the lowest ASR overall, but not among the defenses that keep half of it
    gained[2]["asr_mean[keyword]"] = 0.01
    page = markdown(gained[:4], "t", starts)
    assert "lowest ASR among defenses run on the same attacks: lisa" in page
    assert "keep at least 50% of sft's task gain: spard (spard 50.0%)" in page


def test_training_is_reused_only_from_the_defense_it_trains_like(tmp_path):
    from spard.training.config import TrainConfig
    from spard.training.run import reuse_training

    donor = tmp_path / "donor"
    (donor / "model").mkdir(parents=True)
    (donor / "metrics.json").write_text(json.dumps({"defense": "spard", "updates": 3}))
    for defense in ("ptst", "sft"):  # spard is not what PTST trains like; SFT trains like nothing else
        cfg = from_dict(TrainConfig, {"defense": defense, "output_dir": str(tmp_path / defense)})
        with pytest.raises(ValueError, match="does not train like"):
            reuse_training(cfg, donor)
        assert not (tmp_path / defense / "metrics.json").exists()


def test_demo_prints_the_aligned_model_then_sft_and_spard(tiny_model_dir, tmp_path, capsys):
    from spard.cli import main

    pytest.importorskip("sentence_transformers")  # the demo selects with all-MiniLM-L6-v2
    assert main(["demo", "--model", str(tiny_model_dir), "--steps", "2", "--output-dir", str(tmp_path / "demo"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0] for line in table] == [
        "| defense", "| aligned model, before the attack", "| sft", "| spard"]
    start, sft = table[1].split(" | "), table[2].split(" | ")
    assert start[4:] == ["n/a", "n/a |"]  # the start model has no gain and no updates of its own
    assert sft[4] in ("100%", "n/a") and float(sft[5].rstrip(" |")) > 0  # SFT keeps all of its own gain, if any


def test_a_setting_added_with_its_neutral_value_keeps_the_keys_of_finished_runs():
    from spard.bench.config import CHANGED_DEFAULTS, KEY_NEUTRAL_DEFAULTS, config_hash, run_key

    before = {"defense": "lisa", "lisa": {"rho": 1.0}}  # a run keyed before lisa.proximal_from existed
    assert run_key(before) == config_hash(before)
    assert run_key({**before, "lisa": {"rho": 1.0, "proximal_from": 0.0}}) == run_key(before)
    assert run_key({**before, "lisa": {"rho": 1.0, "proximal_from": 0.1}}) != run_key(before)
    assert run_key({"defense": "sft"}) == config_hash({"defense": "sft"})  # no such section: nothing to drop
    # every neutral value is the field's default, so a config that does not mention it keeps its old key
    from spard.config import to_dict
    from spard.training.config import TrainConfig

    defaults = to_dict(TrainConfig())
    for dotted, neutral in KEY_NEUTRAL_DEFAULTS.items():
        section, leaf = dotted.split(".")
        assert (defaults[section][leaf] == neutral) != (dotted in CHANGED_DEFAULTS), dotted


@pytest.mark.parametrize("n", [3, 10, 13, 20])
def test_plot_colours_are_distinct_per_label(n):
    labels = [f"defense-{i}" for i in range(n)]
    colours = label_colors(labels)
    assert set(colours) == set(labels)
    assert len(set(colours.values())) == n


def test_a_grid_runs_as_submitit_jobs_with_the_inline_resume_rules(tiny_model_dir, toy_data, tmp_path, capsys):
    """--launcher local: one job per unfinished run through submitit; finished runs are not resubmitted."""
    pytest.importorskip("submitit")
    from spard.cli import main

    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "jobs", evaluate_start=False)
    cfg.grids = [cfg.grids[0]]
    cfg.grids[0].defenses = ["sft", "spard"]
    rows = run_bench(cfg, progress=False, launcher="local")
    assert sorted(r["label"] for r in rows) == ["sft", "spard"]
    assert all(r["asr_mean[keyword]"] is not None for r in rows)
    logs = list((tmp_path / "jobs" / "submitit").glob("*_log.out"))
    assert len(logs) == 2  # one job per run
    assert (tmp_path / "jobs" / "results.md").is_file()
    # a second call finds both finished: nothing is submitted again
    again = run_bench(cfg, progress=False, launcher="local")
    assert len(list((tmp_path / "jobs" / "submitit").glob("*_log.out"))) == 2 and len(again) == 2
    # launcher options without a launcher are refused
    import yaml

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "output_dir": str(tmp_path / "x")}))
    assert main(["bench", str(path), "--launcher-option", "timeout_min=5"]) == 2
    assert "--launcher-option needs --launcher local or slurm" in capsys.readouterr().err


def test_the_primary_judge_of_a_report_is_a_report_setting():
    from spard.bench.config import TargetsConfig
    from spard.bench.report import markdown
    from spard.bench.tables import judges_in

    rows = [{"label": label, "attack": "a", "harmful_ratio": 0.1, "seed": 0, "asr_mean[probe]": asr,
             "asr_mean[stacked]": asr / 2, "updates": 10} for label, asr in (("sft", 0.8), ("spard", 0.1))]
    assert judges_in(rows) == ["probe", "stacked"]  # evaluation order
    assert judges_in(rows, "stacked") == ["stacked", "probe"] and judges_in(rows, "llm") == ["probe", "stacked"]
    page = markdown(rows, "t", policy=TargetsConfig(judge="stacked"))
    assert page.index("## Targets (judge `stacked`") < page.index("## Targets (judge `probe`")
    page = markdown(rows, "t")
    assert page.index("## Targets (judge `probe`") < page.index("## Targets (judge `stacked`")
    assert "target <= 0.25: met" in page  # 0.1 / 0.8


def test_a_page_with_interval_targets_calls_the_mean_section_point_estimates_not_targets():
    from spard.bench.report import markdown

    rows = [{"label": label, "attack": "a", "harmful_ratio": 0.1, "seed": 0, "asr_mean[probe]": asr, "updates": 10}
            for label, asr in (("sft", 0.4), ("spard", 0.2))]
    page = markdown(rows, "t", inference=["## Targets with intervals (judge `probe`)", "", "table", ""])
    assert "## Targets (judge" not in page
    assert "## Point estimates over attacks (judge `probe`" in page
    assert "ratio 0.50 (<= 0.25 on the estimate: no)" in page
    assert "ratio 0.50 (target <= 0.25: not met)" in markdown(rows, "t")


def test_a_config_extends_another_merging_sections_and_replacing_lists(tmp_path):
    from spard.config import load_yaml

    (tmp_path / "base.yaml").write_text(
        "name: base\nalign: {n_refusals: 150}\n"
        "train: {training: {learning_rate: 2.0e-4, max_steps: 100}, lora: {r: 16}}\n"
        "grids:\n  - {attacks: [a, b], defenses: [sft]}\n")
    (tmp_path / "child.yaml").write_text(
        "extends: base.yaml\nname: child\nalign: null\ntrain: {training: {max_steps: 7}}\n"
        "grids:\n  - {attacks: [c], defenses: [spard]}\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "grandchild.yaml").write_text("extends: ../child.yaml\ntrain: {lora: {r: 4}}\n")

    child = load_yaml(tmp_path / "child.yaml")
    assert child["name"] == "child" and child["align"] is None and "extends" not in child
    assert child["train"] == {"training": {"learning_rate": 2.0e-4, "max_steps": 7}, "lora": {"r": 16}}
    assert child["grids"] == [{"attacks": ["c"], "defenses": ["spard"]}]  # a list is replaced, not appended
    grandchild = load_yaml(sub / "grandchild.yaml")
    assert grandchild["train"] == {"training": {"learning_rate": 2.0e-4, "max_steps": 7}, "lora": {"r": 4}}
    assert grandchild["name"] == "child"

    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a.yaml: extends: b.yaml makes a cycle \(.*b.yaml -> .*a.yaml\)"):
        load_yaml(tmp_path / "b.yaml")
    (tmp_path / "lost.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"lost.yaml: extends: .*nowhere.yaml: config file not found"):
        load_yaml(tmp_path / "lost.yaml")
    (tmp_path / "odd.yaml").write_text("extends: [base.yaml]\n")
    with pytest.raises(ConfigError, match="odd.yaml: extends: must be the path of another config file"):
        load_yaml(tmp_path / "odd.yaml")


def test_the_second_model_grid_is_the_sst2_grid_but_for_its_start_model():
    from spard.config import load_yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    sst2, qwen = load_yaml(configs / "replication-sst2.yaml"), load_yaml(configs / "replication-sst2-qwen.yaml")
    differ = {k for k in sst2.keys() | qwen.keys() if sst2.get(k) != qwen.get(k)}
    assert differ == {"name", "output_dir", "align", "grids"}
    assert qwen["align"] is None
    assert [g["models"] for g in qwen["grids"]] == [["qwen2.5-coder-0.5b-instruct"]]
    cfg = runner.load_bench_config(configs / "replication-sst2-qwen.yaml")
    assert cfg.align is None and cfg.train == sst2["train"]


def test_the_agnews_grid_is_the_sst2_grid_on_another_task():
    from spard.config import load_yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    sst2, agnews = load_yaml(configs / "replication-sst2.yaml"), load_yaml(configs / "replication-agnews.yaml")
    assert {k for k in sst2.keys() | agnews.keys() if sst2.get(k) != agnews.get(k)} == {
        "name", "output_dir", "probe", "train", "eval"}
    assert agnews["align"] == sst2["align"] and agnews["grids"] == sst2["grids"]
    assert agnews["train"]["data"]["task"].endswith("agnews/train.jsonl")
    assert agnews["train"]["lora"] == sst2["train"]["lora"] and agnews["train"]["training"] == sst2["train"]["training"]
    assert agnews["eval"]["task_data"].endswith("agnews/test.jsonl")
    assert {k for k in sst2["eval"] if sst2["eval"][k] != agnews["eval"][k]} == {"task_data", "judges"}


def test_report_only_fits_a_missing_probe_reproducibly(tiny_model_dir, toy_data, tmp_path, caplog):
    # a fresh clone has the committed runs but not the probe (its weights are not committed): --report-only
    # fits it from the recorded data, and a refit gives the same files, so the evaluation key still matches
    probe_dir = tmp_path / "probe"
    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "r",
                       probe={"data": [str(toy_data["safe_pool"]), str(toy_data["attack"])], "output": str(probe_dir)})
    with caplog.at_level(logging.WARNING, logger="spard.bench.runner"):
        run_bench(cfg, progress=False, dry_run=True)
    assert not probe_dir.exists()  # a dry run writes nothing, and says it cannot tell what is finished
    assert "not fitted in this checkout" in caplog.text and "--report-only" in caplog.text
    caplog.clear()
    run_bench(cfg, progress=False, report_only=True)
    with caplog.at_level(logging.WARNING, logger="spard.bench.runner"):
        run_bench(cfg, progress=False, dry_run=True)
    assert "not fitted" not in caplog.text
    first = {p.name: p.read_bytes() for p in probe_dir.iterdir()}
    assert sorted(first) == ["probe.json", "probe.safetensors", "probe_vocab.json"]
    (probe_dir / "probe.json").unlink()  # an incomplete probe counts as missing
    run_bench(cfg, progress=False, report_only=True)
    assert {p.name: p.read_bytes() for p in probe_dir.iterdir()} == first
