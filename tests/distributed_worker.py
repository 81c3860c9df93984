"""Run by test_distributed.py under torchrun: one fine-tuning run, then each rank writes a digest of its weights."""

import json
import os
import sys
from pathlib import Path

from spard.config import from_dict
from spard.training.base import SafetyTrainer
from spard.training.config import TrainConfig
from spard.training.run import run_training

cfg = from_dict(TrainConfig, json.loads(Path(sys.argv[1]).read_text()))
original_end = SafetyTrainer._end_training


def end_and_digest(self):
    original_end(self)
    sums = [float(p.detach().double().sum()) for p in self.trainable_parameters()]
    fired = [r.get("fired") for r in self.step_records]
    Path(cfg.output_dir, f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps({"sums": sums, "fired": fired}))


SafetyTrainer._end_training = end_and_digest
run_training(cfg)
