"""benchmarks/gpu_check.py runs end to end on CPU with the tiny shape (on a GPU it runs the 7B shape)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_trains_sft_and_spard_and_generates_on_the_tiny_shape(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    assert module.main(["--shape", "tiny", "--updates", "3", "--batch", "8", "--micro", "4", "--safe", "2",
                        "--length", "24", "--gen-batch", "3", "--gen-prompt", "8", "--gen-new", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    sft, spard = result["runs"]
    assert (sft["defense"], spard["defense"]) == ("sft", "spard")
    assert sft["updates"] == spard["updates"] == 3 and sft["seconds_per_update"] > 0
    assert isinstance(spard["projections_fired"], int)  # the SPAG hook ran inside the timed updates
    assert result["spard_over_sft"] == spard["seconds_per_update"] / sft["seconds_per_update"]
    assert result["generation"]["new_tokens"] == 3 * 5


def test_gpu_settings_fail_clearly_where_the_machine_cannot_and_run_where_it_can(tiny_model_dir, toy_data, tmp_path, capsys):
    import importlib.util as iu

    import pytest
    import torch

    from spard.cli import main
    from spard.models.loading import ModelConfig, gpu_load_kwargs

    if iu.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        with pytest.raises(ValueError, match="QLoRA"):
            gpu_load_kwargs(ModelConfig(quantization="4bit"))
    with pytest.raises(ValueError, match="must be sdpa, flash_attention_2 or eager"):
        gpu_load_kwargs(ModelConfig(attn_implementation="fast"))
    assert gpu_load_kwargs(ModelConfig(attn_implementation="sdpa")) == {"attn_implementation": "sdpa"}
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(toy_data["task"]), "--defense", "sft",
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4", "--lora-r", "4", "--no-progress",
                 "--set", "training.gradient_checkpointing=true", "--set", "model.attn_implementation=sdpa"]) == 0
    assert (out / "metrics.json").exists()
