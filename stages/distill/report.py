"""What a training run leaves for people: a model card beside the weights and a loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path

from stages.distill.losses import LOSSES

def read_metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()] if Path(path).exists() else []


def plot_loss(metrics: list[dict], title: str, path: Path) -> Path | None:
    """loss.png: the loss per optimizer step, and its terms in a second panel when there are any."""
    if not metrics:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    terms = [k for k in dict.fromkeys(t for spec in LOSSES.values() for t in spec.terms) if k in metrics[0]]
    fig, axes = plt.subplots(1, 2 if terms else 1, figsize=(11 if terms else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot(steps, [m["loss"] for m in metrics], marker="." if len(steps) < 50 else None)
    ax.set(xlabel="optimizer step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    if terms:
        ax = axes[0][1]
        for k in terms:
            ax.plot(steps, [m[k] for m in metrics], label=k)
        ax.set(xlabel="optimizer step", title="terms (means over each step's pairs)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def model_card(*, title: str, loss: str, init_spec: str, settings: dict, caches: dict, summary: dict, key: str,
               command: str) -> str:
    final = summary.get("final", {})
    rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    cache_rows = "\n".join(f"| {name} | `{k}` |" for name, k in caches.items())
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in final.items())
    return f"""---
library_name: transformers
base_model: {init_spec}
tags: [adpa, distillation, preference-alignment]
---
# {title} student, {loss}

Distilled by adpa-pipeline from the cached signals of a DPO teacher
(ADPA / DCKD, Gao et al., ICLR 2025). Started from `{init_spec}`.

Objective: `{LOSSES[loss].formula}`

Reproduce: `{command}`

## Settings

| setting | value |
|---|---|
| recipe | {title} |
| loss | {loss} |
{rows}

## Teacher caches consumed (artifact keys)

| artifact | key |
|---|---|
{cache_rows}

This student's own artifact key: `{key}`.

## Run

{summary.get('steps')} optimizer steps over {summary.get('pairs_per_epoch')} pairs per epoch, {summary.get('tokens_this_run')}
scored tokens in {summary.get('seconds')} s ({summary.get('tokens_per_s')} tokens/s, data wait
{summary.get('data_wait_fraction')} of step time).

Final step (means over its pairs):

| metric | value |
|---|---|
{metric_rows}
"""
