"""Run by test_distributed.py under torchrun: one fine-tuning run, then each rank writes a digest of its weights."""

import json
import os
import sys
from pathlib import Path

import spard.training.spag as spag_mod
from spard.config import from_dict
from spard.training.base import SafetyTrainer
from spard.training.config import TrainConfig
from spard.training.run import run_training

cfg = from_dict(TrainConfig, json.loads(Path(sys.argv[1]).read_text()))
original_end = SafetyTrainer._end_training
original_step = spag_mod.safety_projection_step
local_losses: list[float] = []


def recording_step(params, safe_loss_fn, **kwargs):
    """Record this rank's own safe loss (before any cross-rank reduction), then run the real step."""
    import torch

    with torch.no_grad():
        local_losses.append(float(safe_loss_fn().detach()))
    return original_step(params, safe_loss_fn, **kwargs)


spag_mod.safety_projection_step = recording_step


def end_and_digest(self):
    original_end(self)
    sums = [float(p.detach().double().sum()) for p in self.trainable_parameters()]
    fired = [r.get("fired") for r in self.step_records]
    logged = [r.get("safe_loss") for r in self.step_records]
    Path(cfg.output_dir, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(
        {"sums": sums, "fired": fired, "local": local_losses, "logged": logged}))


SafetyTrainer._end_training = end_and_digest
run_training(cfg)
