"""docs/architecture.md's examples run as written: a defense, a selector and a judge, each one file plus
its registration, work through `spard train`, `spard bench`, selection and judging with no edit elsewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from spard.bench.runner import run_bench
from spard.cli import main
from spard.defenses import DEFENSES
from spard.evaluation.judges import JUDGES, make_judge
from spard.registry import Registry
from spard.selection.selectors import SELECTORS, SelectionConfig, make_selector

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def examples() -> dict[str, str]:
    blocks = re.findall(r"```python\n# example: (\w+)\n(.*?)```", DOC.read_text(), flags=re.S)
    return {name: code for name, code in blocks}


@pytest.fixture(scope="module")
def plugins():
    found = examples()
    assert set(found) == {"defense", "selector", "judge"}
    for name, code in found.items():
        assert len(code.strip().splitlines()) <= 30, f"the {name} example should stay short"
        exec(compile(code, f"{DOC}:{name}", "exec"), {"__name__": f"example_{name}"})
    yield
    DEFENSES.remove("grad-noise")
    SELECTORS.remove("farthest-first")
    JUDGES.remove("regex")


def test_registry_names_choices_and_refuses_a_second_object():
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1, "one")
    with pytest.raises(ValueError, match="widget 'a' is registered already"):
        reg.add("a", 2)
    with pytest.raises(ValueError, match="unknown widget 'b'; choose from a"):
        reg.get("b")
    assert reg.describe() == [("a", "one")] and "a" in reg and list(reg) == ["a"]


def test_spard_list_shows_plugins_with_their_doc(plugins, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for line in ("grad-noise", "Toy: SFT with Gaussian gradient noise", "farthest-first", "regex:PATTERN", "rd-dpp", "gsm8k"):
        assert line in out
    assert main(["list", "judges"]) == 0
    assert "defenses:" not in capsys.readouterr().out


def test_example_defense_trains_through_the_cli(plugins, tiny_model_dir, toy_data, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--data", str(toy_data["task"]), "--defense", "grad-noise",
                 "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4", "--lora-r", "4",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["grad_noise_std"] for r in rows] == [1e-3, 1e-3]
    assert json.loads((out / "metrics.json").read_text())["defense"] == "grad-noise"


def test_example_defense_runs_in_a_bench_grid(plugins, tiny_model_dir, toy_data, tmp_path):
    from test_bench import bench_config

    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "bench", evaluate_start=False)
    cfg.defenses = ["grad-noise"]
    cfg.grids = cfg.grids[:1]
    cfg.grids[0].defenses = ["grad-noise"]
    rows = run_bench(cfg, progress=False)
    assert [r["label"] for r in rows] == ["grad-noise"] and any(k.startswith("asr_mean[") for k in rows[0])
    assert "grad-noise" in (tmp_path / "bench" / "results.md").read_text()


def test_example_selector_and_judge(plugins):
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(40, 8))
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    picked = make_selector(SelectionConfig(method="farthest-first")).select(5, pool, pool[:3]).indices
    assert len(set(picked.tolist())) == 5
    judge = make_judge("regex:(?i)here is how")
    verdicts = judge.judge(["p", "p"], ["Here is how to do it", "I cannot help"])
    assert [v.harmful for v in verdicts] == [True, False] and judge.fingerprint["pattern"] == "(?i)here is how"
    from spard.evaluation.judges import judge_fingerprint, judge_kind

    assert judge_fingerprint("regex:x") == {"judge": "regex:x"}  # registered without a fingerprint function

    @judge_kind("constant", fingerprint=lambda arg, llm: {"judge": "constant", "value": arg})
    def make_constant(arg, llm):
        raise AssertionError("the fingerprint must not build the judge")

    try:
        assert judge_fingerprint("constant:1") == {"judge": "constant", "value": "1"}
    finally:
        JUDGES.remove("constant")
