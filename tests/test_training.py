import json

import pytest
import torch
import yaml
from conftest import lora_model_with_nonzero_b

from spard.cli import main
from spard.config import from_dict
from spard.data import FieldMap, load_examples, tokenize_examples
from spard.data.formatting import as_dataset, data_collator
from spard.evaluation.loss import response_nll
from spard.models import load_model
from spard.training import SPAGConfig, SPAGTrainer
from spard.training.config import TrainConfig
from spard.training.run import run_training


def base_config(tiny_model_dir, toy_data, out, **over):
    cfg = {
        "model": {"name": str(tiny_model_dir)},
        "data": {"task": str(toy_data["task"]), "harmful": str(toy_data["attack"]), "harmful_ratio": 0.25,
                 "safe_pool": str(toy_data["safe_pool"]), "max_length": 96},
        "lora": {"r": 8, "alpha": 16},
        "training": {"learning_rate": 3e-3, "max_steps": 25, "batch_size": 8, "gradient_accumulation_steps": 1,
                     "warmup_steps": 0, "logging_steps": 100, "seed": 0},
        "selection": {"min_k": 16, "embedding_model": "base"},
        "spag": {"tau": 0.2, "delta": 0.1, "safe_batch_size": 4},
        "output_dir": str(out),
        "progress": False,
    }
    for key, value in over.items():
        section, _, leaf = key.partition(".")
        if leaf:
            cfg.setdefault(section, {})[leaf] = value
        else:
            cfg[section] = value
    return from_dict(TrainConfig, cfg)


def safe_loss_of(run_dir, safe_rows):
    model, tok = load_model(str(run_dir / "model"))
    return response_nll(model, tok, safe_rows, max_length=96)


