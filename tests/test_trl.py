"""SPAG inside TRL's SFTTrainer by adding one base class (``pip install spard[trl]``)."""

from __future__ import annotations

import json

import pytest

trl = pytest.importorskip("trl")


def _chat_rows(path, target):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[target]}]} for r in rows]


def test_spag_mixin_turns_sft_trainer_into_spag(tiny_model_dir, toy_data, tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from spard.training import SPAGConfig, SPAGMixin

    class SPAGSFTTrainer(SPAGMixin, SFTTrainer):
        pass

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = Dataset.from_list(_chat_rows(toy_data["task"], "answer")[:24])
    safe = Dataset.from_list(_chat_rows(toy_data["safe_pool"], "safe")[:8])
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                     max_length=64, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0)
    trainer = SPAGSFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             safe_dataset=safe, spag_config=SPAGConfig(tau=0.0, delta=0.0, form="closed", safe_batch_size=2),
                             step_log=tmp_path / "steps.jsonl")
    assert "input_ids" in trainer.safe_dataset.column_names  # the chat rows were prepared like the training set
    trainer.train()
    rows = trainer.step_records
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["fired"] and r["step_length"] > 0 and r["safe_loss"] > 0 for r in rows)  # tau 0: every update projects
    assert len((tmp_path / "steps.jsonl").read_text().splitlines()) == 3
    assert trainer.summary()["projections_fired"] == 3
    moved = sum(float((p.detach() - start[n]).abs().sum()) for n, p in trainer.model.named_parameters())
    assert moved > 0

    # the same run without the mixin differs only by the projection: its weights end elsewhere
    plain_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain = SFTTrainer(model=plain_model, args=args, train_dataset=train, processing_class=tokenizer)
    plain.train()
    diff = sum(float((a.detach() - b.detach()).abs().sum())
               for a, b in zip(plain.model.parameters(), trainer.model.parameters(), strict=True))
    assert diff > 0 and torch.isfinite(torch.tensor(diff))


def test_spag_mixin_needs_safety_data(tiny_model_dir, toy_data, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from spard.training import SPAGMixin

    class SPAGSFTTrainer(SPAGMixin, SFTTrainer):
        pass

    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, report_to=[], use_cpu=True, max_length=64)
    with pytest.raises(ValueError, match="needs a non-empty safety set"):
        SPAGSFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
                       train_dataset=Dataset.from_list(_chat_rows(toy_data["task"], "answer")[:4]),
                       processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
