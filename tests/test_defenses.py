import json

import pytest
import torch
from conftest import lora_model_with_nonzero_b
from test_training import base_config

from spard.defenses import DEFENSES
from spard.defenses.safegrad import SafeGradTrainer, remove_conflict
from spard.defenses.safelora import alignment_projector, apply_safelora, lora_layers
from spard.models import load_model
from spard.training.run import run_training

ALL = ["sft", "spard", "safeinstr", "lisa", "ptst", "safegrad", "safelora"]


def unaligned_copy(tiny_model_dir, tmp_path):
    model, tok = load_model(str(tiny_model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("proj.weight"):
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "unaligned")
    tok.save_pretrained(tmp_path / "unaligned")
    return tmp_path / "unaligned"


def test_registry_lists_every_defense():
    assert sorted(DEFENSES) == sorted(ALL)


@pytest.mark.parametrize("defense", ALL)
def test_every_defense_trains_and_writes_the_same_artefacts(defense, tiny_model_dir, toy_data, tmp_path):
    over = {"training.max_steps": 3, "lisa.alignment_steps": 1, "lisa.finetune_steps": 2}
    if defense == "safelora":
        over["safelora.unaligned_model"] = str(unaligned_copy(tiny_model_dir, tmp_path))
    metrics = run_training(base_config(tiny_model_dir, toy_data, tmp_path / defense, defense=defense, **over))
    out = tmp_path / defense
    for name in ("config.yaml", "train_log.jsonl", "metrics.json", "model/adapter_model.safetensors"):
        assert (out / name).exists(), name
    assert (out / "safe_set.jsonl").exists() == DEFENSES[defense].uses_safety_data
    utility = [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if r.get("state") != "alignment"]
    assert len(utility) == 3  # the same user-data budget for every defense
    assert metrics["defense"] == defense


def test_safety_data_defenses_get_k_random_samples_by_default(tiny_model_dir, toy_data, tmp_path):
    m = run_training(base_config(tiny_model_dir, toy_data, tmp_path / "si", defense="safeinstr", **{"training.max_steps": 1}))
    assert m["selection"] == {"method": "random", "k": 16, "pool_size": 768}
    assert m["origins"] == {"task": 120, "harmful:attack": 30, "safety": 16}  # exactly k added
    pool_idx = [json.loads(line)["pool_index"] for line in (tmp_path / "si" / "safe_set.jsonl").read_text().splitlines()]
    m2 = run_training(base_config(tiny_model_dir, toy_data, tmp_path / "si2", defense="safeinstr",
                                  **{"training.max_steps": 1, "selection.method": "rd-dpp"}))
    assert m2["selection"]["method"] == "rd-dpp" and m2["selection"]["k"] == 16
    pool_idx2 = [json.loads(line)["pool_index"] for line in (tmp_path / "si2" / "safe_set.jsonl").read_text().splitlines()]
    assert pool_idx != pool_idx2


def test_lisa_alternates_and_its_proximal_term_holds_weights_near_the_switch(tiny_model_dir, toy_data, tmp_path):
    def run(rho, name, proximal_from=0.0):
        cfg = base_config(tiny_model_dir, toy_data, tmp_path / name, defense="lisa", **{
            "training.max_steps": 8, "lisa.alignment_steps": 2, "lisa.finetune_steps": 4, "lisa.rho": rho,
            "lisa.proximal_from": proximal_from})
        metrics = run_training(cfg)
        log = [json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        return metrics, log

    m, log = run(50.0, "rho")
    assert [r["state"][0] for r in log] == list("aaffffaaffff")  # 8 user updates need 12 in all
    assert m["training"]["alignment_updates"] == 4 and m["training"]["finetune_updates"] == 8
    _, free = run(0.0, "free")
    # distance from the last switch point at the end of each state
    held = [r["distance_to_switch"] for r in log if r["step"] in (6, 12)]
    drift = [r["distance_to_switch"] for r in free if r["step"] in (6, 12)]
    assert all(h < 0.8 * d for h, d in zip(held, drift, strict=True)), (held, drift)
    # the authors' warm-up: no proximal term before proximal_from x all updates (here: never)
    _, late = run(50.0, "late", proximal_from=1.0)
    assert [r["distance_to_switch"] for r in late] == pytest.approx([r["distance_to_switch"] for r in free], rel=1e-4)


def test_ptst_trains_without_and_evaluates_with_the_safety_prompt(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    import spard.training.run as run_module
    from spard.defenses.ptst import PTSTConfig
    from spard.evaluation.evaluate import EvalConfig, run_evaluation

    seen = []
    real = run_module.tokenize_examples

    def spy(tokenizer, examples, **kwargs):
        rows = real(tokenizer, examples, **kwargs)
        seen.extend(tokenizer.decode(r["input_ids"]) for r in rows)
        return rows

    monkeypatch.setattr(run_module, "tokenize_examples", spy)
    run_training(base_config(tiny_model_dir, toy_data, tmp_path / "ptst", defense="ptst", **{"training.max_steps": 1}))
    safety_prompt = PTSTConfig().eval_system_prompt
    assert seen and not any("Always answer as helpfully" in text for text in seen)
    metrics = json.loads((tmp_path / "ptst" / "metrics.json").read_text())
    assert metrics["eval_system_prompt"] == safety_prompt

    cfg = EvalConfig(harmful=[str(toy_data["eval"])], harmful_limit=2, output_dir=str(tmp_path / "eval"), progress=False)
    cfg.model.name = str(tmp_path / "ptst" / "model")
    cfg.generation.max_new_tokens = 4
    ev = run_evaluation(cfg)
    assert ev["system_prompt"] == safety_prompt and ev["system_prompt_source"] == "training run"


def test_remove_conflict_properties():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        user = [torch.randn(5, generator=gen), torch.randn(3, 2, generator=gen)]
        align = [torch.randn(5, generator=gen), torch.randn(3, 2, generator=gen)]
        dot = sum(float((u * a).sum()) for u, a in zip(user, align, strict=True))
        out, conflicted, _ = remove_conflict(user, align)
        new_dot = sum(float((g * a).sum()) for g, a in zip(out, align, strict=True))
        assert conflicted == (dot < 0)
        if conflicted:
            assert new_dot == pytest.approx(0.0, abs=1e-5)
        else:
            assert all(torch.equal(g, u) for g, u in zip(out, user, strict=True))


def test_safegrad_trainer_applies_only_non_conflicting_gradients(tiny_model_dir, toy_data, tmp_path, monkeypatch):
    records = []
    real_before = SafeGradTrainer.before_optimizer_step
    real_align = SafeGradTrainer.alignment_gradient

    def spy_align(self):
        align = real_align(self)
        records.append({"user": [p.grad.detach().clone() for p in self.trainable_parameters()], "align": align})
        return align

    def spy_before(self):
        stats = real_before(self)
        records[-1]["applied"] = [p.grad.detach().clone() for p in self.trainable_parameters()]
        records[-1]["conflict"] = stats["conflict"]
        return stats

    monkeypatch.setattr(SafeGradTrainer, "alignment_gradient", spy_align)
    monkeypatch.setattr(SafeGradTrainer, "before_optimizer_step", spy_before)
    m = run_training(base_config(tiny_model_dir, toy_data, tmp_path / "sg", defense="safegrad", **{"training.max_steps": 10}))
    assert len(records) == 10 and m["training"]["conflicts"] == sum(r["conflict"] for r in records)
    for r in records:
        dot = sum(float((g * a).sum()) for g, a in zip(r["applied"], r["align"], strict=True))
        if r["conflict"]:
            assert dot >= -1e-6
        else:
            assert all(torch.equal(g, u) for g, u in zip(r["applied"], r["user"], strict=True))


def test_safelora_projects_the_least_similar_layers_and_leaves_the_rest(tiny_model_dir, tmp_path):
    unaligned_dir = unaligned_copy(tiny_model_dir, tmp_path)
    model, _ = lora_model_with_nonzero_b(tiny_model_dir, std=0.1)
    layers = lora_layers(model)
    before = {n: (m.scaling["default"] * m.lora_B["default"].weight @ m.lora_A["default"].weight).detach().double() for n, m in layers.items()}
    unaligned, _ = load_model(str(unaligned_dir))
    unaligned_w = {k: v for k, v in unaligned.state_dict().items() if k in layers}
    stats = apply_safelora(model, unaligned_w, threshold=0.0, num_layers=3, form="orthogonal", rank=4)
    assert len(stats["projected"]) == 3 and stats["layers"] == len(layers) == 8
    for name, layer in layers.items():
        after = (layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight).detach().double()
        if name in stats["projected"]:
            C = alignment_projector(layer.base_layer.weight.detach().double() - unaligned_w[name].double(), "orthogonal", 4)
            torch.testing.assert_close(C @ after, after, rtol=1e-4, atol=1e-6)  # C dW = dW
            torch.testing.assert_close(after, C @ before[name], rtol=1e-4, atol=1e-6)
        else:
            torch.testing.assert_close(after, before[name])
    projected_sims = [stats["similarity"][n] for n in stats["projected"]]
    others = [s for n, s in stats["similarity"].items() if n not in stats["projected"]]
    assert max(projected_sims) <= min(others)


def test_safelora_without_unaligned_model_says_what_is_missing(tiny_model_dir, toy_data, tmp_path):
    with pytest.raises(ValueError, match="unaligned_model"):
        run_training(base_config(tiny_model_dir, toy_data, tmp_path / "x", defense="safelora"))
