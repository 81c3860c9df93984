"""SPAG under torchrun / accelerate with two CPU processes (gloo): every rank ends with the same weights."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import base_config

from spard.config import to_dict


@pytest.mark.parametrize("form", ["closed", "reference"])
def test_two_process_spag_keeps_ranks_in_sync(form, tiny_model_dir, toy_data, tmp_path):
    cfg = base_config(tiny_model_dir, toy_data, tmp_path / "ddp", defense="spard", **{
        "training.max_steps": 4, "training.batch_size": 4, "training.gradient_accumulation_steps": 2, "spag.form": form})
    cfg = dataclasses.replace(cfg, embedding_cache=str(tmp_path / "cache"))
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(to_dict(cfg)))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--standalone",
                           str(Path(__file__).with_name("distributed_worker.py")), str(config)],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "ddp"
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    # each rank draws its own safety batch (the old code drew the same rows on every rank)...
    assert any(a != pytest.approx(b, rel=1e-6) for a, b in zip(r0["local"], r1["local"], strict=True))
    # ... and SPAG decides on the loss averaged over ranks (fails when the reduction is removed)
    for step, (a, b) in enumerate(zip(r0["local"], r1["local"], strict=True)):
        assert r0["logged"][step] == pytest.approx((a + b) / 2, rel=1e-5), step
    assert r0["fired"] == r1["fired"] and any(r0["fired"])  # the same safety decisions on both ranks
    assert r0["sums"] == pytest.approx(r1["sums"], rel=1e-6, abs=1e-9)  # and the same weights
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["updates"] == 4
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 4  # written once, by rank 0
