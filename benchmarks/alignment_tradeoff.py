"""The alignment trade-off: refusal of harmful prompts against over-refusal of benign ones.

    python benchmarks/alignment_tradeoff.py [VARIANT ...]    # default: every configs/align/*.yaml but base

Each variant is ``configs/align/base.yaml`` with ``configs/align/VARIANT.yaml`` on top, aligned into
``results/alignment/VARIANT/`` (skipped when its ``alignment.json`` was made with the same settings:
resumable, one variant at a time). The start model's checks are generated once and shared. Writes
``results/alignment/tradeoff.md`` and ``tradeoff.json`` from every finished variant: the refusal share
of the mix, refusal on the four harmful eval families, compliance (1 - over-refusal) on XSTest's safe
prompts and on everyday instructions, each with its Wilson 95% interval, and the training time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from spard.config import config_hash, from_dict, load_yaml, merge, to_dict
from spard.evaluation.stats import format_rate, rate_with_interval
from spard.io import atomic_write_json, atomic_write_text
from spard.training.align import AlignConfig, run_alignment

ROOT = Path(__file__).resolve().parents[1]
CONFIGS, OUT = ROOT / "configs" / "align", ROOT / "results" / "alignment"


def settings(variant: str) -> dict:
    return merge(load_yaml(CONFIGS / "base.yaml"), load_yaml(CONFIGS / f"{variant}.yaml"))


def run(variant: str) -> None:
    raw = settings(variant)
    key = config_hash(raw)
    out = OUT / variant
    report = out / "alignment.json"
    if report.exists() and json.loads(report.read_text()).get("config_key") == key:
        print(f"{variant}: finished earlier, skipped")
        return
    out.mkdir(parents=True, exist_ok=True)
    shared = OUT / "start_checks"
    shared.mkdir(parents=True, exist_ok=True)
    if not (out / "check_before").exists():
        (out / "check_before").symlink_to(shared.resolve(), target_is_directory=True)
    cfg = from_dict(AlignConfig, {**raw, "output_dir": str(out), "progress": False}, variant)
    result = run_alignment(cfg)
    atomic_write_json(report, {**result, "config_key": key, "variant": variant, "settings": to_dict(cfg)})
    print(f"{variant}: done")


def table() -> None:
    rows = [json.loads(report.read_text()) for report in sorted(OUT.glob("*/alignment.json"))]
    if not rows:
        return

    def compliance(side: dict, name: str) -> str:
        iv = side.get("intervals", {}).get(name)
        if not iv:
            return "n/a"
        k, n = iv["n"] - iv["k"], iv["n"]
        return format_rate({"rate": k / n, "low": 1 - iv["high"], "high": 1 - iv["low"], "k": k, "n": n})

    def refusal(side: dict) -> str:
        ivs = [v for name, v in side.get("intervals", {}).items() if name not in ("xstest_safe", "alpaca_seed")]
        k, n = sum(v["k"] for v in ivs), sum(v["n"] for v in ivs)
        return format_rate(rate_with_interval(k, n)) if n else "n/a"

    lines = ["| model | refusals in the mix | harmful refused (4 eval families) | complies, xstest_safe | complies, alpaca_seed | train min |",
              "|---|---|---|---|---|---|"]
    start = rows[0]["before"]
    lines.append(f"| SmolLM2-135M-Instruct as shipped | - | {refusal(start)} | {compliance(start, 'xstest_safe')} "
                 f"| {compliance(start, 'alpaca_seed')} | - |")
    for r in rows:
        total = sum(r["mix"].values())
        share = f"{r['refusal_examples']} / {total} ({100 * r['refusal_examples'] / total:.0f}%)"
        lines.append(f"| `{r['variant']}` | {share} | {refusal(r['after'])} | {compliance(r['after'], 'xstest_safe')} "
                     f"| {compliance(r['after'], 'alpaca_seed')} | {r['train_seconds'] / 60:.1f} |")
    atomic_write_text(OUT / "tradeoff.md", "\n".join(lines) + "\n")
    atomic_write_json(OUT / "tradeoff.json", [{k: v for k, v in r.items() if k != "settings"} for r in rows])
    print("\n".join(lines))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    variants = sys.argv[1:] or sorted(p.stem for p in CONFIGS.glob("*.yaml") if p.stem != "base")
    for v in variants:
        run(v)
        table()