def test_spag_ends_with_lower_safe_loss_than_sft(tiny_model_dir, toy_data, tmp_path):
    spard = run_training(base_config(tiny_model_dir, toy_data, tmp_path / "spard", defense="spard",
                                     **{"spag.heldout_size": 8, "spag.heldout_every": 5, "spag.measure_after": True}))
    sft = run_training(base_config(tiny_model_dir, toy_data, tmp_path / "sft", defense="sft"))
    assert spard["training"]["projections_fired"] > 0
    assert spard["origins"] == sft["origins"] == {"task": 120, "harmful:attack": 30}
    safe = load_examples(tmp_path / "spard" / "safe_set.jsonl", FieldMap(target="safe"))
    assert len(safe) == 16
    assert safe_loss_of(tmp_path / "spard", safe) < safe_loss_of(tmp_path / "sft", safe) - 0.05
    log = [json.loads(line) for line in (tmp_path / "spard" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 25 and all({"utility_loss", "safe_loss", "safe_loss_after", "fired", "step_length", "seconds"} <= set(r) for r in log)
    assert all(r["seconds"] >= r["seconds_check"] + r["seconds_projection"] + r["seconds_after"] > 0 for r in log)
    assert [r["step"] for r in log if "heldout_safe_loss" in r] == [5, 10, 15, 20, 25]
    assert spard["training"]["heldout_safe_loss_last"] == log[-1]["heldout_safe_loss"]
    fired = [r for r in log if r["fired"]]
    assert sum(r["safe_loss_after"] for r in fired) < sum(r["safe_loss"] for r in fired)


def _one_update(tiny_model_dir, toy_data, tmp_path, batch, accum, name):
    from spard.training.run import training_arguments

    model, tok = lora_model_with_nonzero_b(tiny_model_dir)
    examples = load_examples(toy_data["task"], limit=4)
    ds = as_dataset(tokenize_examples(tok, examples, max_length=96))
    cfg = base_config(tiny_model_dir, toy_data, tmp_path / name, **{
        "training.batch_size": batch, "training.gradient_accumulation_steps": accum, "training.max_steps": 1,
        "training.weight_decay": 0.0, "training.max_grad_norm": 0.0})
    args = training_arguments(cfg, tmp_path / name)
    args.optim = "sgd"
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    safe = as_dataset(tokenize_examples(tok, examples[:2], max_length=96))
    trainer = SPAGTrainer(model=model, args=args, train_dataset=ds, data_collator=data_collator(tok),
                          spag_config=SPAGConfig(tau=1e9), safe_dataset=safe)
    trainer.train()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters() if p.requires_grad}
    return delta, trainer.step_records[0]


def test_accumulation_1x4_and_4x1_give_the_same_utility_update(tiny_model_dir, toy_data, tmp_path):
    d1, r1 = _one_update(tiny_model_dir, toy_data, tmp_path, 4, 1, "b4")
    d2, r2 = _one_update(tiny_model_dir, toy_data, tmp_path, 1, 4, "a4")
    assert any(float(v.abs().max()) > 0 for v in d1.values())
    for name in d1:
        torch.testing.assert_close(d1[name], d2[name], rtol=1e-3, atol=1e-8)
    assert r1["utility_loss"] == pytest.approx(r2["utility_loss"], rel=1e-4)
    assert not r1["fired"] and not r2["fired"]


def test_tau_auto_is_the_starting_models_safe_loss(tiny_model_dir, toy_data, tmp_path):
    cfg = base_config(tiny_model_dir, toy_data, tmp_path / "auto", defense="spard", **{"training.max_steps": 2, "spag.tau": "auto"})
    metrics = run_training(cfg)
    safe = load_examples(tmp_path / "auto" / "safe_set.jsonl", FieldMap(target="safe"))
    model, tok = load_model(str(tiny_model_dir))
    assert metrics["training"]["tau"] == pytest.approx(response_nll(model, tok, safe, max_length=96), rel=0.05)


def test_spard_train_cli_writes_every_artefact(tiny_model_dir, toy_data, tmp_path, capsys):
    out = tmp_path / "cli"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"lora": {"r": 4, "alpha": 8}, "training": {"warmup_steps": 0, "max_steps": 50}}))
    rc = main([
        "train", "--config", str(config), "--model", str(tiny_model_dir), "--data", str(toy_data["task"]),
        "--harmful-data", str(toy_data["attack"]), "--harmful-ratio", "0.1", "--defense", "spard",
        "--safe-pool", str(toy_data["safe_pool"]), "--output-dir", str(out), "--max-steps", "3",
        "--batch-size", "4", "--grad-accum", "2", "--min-k", "8", "--embedding-model", "base", "--no-progress",
    ])
    assert rc == 0
    for name in ("config.yaml", "safe_set.jsonl", "train_log.jsonl", "metrics.json", "model/adapter_model.safetensors"):
        assert (out / name).exists(), name
    resolved = from_dict(TrainConfig, yaml.safe_load((out / "config.yaml").read_text()))
    assert resolved.training.max_steps == 3  # the flag overrode the YAML
    assert resolved.lora.r == 4 and resolved.selection.method == "rd-dpp"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["updates"] == 3 and metrics["selection"]["k"] == 8
    assert metrics["origins"] == {"task": 120, "harmful:attack": 12}
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3
    assert "updates=3" in capsys.readouterr().out


def test_cli_reports_config_errors_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rat: 1\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown field 'learning_rat'" in capsys.readouterr().err
    assert main(["train", "--defense", "nope", "--data", "x.jsonl"]) == 2
    assert "unknown defense" in capsys.readouterr().err


def test_micro_batching_keeps_the_update_and_splits_big_batches(tiny_model_dir, toy_data, tmp_path):
    from spard.training.config import micro_batching

    assert micro_batching(32, 4, 256) == (8, 16)  # the default config: 8 x 256 tokens per pass
    assert micro_batching(8, 1, 256) == (8, 1)  # the replication's batches are left as they were
    assert micro_batching(6, 1, 512) == (3, 2) and micro_batching(7, 2, 4096) == (1, 14)
    with pytest.raises(ValueError, match="must be >= 1 and divide training.batch_size"):
        micro_batching(8, 1, 128, micro=3)
    # the same update in passes of 2 rows: weights equal to one pass of 4 up to float summation order
    results = {}
    for micro in (4, 2):
        cfg = base_config(tiny_model_dir, toy_data, tmp_path / f"m{micro}", defense="sft", **{
            "training.max_steps": 2, "training.batch_size": 4, "training.gradient_accumulation_steps": 1,
            "training.micro_batch_size": micro})
        run_training(cfg)
        from safetensors.torch import load_file

        results[micro] = load_file(str(tmp_path / f"m{micro}" / "model" / "adapter_model.safetensors"))
    for name, a in results[4].items():
        assert torch.allclose(a, results[2][name], rtol=1e-3, atol=1e-5), name


