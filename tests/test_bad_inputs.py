"""Bad input, odd paths and finished results (issue 13): every case must exit 2 with one line that names
the offending option, file or line, print no traceback, and create or change no file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spard.cli import main


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


@pytest.fixture()
def ws(tmp_path, toy_data, tiny_model_dir):
    """A workspace of inputs: good files, broken files, a finished run, a directory and a plain file."""
    (tmp_path / "pool.jsonl").write_text(toy_data["safe_pool"].read_text())
    (tmp_path / "ref.jsonl").write_text(toy_data["task"].read_text())
    (tmp_path / "attack.jsonl").write_text(toy_data["attack"].read_text())
    (tmp_path / "eval.jsonl").write_text(toy_data["eval"].read_text())
    (tmp_path / "latin1.jsonl").write_bytes(json.dumps({"prompt": "caf\u00e9"}).encode("latin-1").replace(b"\\u00e9", b"\xe9") + b"\n")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "safe": "b", "unsafe": "c"}\n{"prompt": "x", \n')
    good = [{"id": "r0", "prompt": "p", "response": "Sure."}, {"id": "r1", "prompt": "q", "response": "I cannot help."}]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "null_response.jsonl").write_text(json.dumps({"id": "r0", "prompt": "p", "response": None}) + "\n")
    (tmp_path / "number_response.jsonl").write_text(json.dumps({"id": "r0", "prompt": "p", "response": 7}) + "\n")
    (tmp_path / "no_response.jsonl").write_text(json.dumps({"id": "r0", "prompt": "p"}) + "\n")
    (tmp_path / "latin1_responses.jsonl").write_bytes(b'{"id": "r0", "prompt": "p", "response": "caf\xe9"}\n')
    (tmp_path / "no_unsafe.jsonl").write_text(json.dumps({"prompt": "p", "safe": "s"}) + "\n")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    run = tmp_path / "finished_run"
    run.mkdir()
    (run / "metrics.json").write_text('{"defense": "sft"}\n')
    (run / "config.yaml").write_text("defense: sft\n")
    (tmp_path / "unknown_field.yaml").write_text("data: {task: ref.jsonl}\nnot_a_setting: 1\n")
    (tmp_path / "number_defense.yaml").write_text("defense: 5\n")
    (tmp_path / "bad_label.yaml").write_text(
        "defenses: [{label: '../up', defense: sft}]\ngrids: [{models: [m], attacks: [none], defenses: ['../up']}]\n")
    (tmp_path / "grid.yaml").write_text(
        "output_dir: grid_out\ndefenses: [sft]\ngrids: [{models: [m], attacks: [none], defenses: [sft]}]\n")
    return tmp_path, str(tiny_model_dir)


SELECT = ["select", "--pool", "{w}/pool.jsonl", "--reference", "{w}/ref.jsonl", "--method", "random",
          "--min-k", "4", "--output", "{w}/out.jsonl"]
TRAIN = ["train", "--model", "{m}", "--data", "{w}/ref.jsonl", "--defense", "sft", "--max-steps", "1", "--output-dir", "{w}/run"]
GENERATE = ["generate", "--model", "{m}", "--data", "{w}/eval.jsonl", "--output", "{w}/gen.jsonl"]
JUDGE = ["judge", "--responses", "{w}/responses.jsonl", "--output", "{w}/verdicts.jsonl"]
FIT = ["judge", "fit", "--data", "{w}/pool.jsonl", "--output", "{w}/probe"]
EVAL = ["eval", "--model", "{m}", "--harmful-data", "{w}/eval.jsonl", "--output-dir", "{w}/ev"]
ALIGN = ["align", "--model", "{m}", "--refusals", "{w}/pool.jsonl", "--benign", "{w}/ref.jsonl", "--output-dir", "{w}/al"]


def with_(base: list[str], *extra: str, drop: tuple[str, ...] = ()) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(base):
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        out.append(a)
        del i
    return out + list(extra)


CASES = [
    # ---- select: ranges, conflicts with inputs, odd paths, bad files ----
    ("select ratio 0", with_(SELECT, "--ratio", "0"), "selection.ratio: must be in (0, 1]"),
    ("select ratio > 1", with_(SELECT, "--ratio", "1.5"), "selection.ratio: must be in (0, 1]"),
    ("select negative k", with_(SELECT, "--k", "-3"), "selection.k: must be >= 1"),
    ("select negative min-k", with_(SELECT, "--min-k", "-1", drop=("--min-k",)), "selection.min_k: must be >= 0"),
    ("select negative beta", with_(SELECT, "--beta", "-1"), "selection.beta: must be >= 0"),
    ("select negative harmful ratio", with_(SELECT, "--harmful-ratio", "-0.1"), "harmful ratio must be >= 0"),
    ("select total ratio > 1", with_(SELECT, "--harmful-ratio", "1.5", "--harmful-ratio-of", "total"), "in [0, 1]"),
    ("select output is the pool", with_(SELECT, "--output", "{w}/pool.jsonl", drop=("--output",)), "also an input"),
    ("select output is a directory", with_(SELECT, "--output", "{w}/a_dir", drop=("--output",)), "is a directory"),
    ("select output under a file", with_(SELECT, "--output", "{w}/a_file/x.jsonl", drop=("--output",)), "is a file"),
    ("select missing pool", with_(SELECT, "--pool", "{w}/nope.jsonl", drop=("--pool",)), "nope.jsonl: file not found"),
    ("select non-UTF-8 reference", with_(SELECT, "--reference", "{w}/latin1.jsonl", drop=("--reference",)),
     "latin1.jsonl:1: not UTF-8"),
    ("select broken pool line", with_(SELECT, "--pool", "{w}/broken.jsonl", drop=("--pool",)), "broken.jsonl:2: invalid JSON"),
    ("select limit 0", with_(SELECT, "--limit", "0"), "--limit must be >= 1"),
    ("select unknown embedding model (offline)",
     with_(SELECT, "--method", "rd-dpp", "--embedding-model", "no-such/encoder", "--embedding-cache", "{w}/cache",
           drop=("--method",)), "embedding model 'no-such/encoder'"),
    # ---- train: every range at parse time, data before the output folder, finished runs ----
    ("train max-steps 0", with_(TRAIN, "--max-steps", "0", drop=("--max-steps",)), "(option --max-steps)"),
    ("train negative lr", with_(TRAIN, "--lr", "-1"), "training.learning_rate: must be > 0, got -1.0 (option --lr)"),
    ("train batch size 0", with_(TRAIN, "--batch-size", "0"), "training.batch_size: must be >= 1"),
    ("train negative harmful ratio", with_(TRAIN, "--harmful-ratio", "-1"), "data.harmful_ratio: must be >= 0"),
    ("train safe ratio > 1", with_(TRAIN, "--safe-ratio", "2"), "selection.ratio: must be in (0, 1]"),
    ("train lora rank 0", with_(TRAIN, "--lora-r", "0"), "lora.r: must be >= 1"),
    ("train unknown defense", with_(TRAIN, "--defense", "magic", drop=("--defense",)), "unknown defense 'magic'"),
    ("train missing data", with_(TRAIN, "--data", "{w}/nope.jsonl", drop=("--data",)), "nope.jsonl: file not found"),
    ("train into a finished run", with_(TRAIN, "--output-dir", "{w}/finished_run", drop=("--output-dir",)),
     "holds a finished run"),
    ("train output dir is a file", with_(TRAIN, "--output-dir", "{w}/a_file", drop=("--output-dir",)), "is a file"),
    ("train spard without a pool", with_(TRAIN, "--defense", "spard", drop=("--defense",)), "needs a safety pool"),
    ("train unknown config field", with_(TRAIN, "--config", "{w}/unknown_field.yaml"), "unknown field 'not_a_setting'"),
    ("train number where text is expected", with_(TRAIN, "--config", "{w}/number_defense.yaml", drop=("--defense",)), "expected a string, got 5"),
    ("train unknown ratio convention", with_(TRAIN, "--harmful-data", "{w}/attack.jsonl", "--harmful-ratio-of", "share"),
     "harmful_ratio_of must be one of"),
    # ---- generate ----
    ("generate output is the data", with_(GENERATE, "--output", "{w}/eval.jsonl", drop=("--output",)), "also an input"),
    ("generate max-new-tokens 0", with_(GENERATE, "--max-new-tokens", "0"), "generation.max_new_tokens: must be >= 1"),
    ("generate temperature 0", with_(GENERATE, "--sample", "--temperature", "0"), "generation.temperature: must be > 0"),
    ("generate missing data", with_(GENERATE, "--data", "{w}/nope.jsonl", drop=("--data",)), "nope.jsonl: file not found"),
    ("generate limit 0", with_(GENERATE, "--limit", "0"), "--limit must be >= 1"),
    ("generate unknown hub model (offline)", with_(GENERATE, "--model", "no-such-org/no-such-model", drop=("--model",)),
     "model 'no-such-org/no-such-model': not a local directory"),
    # ---- judge ----
    ("judge missing responses", with_(JUDGE, "--responses", "{w}/nope.jsonl", drop=("--responses",)), "no such responses file"),
    ("judge empty responses", with_(JUDGE, "--responses", "{w}/empty.jsonl", drop=("--responses",)), "--allow-empty"),
    ("judge directory as responses", with_(JUDGE, "--responses", "{w}/a_dir", drop=("--responses",)), "is a directory"),
    ("judge null response", with_(JUDGE, "--responses", "{w}/null_response.jsonl", drop=("--responses",)),
     "null_response.jsonl:1: field 'response' must be a string"),
    ("judge numeric response", with_(JUDGE, "--responses", "{w}/number_response.jsonl", drop=("--responses",)),
     "number_response.jsonl:1: field 'response' must be a string"),
    ("judge missing response field", with_(JUDGE, "--responses", "{w}/no_response.jsonl", drop=("--responses",)),
     "no_response.jsonl:1: missing field 'response'"),
    ("judge non-UTF-8 responses", with_(JUDGE, "--responses", "{w}/latin1_responses.jsonl", drop=("--responses",)),
     "latin1_responses.jsonl:1: not UTF-8"),
    ("judge output is the responses", with_(JUDGE, "--output", "{w}/responses.jsonl", drop=("--output",)), "also an input"),
    ("judge unknown judge", with_(JUDGE, "--judge", "oracle"), "unknown judge 'oracle'"),
    ("judge llm threshold out of range", with_(JUDGE, "--judge", "llm", "--llm-threshold", "9"),
     "llm.threshold: must be in 1..5, got 9 (option --llm-threshold)"),
    # ---- judge fit / validate ----
    ("fit C 0", with_(FIT, "--C", "0"), "--C must be > 0"),
    ("fit output is a file", with_(FIT, "--output", "{w}/a_file", drop=("--output",)), "is a file"),
    ("fit data without unsafe", with_(FIT, "--data", "{w}/no_unsafe.jsonl", drop=("--data",)), "missing field 'unsafe'"),
    ("validate missing data", ["judge", "validate", "--data", "{w}/nope.jsonl"], "nope.jsonl: file not found"),
    # ---- eval ----
    ("eval nothing to evaluate", ["eval", "--model", "{m}", "--output-dir", "{w}/ev"], "nothing to evaluate"),
    ("eval unknown task", with_(EVAL, "--task-data", "{w}/ref.jsonl", "--task", "nope"), "unknown task 'nope'"),
    ("eval limit 0", with_(EVAL, "--limit", "0"), "harmful_limit: must be >= 1 (or unset), got 0 (option --limit)"),
    ("eval output dir is a file", with_(EVAL, "--output-dir", "{w}/a_file", drop=("--output-dir",)), "is a file"),
    # ---- align ----
    ("align max-steps 0", with_(ALIGN, "--max-steps", "0"), "training.max_steps"),
    ("align trains on a check set", with_(ALIGN, "--check-benign", "{w}/ref.jsonl"), "never be trained on"),
    ("align negative refusals", with_(ALIGN, "--n-refusals", "-5"), "n_refusals: must be >= 0"),
    # ---- bench ----
    ("bench missing config", ["bench", "{w}/nope.yaml"], "config file not found"),
    ("bench label with a path", ["bench", "{w}/bad_label.yaml", "--output-dir", "{w}/g"], "letters, digits"),
    ("bench bad shard", ["bench", "{w}/grid.yaml", "--output-dir", "{w}/g", "--shard", "3/2"], "1 <= I <= N"),
]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(name, argv, message, ws, capsys):
    root, model = ws
    argv = [a.replace("{w}", str(root)).replace("{m}", model) for a in argv]
    before = snapshot(root)
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, (name, captured.err[-500:])
    assert message in captured.err, captured.err[-500:]
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(root) == before  # no output created, no input or earlier result changed


def test_the_suite_covers_every_command():
    commands = {c[1][0] if c[1][0] != "judge" else " ".join(c[1][:2]) if c[1][1] in ("fit", "validate") else "judge"
                for c in CASES}
    assert {"select", "train", "generate", "judge", "judge fit", "judge validate", "eval", "align", "bench"} <= commands
    assert len(CASES) >= 40


def test_allow_empty_accepts_an_empty_responses_file(ws, capsys):
    root, _ = ws
    assert main(["judge", "--responses", str(root / "empty.jsonl"), "--output", str(root / "v.jsonl"), "--allow-empty"]) == 0
    assert "ASR n/a" in capsys.readouterr().out


def test_verbose_shows_the_traceback(ws):
    root, _ = ws
    with pytest.raises(ValueError, match="no such responses file"):
        main(["-v", "judge", "--responses", str(root / "nope.jsonl"), "--output", str(root / "v.jsonl")])


def test_atomic_and_appended_files_get_the_same_mode(tmp_path):
    import os

    from spard.io import JsonlAppender, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        with JsonlAppender(tmp_path / "b.jsonl") as w:
            w.write({"x": 1})
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o644, "b.jsonl": 0o644}  # the old atomic writes were 0600


def test_a_failed_run_leaves_no_stub_folder(ws, monkeypatch):
    import spard.training.run as run_mod

    root, model = ws

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(run_mod, "load_model", boom)
    with pytest.raises(RuntimeError):
        main(["train", "--model", model, "--data", str(root / "ref.jsonl"), "--defense", "sft", "--max-steps", "1",
              "--output-dir", str(root / "run")])
    assert not (root / "run").exists()  # the old code left config.yaml and an empty checkpoints/


def test_overwrite_replaces_a_finished_run_only_when_the_new_one_finishes(ws, monkeypatch):
    import spard.training.run as run_mod

    root, model = ws
    argv = ["train", "--model", model, "--data", str(root / "ref.jsonl"), "--defense", "sft", "--max-steps", "1",
            "--output-dir", str(root / "finished_run"), "--overwrite", "--no-progress"]
    real = run_mod.save_trained
    monkeypatch.setattr(run_mod, "save_trained", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        main(argv)
    assert (root / "finished_run" / "metrics.json").read_text() == '{"defense": "sft"}\n'  # untouched
    monkeypatch.setattr(run_mod, "save_trained", real)
    assert main(argv) == 0
    assert json.loads((root / "finished_run" / "metrics.json").read_text())["updates"] == 1
    assert not list(root.glob(".finished_run*"))


@pytest.mark.parametrize("defense", ["spard"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(defense, tiny_model_dir, toy_data, tmp_path):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    def argv(out):
        return [sys.executable, "-m", "spard.cli", "train", "--model", str(tiny_model_dir), "--data", str(toy_data["task"]),
                "--harmful-data", str(toy_data["attack"]), "--harmful-ratio", "0.25", "--safe-pool", str(toy_data["safe_pool"]),
                "--defense", defense, "--min-k", "16", "--embedding-model", "base", "--max-steps", "40", "--batch-size", "4",
                "--grad-accum", "1", "--lr", "3e-3", "--warmup-steps", "0", "--seed", "0", "--lora-r", "4", "--lora-alpha", "8",
                "--max-length", "96", "--tau", "auto", "--save-steps", "3", "--no-progress", "--output-dir", str(out)]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPARD_CACHE": str(tmp_path / "cache")}
    whole = subprocess.run(argv(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(argv(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at = random.Random().randint(5, 30)  # a random update
    log = out / "train_log.jsonl"
    for _ in range(60_000):  # polls every 10 ms, at most about ten minutes
        if proc.poll() is not None:
            break
        if log.exists() and len(log.read_text().splitlines()) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run([*argv(out), "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, 41)), (kill_at, steps)  # no duplicate, no missing step
    a = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    b = load_file(str(out / "model" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch_close(a[name], b[name])
    whole_log = [json.loads(line) for line in (tmp_path / "whole" / "train_log.jsonl").read_text().splitlines()]
    resumed_log = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["fired"] for r in whole_log] == [r["fired"] for r in resumed_log]


def torch_close(x, y):
    import torch

    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
