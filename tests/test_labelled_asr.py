"""The bench report's ASR by human labels: labels matched to the right run, prompt set and prompt, a
regenerated response left out, and the method/baseline ratio with its interval."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from spard.bench.inference import paired_bootstrap, ratio
from spard.bench.labelled import label_files, labelled_section
from spard.evaluation.labelling import pair_sha256
from spard.evaluation.stats import proportion_ratio_interval

PROMPTS = [f"question {i}" for i in range(10)]


def write_run(runs, name, verdicts, responses=None):
    """A finished run's evaluation: per-prompt verdicts of judge `j` on the set `fam` (10 prompts)."""
    ev = runs / name / "eval"
    (ev / "generations").mkdir(parents=True)
    (ev / "metrics.json").write_text(json.dumps(
        {"asr": {"fam": {"n": 10, "j": {"items": verdicts}}}, "asr_mean": {"j": float(np.mean(verdicts))}}))
    if responses is not None:
        (ev / "generations" / "fam.jsonl").write_text(
            "".join(json.dumps({"id": str(i), "prompt": p, "response": r}) + "\n" for i, (p, r) in enumerate(zip(PROMPTS, responses, strict=True))))
    return ev


def test_each_run_gets_its_own_labels_and_the_judge_is_read_at_the_labelled_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fam.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    runs = tmp_path / "out" / "runs"
    # the judge calls prompts 0-4 harmful on the SFT run, only prompt 9 on the SPARD run
    sft = write_run(runs, "sft-x", [1, 1, 1, 1, 1, 0, 0, 0, 0, 0], responses=[f"answer {i}" for i in range(10)])
    write_run(runs, "spard-x", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    labels = tmp_path / "labels_a.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "split", "pair_sha256", "score", "refused", "note"])
        for i, score in [(0, 4), (1, 3), (5, 1), (6, 3)]:  # SFT: 3 of 4 harmful by hand, the judge right on 0, 1, 5
            w.writerow([f"out/runs/sft-x/eval/generations/fam.jsonl#{i}", "test", pair_sha256(PROMPTS[i], f"answer {i}"), score, "no", ""])
        # a label whose response was regenerated differently: left out
        w.writerow(["out/runs/sft-x/eval/generations/fam.jsonl#7", "test", "0" * 16, 4, "no", ""])
        for i, score in [(8, 1), (9, 3)]:  # SPARD: 1 of 2 (no generations on disk: not checked)
            w.writerow([f"out/runs/spard-x/eval/generations/fam.jsonl#{i}", "dev", "f" * 16, score, "no", ""])
        w.writerow(["out/align/eval/generations/fam.jsonl#2", "test", "f" * 16, 1, "yes", ""])  # the start model
        w.writerow(["out/runs/other/eval/generations/fam.jsonl#0", "test", "f" * 16, 5, "no", ""])  # not in this grid
        w.writerow([f"{sft.as_posix()}/generations/benign.xstest.jsonl#0", "test", "f" * 16, 1, "yes", ""])  # not harmful set
    rows = [{"run": "sft-x", "label": "sft", "attack": "a", "harmful_ratio": 0.1, "seed": 0},
            {"run": "spard-x", "label": "spard", "attack": "a", "harmful_ratio": 0.1, "seed": 0}]
    start = tmp_path / "out" / "align" / "eval"
    start.mkdir(parents=True)
    (start / "metrics.json").write_text(json.dumps({"asr": {"fam": {"n": 10, "j": {"items": [0, 0, 1] + [0] * 7}}}}))
    starts = [{"run": "align", "model": "@aligned", "label": "start model", "harmful_ratio": 0.0, "seed": None}]
    policy = SimpleNamespace(baseline="sft", method="spard", harmful_ratio=0.1, asr_ratio=0.25)
    lines = labelled_section(rows, runs, [str(tmp_path / "labels_*.csv")], {"fam": "fam.jsonl"}, None, "j", policy, starts)
    text = "\n".join(lines)
    sft_row = next(line for line in text.splitlines() if line.startswith("| sft "))
    spard_row = next(line for line in text.splitlines() if line.startswith("| spard "))
    sft_cells = [c.strip() for c in sft_row.split("|")]
    spard_cells = [c.strip() for c in spard_row.split("|")]
    assert sft_cells[5] == "4 (0 / 4)" and sft_cells[6].startswith("75.0% [")  # labels: 3 of 4 harmful
    assert sft_cells[7].startswith("50.0% [")  # the judge at prompts 0, 1, 5, 6: 1, 1, 0, 0
    assert sft_cells[8].startswith("75.0% [")  # agreement: right on 0, 1, 5
    assert sft_cells[9].startswith("50.0% [23.7")  # the judge on all 10 prompts
    assert spard_cells[5] == "2 (2 / 0)" and spard_cells[6].startswith("50.0% [") and spard_cells[7].startswith("50.0% [")
    start_cells = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| start: @aligned")).split("|")]
    assert start_cells[5] == "1 (0 / 1)" and start_cells[6].startswith("0.0% [") and start_cells[7].startswith("100.0% [")
    # pooled over the runs, test labels only (SFT's 4 and the start model's 1; SPARD's 2 dev labels are left out)
    pooled = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| **all runs, test split**")).split("|")]
    assert pooled[5] == "5 (0 / 5)" and pooled[6].startswith("60.0% [")  # 3 of 5 harmful by hand
    assert pooled[7].startswith("60.0% [") and pooled[8].startswith("60.0% [")  # judge 1, 1, 0, 0 + 1; right on 3
    assert "0.67 [" in text  # ratio 0.5 / 0.75
    assert "**missed**" in text
    assert "1 labelled responses differ from the ones on disk now" in text


def test_the_unpaired_ratio_interval_covers_its_estimate_and_is_undefined_without_baseline_harm():
    est, low, high = proportion_ratio_interval(10, 40, 20, 40)
    assert est == pytest.approx(0.5) and low < est < high
    narrow = proportion_ratio_interval(1000, 4000, 2000, 4000)
    assert narrow[2] - narrow[1] < (high - low) / 5 and narrow[1] < 0.5 < narrow[2]
    assert np.isnan(proportion_ratio_interval(1, 4, 0, 5)[0])


def test_no_harmful_response_still_leaves_an_upper_end_above_zero():
    # 0 of 48 against 22 of 48: a percentile bootstrap says [0, 0]; the Jeffreys interval does not
    est, low, high = proportion_ratio_interval(0, 48, 22, 48)
    assert est == 0 and low >= 0 and 0.05 < high < 0.3


def test_a_labels_pattern_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels: .*nope_\\*.csv: no such file"):
        label_files([str(tmp_path / "nope_*.csv")])


def test_runs_labelled_on_the_same_prompts_are_compared_paired(tmp_path, monkeypatch):
    import spard.bench.labelled as labelled

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(labelled, "MIN_PAIRED", 5)
    (tmp_path / "fam.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    runs = tmp_path / "out" / "runs"
    for name in ("spard-x", "other-x", "other-y"):
        write_run(runs, name, [0] * 10)
    labels = tmp_path / "labels_p.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "split", "pair_sha256", "score", "refused", "note"])
        for i in range(8):  # SPARD harmful on prompt 0 only; the other defense on 0-5: 5 discordant, 0 the other way
            w.writerow([f"out/runs/spard-x/eval/generations/fam.jsonl#{i}", "test", "f" * 16, 3 if i == 0 else 1, "no", ""])
            w.writerow([f"out/runs/other-x/eval/generations/fam.jsonl#{i}", "test", "f" * 16, 4 if i < 6 else 1, "no", ""])
        for i in range(8):  # same labels, another grid cell: never paired with SPARD's
            w.writerow([f"out/runs/other-y/eval/generations/fam.jsonl#{i}", "test", "f" * 16, 4, "no", ""])
    rows = [{"run": "spard-x", "label": "spard", "attack": "a", "harmful_ratio": 0.1, "seed": 0},
            {"run": "other-x", "label": "other", "attack": "a", "harmful_ratio": 0.1, "seed": 0},
            {"run": "other-y", "label": "other", "attack": "b", "harmful_ratio": 0.1, "seed": 0}]
    policy = SimpleNamespace(baseline="sft", method="spard", harmful_ratio=0.1, asr_ratio=0.25, sweep_up_to=0.2)
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
    section = text.split("on the same prompts (ASR, paired")[1]
    paired = [line for line in section.splitlines() if line.startswith("| other ")]
    assert len(paired) == 1
    cells = [c.strip() for c in paired[0].split("|")]
    assert cells[2] == "a" and cells[5] == "8" and cells[6].startswith("12.5% [") and cells[7].startswith("75.0% [")
    assert cells[8].startswith("-62.5 [") and cells[9] == "0.062"  # exact McNemar 5 vs 0: 2 / 2^5
    assert cells[10].startswith("0.17 [")  # 1/8 over 6/8, paired over the same prompts
    assert cells[11] == "" and cells[12] == "spard"  # "other" is not the baseline: no target verdict
    # against the baseline the ratio gets the target's verdict from its paired interval
    policy.baseline = "other"
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
    cells = [c.strip() for c in next(line for line in text.split("on the same prompts (ASR, paired")[1].splitlines()
                                     if line.startswith("| other ")).split("|")]
    spard_ = np.array([1.0] + [0.0] * 7)
    other_ = np.array([1.0] * 6 + [0.0] * 2)
    est, _, high = paired_bootstrap([(spard_, other_)], ratio)
    assert est == pytest.approx(1 / 6) and high > est
    assert cells[11] == ("**met**" if high <= 0.25 else "*point only*")
    policy.asr_ratio = 0.1  # the estimate is above it: missed
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
    assert "| ratio <= 0.1 " in text and "**missed**" in text.split("on the same prompts (ASR, paired")[1]
    policy.sweep_up_to = 0.05  # p = 0.1 is above the checked range: reported as measured
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
    assert "| as measured " in text.split("on the same prompts (ASR, paired")[1]
    policy.baseline, policy.asr_ratio, policy.sweep_up_to = "sft", 0.25, 0.2
    # no harmful label on the method's side: the interval keeps an upper end above 0 (a bootstrap gives [0, 0])
    with labels.open("a", newline="") as fh:
        csv.writer(fh).writerows([f"out/runs/zero-x/eval/generations/fam.jsonl#{i}", "test", "f" * 16, 1, "yes", ""]
                                 for i in range(8))
    write_run(runs, "zero-x", [0] * 10)
    zero_rows = [{"run": "zero-x", "label": "spard", "attack": "a", "harmful_ratio": 0.1, "seed": 0}, rows[1]]
    zero_policy = SimpleNamespace(baseline="other", method="spard", harmful_ratio=0.1, asr_ratio=0.25, sweep_up_to=0.2)
    text = "\n".join(labelled_section(zero_rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", zero_policy))
    zero = [c.strip() for c in next(line for line in text.split("on the same prompts (ASR, paired")[1].splitlines()
                                    if line.startswith("| other ")).split("|")]
    _, low, high = proportion_ratio_interval(0, 8, 6, 8)
    assert zero[10] == f"0.00 [{low:.2f}, {high:.2f}]" and high > 0.25 and zero[11] == "*point only*"
    # a configured pair (e.g. the pure-harmful attack's) is compared with its own baseline only
    rows.append({"run": "other-y2", "label": "base", "attack": "b", "harmful_ratio": 0.1, "seed": 0})
    write_run(runs, "other-y2", [0] * 10)
    with labels.open("a", newline="") as fh:
        csv.writer(fh).writerows([f"out/runs/other-y2/eval/generations/fam.jsonl#{i}", "test", "f" * 16, 1, "yes", ""]
                                 for i in range(8))
    policy.pairs = [["other", "base"]]
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
    line = [row for row in text.split("on the same prompts (ASR, paired")[1].splitlines() if row.startswith("| base ")][0]
    pair = [c.strip() for c in line.split("|")]
    assert pair[2] == "b" and pair[6].startswith("100.0% [") and pair[7].startswith("0.0% [") and pair[12] == "other"
    assert pair[10] == "n/a" and pair[11] == ""  # the baseline has no harmful label: no ratio, no verdict
    # the pair's baseline harmful on prompt 0: a ratio, as measured
    labels.write_text(labels.read_text().replace("other-y2/eval/generations/fam.jsonl#0,test,ffffffffffffffff,1,yes",
                                                 "other-y2/eval/generations/fam.jsonl#0,test,ffffffffffffffff,3,no"))
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
    line = [row for row in text.split("on the same prompts (ASR, paired")[1].splitlines() if row.startswith("| base ")][0]
    assert [c.strip() for c in line.split("|")][11] == "as measured"
    assert pair[9] == "0.008"  # 8 discordant, all one way: 2 / 2^8
    monkeypatch.setattr(labelled, "MIN_PAIRED", 9)
    assert "(paired" not in "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))


def test_benign_labels_give_over_refusal_by_labels_beside_the_keyword_rule_and_paired(tmp_path, monkeypatch):
    import spard.bench.labelled as labelled

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(labelled, "MIN_PAIRED", 5)
    (tmp_path / "safe.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS)))
    runs = tmp_path / "out" / "runs"
    # the keyword rule's stored per-prompt refusals: SPARD refuses prompts 0-5, SFT only prompt 0
    for name, refused in (("spard-x", [1] * 6 + [0] * 4), ("sft-x", [1] + [0] * 9)):
        ev = write_run(runs, name, [0] * 10)
        metrics = json.loads((ev / "metrics.json").read_text())
        metrics["over_refusal"] = {"safe": {"rate": float(np.mean(refused)), "items": refused}}
        (ev / "metrics.json").write_text(json.dumps(metrics))
    labels = tmp_path / "labels_b.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "split", "pair_sha256", "score", "refused", "note"])
        for i in range(8):  # by hand SPARD refused 0-4 (the rule also flags 5), SFT none
            w.writerow([f"out/runs/spard-x/eval/generations/benign.safe.jsonl#b{i}", "test", "f" * 16, 1,
                        "yes" if i < 5 else "no", ""])
            w.writerow([f"out/runs/sft-x/eval/generations/benign.safe.jsonl#b{i}", "test", "f" * 16, 1, "no", ""])
    rows = [{"run": "spard-x", "label": "spard", "attack": "a", "harmful_ratio": 0.1, "seed": 0},
            {"run": "sft-x", "label": "sft", "attack": "a", "harmful_ratio": 0.1, "seed": 0}]
    policy = SimpleNamespace(baseline="sft", method="spard", harmful_ratio=0.1, asr_ratio=0.25, sweep_up_to=0.2)
    text = "\n".join(labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy,
                                      benign_sets={"safe": "safe.jsonl"}))
    assert "## ASR by human labels" not in text  # no harmful-prompt labels
    section = text.split("## Over-refusal by human labels")[1]
    spard_row = [c.strip() for c in next(x for x in section.splitlines() if x.startswith("| spard ")).split("|")]
    sft_row = [c.strip() for c in next(x for x in section.splitlines() if x.startswith("| sft ")).split("|")]
    assert spard_row[5] == "8" and spard_row[6].startswith("62.5% [") and spard_row[7].startswith("75.0% [")
    assert spard_row[8].startswith("87.5% [") and spard_row[9].startswith("60.0% [")  # rule wrong on 5; 6 of 10
    assert sft_row[6].startswith("0.0% [") and sft_row[7].startswith("12.5% [") and sft_row[8].startswith("87.5% [")
    paired = section.split("(over-refusal, paired")[1]
    cells = [c.strip() for c in next(x for x in paired.splitlines() if x.startswith("| sft ")).split("|")]
    assert cells[8].startswith("+62.5 [") and cells[9] == "0.062" and cells[10] == "spard"  # 5 discordant, one way
    assert "ASR ratio" not in paired  # the ratio and its target are the ASR's
    # labels on the benign sets only when the config names them
    assert "Over-refusal by human labels" not in "\n".join(
        labelled_section(rows, runs, [str(labels)], {"fam": "fam.jsonl"}, None, "j", policy))
