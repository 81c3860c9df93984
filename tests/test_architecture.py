"""docs/architecture.md's examples run as written: a defense, a selector and a judge, each one file plus
its registration, work through `spard train`, `spard bench`, selection and judging with no edit elsewhere."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from spard.bench.runner import run_bench
from spard.cli import main
from spard.defenses.base import DEFENSE_SECTIONS, unregister
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
        assert len([line for line in code.splitlines() if line.strip()]) <= 30, f"the {name} example should stay short"
        module = types.ModuleType(f"example_{name}")  # as a plugin module would be imported
        sys.modules[module.__name__] = module
        exec(compile(code, f"{DOC}:{name}", "exec"), module.__dict__)
    yield
    for name in found:
        sys.modules.pop(f"example_{name}", None)
    unregister("grad-noise")
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
                 "--set", "grad_noise.std=0.05", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["grad_noise_std"] for r in rows] == [0.05, 0.05]
    assert json.loads((out / "metrics.json").read_text())["defense"] == "grad-noise"
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["grad_noise"] == {"std": 0.05}


def test_a_plugin_section_is_a_run_config_key_but_only_its_own_runs_are_keyed_by_it(plugins):
    from spard.bench.config import run_key
    from spard.config import ConfigError, from_dict, to_dict
    from spard.training.config import TrainConfig

    assert "grad_noise" in DEFENSE_SECTIONS
    cfg = from_dict(TrainConfig, {"defense": "grad-noise", "grad_noise": {"std": 0.5}})
    assert cfg.grad_noise.std == 0.5 and cfg.section("lisa").rho == 1.0  # others at their defaults
    with pytest.raises(ConfigError, match=r"config\.grad_noise\.std: expected a number"):
        from_dict(TrainConfig, {"grad_noise": {"std": "loud"}})
    with pytest.raises(ConfigError, match="unknown field 'grad_nois'"):
        from_dict(TrainConfig, {"grad_nois": {}})
    sft = to_dict(from_dict(TrainConfig, {"defense": "sft"}))
    noisy = to_dict(from_dict(TrainConfig, {"defense": "grad-noise"}))
    # the plugin's section changes the keys of its own runs, never an sft run's
    assert run_key(sft) == run_key({**sft, "grad_noise": {"std": 9.0}})
    assert run_key(noisy) != run_key({**noisy, "grad_noise": {"std": 9.0}})


def test_plugins_load_from_the_command_line_and_the_environment(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_spard_plugin.py").write_text(
        "from spard.evaluation.metrics import TASK_METRICS\n"
        "TASK_METRICS.add('always-right', lambda response, reference: True, 'toy metric of a plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["--plugin", "my_spard_plugin", "list", "task"]) == 0
        assert "always-right" in capsys.readouterr().out
        monkeypatch.setenv("SPARD_PLUGINS", "no_such_spard_plugin")
        assert main(["list"]) == 2
        assert "plugin 'no_such_spard_plugin' could not be imported" in capsys.readouterr().err
    finally:
        from spard.evaluation.metrics import TASK_METRICS
        from spard.registry import LOADED_PLUGINS

        TASK_METRICS.remove("always-right")
        if "my_spard_plugin" in LOADED_PLUGINS:  # later tests (cluster jobs) must not inherit it
            LOADED_PLUGINS.remove("my_spard_plugin")
        sys.modules.pop("my_spard_plugin", None)


def test_example_defense_runs_in_a_bench_grid(plugins, tiny_model_dir, toy_data, tmp_path):
    from test_bench import bench_config

    cfg = bench_config(tiny_model_dir, toy_data, tmp_path / "bench", evaluate_start=False)
    cfg.defenses = ["grad-noise"]
    cfg.grids = cfg.grids[:1]
    cfg.grids[0].defenses = ["grad-noise"]
    cfg.train["grad_noise"] = {"std": 0.02}  # its section in the bench's YAML
    rows = run_bench(cfg, progress=False)
    assert [r["label"] for r in rows] == ["grad-noise"] and any(k.startswith("asr_mean[") for k in rows[0])
    (log,) = (tmp_path / "bench").glob("runs/grad-noise-*/train_log.jsonl")
    assert {json.loads(line)["grad_noise_std"] for line in log.read_text().splitlines()} == {0.02}
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