def test_safety_batches_are_seeded_fresh_permutations_and_skip_continues_the_stream():
    import itertools

    from spard.training.base import FreshPermutationBatches

    stream = list(itertools.islice(iter(FreshPermutationBatches(50, 4, seed=3)), 30))
    assert all(len(b) == 4 and len(set(b)) == 4 and all(0 <= i < 50 for i in b) for b in stream)
    assert stream == list(itertools.islice(iter(FreshPermutationBatches(50, 4, seed=3)), 30))  # seeded
    assert stream != list(itertools.islice(iter(FreshPermutationBatches(50, 4, seed=4)), 30))
    resumed = list(itertools.islice(iter(FreshPermutationBatches(50, 4, seed=3, skip=10)), 20))
    assert resumed == stream[10:]
    assert next(iter(FreshPermutationBatches(3, 8, seed=0))) in ([0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0])


def _labelled_batch(tokenizer, texts, masked_prefix=3):
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[:, :masked_prefix] = -100  # a prompt the loss does not score
    return {**batch, "labels": labels}


@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_chunked_loss_equals_the_library_loss_and_its_gradient(tiny_model_dir, chunk):
    from spard.training.loss import lm_loss

    model, tok = load_model(str(tiny_model_dir))
    model.train()
    batch = _labelled_batch(tok, ["the cat sat on the mat today", "a dog", "refuse to help with that request now"])
    reference = model(**batch).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss = lm_loss(model, batch, chunk)
    assert torch.allclose(loss, reference, rtol=1e-5, atol=1e-6)
    loss.backward()
    for name, grad in ref_grads.items():
        assert torch.allclose(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6), name
    # under gradient accumulation the sum is divided by the accumulated batch's token count
    count = int((batch["labels"][:, 1:] != -100).sum())
    summed = lm_loss(model, batch, chunk, num_items=torch.tensor(4 * count))
    assert torch.allclose(summed * 4, reference, rtol=1e-5)


def test_automatic_chunking_leaves_the_replication_shapes_alone():
    from spard.training.loss import chunk_rows

    vocab = 49152  # SmolLM2
    assert chunk_rows(None, 8, 128, vocab) == 0  # every replication run (201 MB of logits)
    assert chunk_rows(None, 8, 256, vocab) == 1024  # the defaults' passes (403 MB)
    assert chunk_rows(0, 8, 4096, vocab) == 0 and chunk_rows(7, 1, 8, vocab) == 7
    with pytest.raises(ValueError, match="loss_chunk_size"):
        chunk_rows(-1, 8, 128, vocab)


def test_a_model_with_soft_capped_logits_keeps_the_library_loss(caplog):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from spard.training.loss import lm_loss

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                           final_logit_softcapping=2.0))
    ids = torch.randint(0, 64, (2, 6))
    with caplog.at_level("WARNING", logger="spard.training.loss"):
        assert lm_loss(model, {"input_ids": ids, "labels": ids}, 4) is None
    assert "soft-capped" in caplog.text


def test_training_with_a_chunked_loss_follows_the_same_trajectory(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import spard.training.loss as loss_mod

    calls = []
    real = loss_mod.lm_loss
    monkeypatch.setattr(loss_mod, "lm_loss", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    logs, weights = {}, {}
    for chunk in (0, 7):
        out = tmp_path / f"c{chunk}"
        cfg = base_config(tiny_model_dir, toy_data, out, defense="spard", **{
            "training.max_steps": 4, "training.batch_size": 4, "training.gradient_accumulation_steps": 2,
            "training.loss_chunk_size": chunk, "spag.tau": 0.0, "spag.delta": 0.0})
        run_training(cfg)
        logs[chunk] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        weights[chunk] = load_file(str(out / "model" / "adapter_model.safetensors"))
    for plain, chunked in zip(logs[0], logs[7], strict=True):
        for field in ("utility_loss", "safe_loss"):
            assert plain[field] == pytest.approx(chunked[field], rel=1e-4), field
        assert plain["fired"] == chunked["fired"]
    assert any(row["fired"] for row in logs[7])  # the safe batch's loss (and its backward) went through chunks
    assert calls and set(calls) == {7}  # only the chunked run took the chunked path, on every pass
    for name, a in weights[0].items():
        assert torch.allclose(a, weights[7][name], rtol=1e-3, atol=1e-5), name
