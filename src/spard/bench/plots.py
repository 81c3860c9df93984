"""Benchmark plots (PNG, written atomically): ASR against task metrics, ASR per attack, SPAG's safe loss
over training, and ASR against the harmful ratio with intervals."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from spard.bench.tables import _mean_std, judges_in
from spard.io import atomic_write, read_jsonl


def label_colors(labels: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """One colour per label, all distinct up to 20 labels (``tab10``, then ``tab20`` beyond ten)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def plot_results(out: Path, rows: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]] = (),
                 primary: str | None = None) -> list[Path]:
    """ASR vs task metric (start models as black stars), ASR per attack per defense, and SPAG's safe loss over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    judges = judges_in(rows, primary)
    if not rows or not judges:
        return written
    judge = judges[0]
    labels = sorted({r["label"] for r in rows})
    colors = label_colors(labels)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = ((axes[0], "task_accuracy", "task accuracy %", 100.0),
              (axes[1], "answer_nll", "held-out answer NLL (lower is better)", 1.0))
    for ax, metric, name, scale in panels:
        for label in labels:
            pts = [(r.get(metric), r.get(f"asr_mean[{judge}]")) for r in rows if r["label"] == label]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.scatter([scale * x for x, _ in pts], [100 * y for _, y in pts], color=colors[label], label=label, alpha=0.8)
        pts = [(r.get(metric), r.get(f"asr_mean[{judge}]")) for r in starts]
        pts = [(x, y) for x, y in pts if x is not None and y is not None]
        if pts:
            ax.scatter([scale * x for x, _ in pts], [100 * y for _, y in pts], color="black", marker="*", s=120,
                       label="start model (no fine-tuning)")
        ax.set_xlabel(name)
        ax.set_ylabel(f"ASR % (judge: {judge})")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2 if len(labels) > 8 else 1)
    fig.suptitle("Attack success rate against task metric, one point per run")
    fig.tight_layout()
    written.append(_save(fig, out / "asr_vs_task.png"))

    attacks = sorted({r["attack"] for r in rows})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(attacks) + 2), 4.2))
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        means = []
        for attack in attacks:
            vals = [r.get(f"asr_mean[{judge}]") for r in rows if r["label"] == label and r["attack"] == attack]
            mean, _ = _mean_std(vals)
            means.append(100 * mean if mean is not None else 0.0)
        ax.bar([a + i * width for a in range(len(attacks))], means, width, label=label, color=colors[label])
    ax.set_xticks([a + 0.4 - width / 2 for a in range(len(attacks))], attacks)
    ax.set_ylabel(f"ASR % (judge: {judge})")
    ax.set_title("ASR per attack and defense (mean over seeds)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out / "asr_per_attack.png"))

    # runs whose trainer made safety projections (their rows carry SPAG's statistics), whatever the label
    spag_runs = [r for r in rows if r.get("projections_fired") is not None][:6]
    if spag_runs:
        fig, axes = plt.subplots(1, len(spag_runs), figsize=(4.2 * len(spag_runs), 3.6), squeeze=False)
        for ax, r in zip(axes[0], spag_runs, strict=False):
            log = list(read_jsonl(out / "runs" / r["run"] / "train_log.jsonl"))
            steps = [x["step"] for x in log]
            ax.plot(steps, [x["safe_loss"] for x in log], lw=1, label="safe loss before")
            fired = [x for x in log if x.get("fired")]
            ax.scatter([x["step"] for x in fired], [x["safe_loss"] for x in fired], s=10, color="red", label="projection fired")
            if r.get("tau") is not None:
                ax.axhline(r["tau"], color="gray", ls="--", lw=1, label="tau")
            ax.set_title(f"{r['label']} / {r['attack']} / seed {r['seed']}", fontsize=9)
            ax.set_xlabel("update")
            ax.set_ylabel("safe mini-batch loss")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / "spag_safe_loss.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


def plot_sweep(sweep: pd.DataFrame, path: Path) -> Path | None:
    """ASR against the harmful ratio p per defense, with Wilson 95% intervals (the field's standard figure)."""
    if sweep.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(sweep["defense"].unique())
    colors = label_colors(labels)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in labels:
        s = sweep[sweep["defense"] == label].sort_values("p")
        y = 100 * s["asr_rate"]
        err = [y - 100 * s["asr_low"], 100 * s["asr_high"] - y]
        ax.errorbar(s["p"], y, yerr=err, marker="o", capsize=3, label=label, color=colors[label])
    ax.set_xlabel(f"harmful ratio p (attack: {sweep['attack'].iloc[0]})")
    ax.set_ylabel("ASR % (95% Wilson interval)")
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Attack strength: ASR against the harmful share of the fine-tuning data")
    fig.tight_layout()
    return _save(fig, path)
