"""What a training run leaves for people: a model card beside the weights and a loss-curve PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adpa.stages.distill.losses import LOSSES


def plot_loss(metrics: list[dict], title: str, path: Path) -> Path | None:
    """loss.png: the loss per optimizer step, its terms in a second panel when there are any, and the
    validation curves in a third when the run validated."""
    valid = [m for m in metrics if m.get("split") == "valid"]
    metrics = [m for m in metrics if m.get("split") != "valid"]
    if not metrics:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    terms = [k for k in dict.fromkeys(t for spec in LOSSES.values() for t in spec.terms) if k in metrics[0]]
    n = 1 + bool(terms) + bool(valid)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
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
    if valid:
        ax = axes[0][n - 1]
        for k in sorted(k for k in valid[0] if k not in ("step", "split")):
            ax.plot([m["step"] for m in valid], [m[k] for m in valid], marker=".", label=k)
        ax.set(xlabel="optimizer step", title="validation (means over the validation pairs)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator
    for ax in axes[0]:  # steps are whole: a one-step run's axis reads 0 1 2, not 0.96 to 1.04
        lo, hi = ax.get_xlim()
        if hi - lo < 2:
            ax.set_xlim((lo + hi) / 2 - 1, (lo + hi) / 2 + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class Card:
    """What a student's model card names: the recipe (title), loss, init model, settings in its key, the
    caches it read, its own key, the command that reproduces it, and where the caches came from."""

    title: str
    loss: str
    init_spec: str
    settings: dict
    caches: dict
    key: str
    command: str
    provenance: dict = None  # role -> model identity, "data" -> data identity (from the caches' manifests)


def provenance(manifests: list[dict]) -> dict:
    """The models and the data the caches were made from, as their manifests' inputs name them: teacher,
    reference and the states' student by their identities (hub id and revision, built-in artifact, or a
    folder's name and weights' sha256), the data by its file's sha256, split and format."""
    out = {}
    for m in manifests:
        i = m.get("inputs", {})
        if "model" in i and "role" in i:
            out.setdefault(i["role"], i["model"])
        for role in ("teacher", "reference"):
            if isinstance(i.get(role), dict):
                out.setdefault(role, i[role])
        if isinstance(i.get("data"), dict):
            out.setdefault("data", {k: v for k, v in i["data"].items() if k in ("sha256", "split", "format", "limit",
                                                                               "hub_id", "revision")})
    return out


def _identity(x: dict) -> str:
    if "hub_id" in x:
        return f"{x['hub_id']}@{x.get('revision', 'main')}"
    if "builtin" in x:
        return f"{x['builtin']} (artifact {x.get('artifact')})"
    return ", ".join(f"{k} {v}" for k, v in x.items())


def _provenance_rows(p: dict | None) -> str:
    if not p:
        return "(not recorded)"
    rows = [f"| {role} | `{_identity(x)}` |" for role, x in p.items() if role != "data"]
    if "data" in p:
        rows.append(f"| data | `{_identity(p['data'])}` |")
    return "| what | identity |\n|---|---|\n" + "\n".join(rows)


def _hub_fields(card: Card) -> str:
    """The card's YAML lines that name hub things: base_model (a hub id, never a folder or a built-in) and
    datasets (a hub dataset; a file is named by its sha256 in the provenance table)."""
    spec = card.init_spec
    out = "" if spec.startswith("builtin:") or Path(spec).exists() else f"base_model: {spec.partition('@')[0]}\n"
    data = (card.provenance or {}).get("data", {})
    return out + (f"datasets: [{data['hub_id']}]\n" if "hub_id" in data else "")


def _which_weights(summary: dict) -> tuple[str, str]:
    """The card's sentences on what the weights are: a merged LoRA adapter or not, the selected step."""
    sel = summary.get("selected", {})
    adapter = (f"\n\nTrained as a LoRA adapter (artifact `{summary['adapter']}`, loadable with "
               f"`peft.PeftModel.from_pretrained(init, folder)`); these weights are the merged model."
               if summary.get("adapter") else "")
    selected = (f"The weights are those of step {sel['step']}, the best on the validation pairs by {sel['by']} "
                f"({sel['value']:.6g})." if sel.get("by", "last") != "last" and "value" in sel
                else "The weights are those of the last step.")
    return adapter, selected


def _alignment(summary: dict) -> str:
    """A student of another tokenizer than the cache's: what the alignment kept, over the run."""
    a = summary.get("alignment")
    if not a:
        return ""
    return (f"\n\nTrained with another tokenizer than the teacher cache's (distill.cross_tokenizer): over the run,"
            f" {a['aligned_share']:.4f} of the student's response positions started a span aligned with the"
            f" teacher's tokens, and {a['matched_mass']:.4f} of the teacher's probability mass there matched"
            f" entries of the student's vocabulary (the rest reached it only through the rest bin and ULD).")


def model_card(card: Card, summary: dict) -> str:
    title, loss, init_spec, settings = card.title, card.loss, card.init_spec, card.settings
    caches, key, command = card.caches, card.key, card.command
    final = summary.get("final", {})
    rows = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    cache_rows = "\n".join(f"| {name} | `{k}` |" for name, k in caches.items())
    metric_rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in final.items())
    adapter, selected = _which_weights(summary)
    return f"""---
library_name: transformers
{_hub_fields(card)}tags: [adpa, distillation, preference-alignment]
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

This student's own artifact key: `{key}`.{adapter}

## Where the caches came from (their manifests' inputs)

{_provenance_rows(card.provenance)}

## Run

{summary.get('steps')} optimizer steps over {summary.get('pairs_per_epoch')} pairs per epoch, {summary.get('tokens_this_run')}
scored tokens in {summary.get('seconds')} s ({summary.get('tokens_per_s')} tokens/s, data wait
{summary.get('data_wait_fraction')} of step time).

{selected}{_alignment(summary)}

Final step (means over its pairs):

| metric | value |
|---|---|
{metric_rows}
"""
