"""Classification scoring: the generated label, and the generation-free label log-likelihood."""

from __future__ import annotations

import json

import pytest
import torch

from spard.data.records import Example
from spard.evaluation.classification import label_loglikelihoods, label_of, loglik_predictions, task_labels
from spard.evaluation.metrics import accuracy, correct_items

AGNEWS = ["Business", "Sci/Tech", "Sports", "World"]


@pytest.mark.parametrize("response, expected", [
    ("negative", "negative"),
    ("The sentiment is Positive.", "positive"),
    ("positive, not negative", "positive"),           # the label named first
    ("It is not negative; it is positive", "negative"),  # a rule, not a reader: first named wins
    ("negatively charged words", None),               # whole words only
    ("I cannot classify this.", None),
    ("", None),
])
def test_the_generated_label_is_the_first_label_named(response, expected):
    assert label_of(response, ["negative", "positive"]) == expected


def test_multiword_labels_prefer_the_longer_match_and_keep_their_punctuation():
    assert label_of("sci/tech news", AGNEWS) == "Sci/Tech"
    assert label_of("Topic: sports", AGNEWS) == "Sports"
    assert label_of("Tech", [*AGNEWS, "Tech"]) == "Tech"
    assert label_of("Sci/Tech", [*AGNEWS, "Tech"]) == "Sci/Tech"


def test_label_accuracy_needs_the_label_set_and_counts_no_label_as_wrong():
    refs = ["positive", "negative", "negative"]
    assert correct_items("label", ["Positive!", "no idea", "negative"], refs, ["negative", "positive"]) == [True, False, True]
    assert accuracy("label", ["Positive!", "no idea", "negative"], refs, ["negative", "positive"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs its label set"):
        correct_items("label", ["x"], ["positive"])
    assert task_labels(["b", "a", "b", " a "]) == ["a", "b"]
    with pytest.raises(ValueError, match="at least two distinct labels"):
        task_labels(["a", "a"])


def _direct_logprob(model, tokenizer, example: Example, label: str) -> float:
    """log p(label + EOS | prompt), computed by hand from one unpadded forward pass."""
    from spard.data.formatting import prompt_text

    prompt_ids = tokenizer(prompt_text(tokenizer, example), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float()[0, :-1], dim=-1)
    positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer_ids))
    return float(sum(logp[pos, tok] for pos, tok in zip(positions, answer_ids, strict=True)))


def test_label_loglikelihood_is_the_answer_probability_whatever_the_batch(tiny):
    model, tokenizer = tiny
    examples = [Example(prompt=p, id=str(i)) for i, p in enumerate(
        ["Is this review good? a fine film", "Classify: terrible acting and a dull plot from start to end", "ok"])]
    labels = ["negative", "positive", "Sci/Tech"]
    batched = label_loglikelihoods(model, tokenizer, examples, labels, batch_size=4)
    single = label_loglikelihoods(model, tokenizer, examples, labels, batch_size=1)
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)
    for i, ex in enumerate(examples):
        for j, label in enumerate(labels):
            assert batched[i][j] == pytest.approx(_direct_logprob(model, tokenizer, ex, label), abs=1e-4)
    predicted = loglik_predictions(model, tokenizer, examples, labels)
    assert predicted == [labels[max(range(3), key=lambda j: row[j])] for row in batched]


def test_eval_reports_both_scorers_with_intervals_and_per_item_results(tiny_model_dir, tmp_path):
    from spard.evaluation.evaluate import EvalConfig, eval_fingerprint, eval_key, run_evaluation

    data = tmp_path / "sst2.jsonl"
    rows = [{"prompt": f"Sentiment of review {i}: {'great' if i % 2 else 'awful'} movie", "answer": "positive" if i % 2 else "negative"}
            for i in range(7)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(task_data=str(data), task="label", task_limit=5, task_loglik=True, answer_nll=False,
                     output_dir=str(tmp_path / "eval"), progress=False)
    cfg.model.name = str(tiny_model_dir)
    cfg.generation.max_new_tokens = 4
    task = run_evaluation(cfg)["task"]
    assert task["labels"] == ["negative", "positive"] and task["n"] == 5
    assert len(task["correct"]) == len(task["loglik_correct"]) == 5
    assert task["accuracy"] == sum(task["correct"]) / 5 and task["accuracy_interval"]["k"] == sum(task["correct"])
    assert task["loglik_accuracy"] == sum(task["loglik_correct"]) / 5
    assert task["loglik_interval"]["low"] <= task["loglik_accuracy"] <= task["loglik_interval"]["high"]
    assert "most likely label" in (tmp_path / "eval" / "summary.md").read_text()
    # the new settings leave the key of an evaluation that does not use them as it was
    plain = EvalConfig(task_data=str(data), task="gsm8k")
    assert "task_loglik" not in eval_fingerprint(plain) and "task_labels" not in eval_fingerprint(plain)
    assert eval_key(cfg) != eval_key(EvalConfig(**{**cfg.__dict__, "task_loglik": False}))
