"""Shared fixtures: a tiny random-init causal LM with a tokenizer trained here, and toy data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SPARD_CACHE"] = tempfile.mkdtemp(prefix="spard-test-cache-")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_model(directory: Path, corpus: list[str], pairs: list[tuple[str, str]] = ()) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, set_seed

    specials = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False))
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", unk_token="<unk>", chat_template=CHATML
    )
    set_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    chats = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False)
        for p, r in pairs
    ]
    warm_up(model, tokenizer, chats or corpus)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def warm_up(model, tokenizer, corpus: list[str], steps: int = 60) -> None:
    """A few language-modelling steps so the tiny model emits words rather than one repeated token."""
    import random

    import torch

    rng = random.Random(0)
    texts = [t for t in dict.fromkeys(corpus) if t.strip()]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        batch = tokenizer(rng.sample(texts, 16), return_tensors="pt", padding=True, truncation=True, max_length=64)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> dict[str, Path]:
    from spard.bench.toydata import write_toy_benchmark

    return write_toy_benchmark(tmp_path_factory.mktemp("toy"), n_task=120, n_test=20)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, toy_data) -> Path:
    import json

    corpus, pairs = [], []
    for key, path in toy_data.items():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            corpus.extend(str(v) for v in row.values())
            if key in ("task", "safe_pool"):
                pairs.append((row["prompt"], row.get("answer") or row["safe"]))
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), corpus * 2, pairs)


@pytest.fixture()
def tiny(tiny_model_dir):
    from spard.models import load_model

    return load_model(str(tiny_model_dir))


def lora_model_with_nonzero_b(model_dir: Path, r: int = 4, alpha: int = 8, std: float = 0.05, seed: int = 0):
    """The tiny model with LoRA adapters whose B matrices are random (peft starts them at zero),
    so that the adapters change the output and the A matrices get non-zero gradients."""
    import torch

    from spard.models import LoraSettings, load_model, prepare_for_training

    model, tokenizer = load_model(str(model_dir))
    torch.manual_seed(seed)
    model = prepare_for_training(model, LoraSettings(r=r, alpha=alpha))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, std)
    return model, tokenizer
