"""`adpa eval`: did alignment transfer? Measured on held-out pairs for any set of models.

Per model, on the held-out prompts:

1. ground-truth reward of its greedy generations, when the recipe names a reward;
2. the DPO teacher's implicit reward of those generations, r = log pi_dpo(y|x) - log pi_ref(y|x),
   per sequence and per token, and the win rate against a baseline model's generations by r
   (ties count half);
3. held-out preference accuracy: how often log pi(y_w|x) - log pi(y_l|x) > 0;
4. the generations as JSON lines an external judge takes (AlpacaEval: instruction, output, generator).

Error bars are standard errors over prompts. Writes eval.json, eval.png and generations/NAME.jsonl.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages import sorting_task

REWARDS = {"sorting": sorting_task.reward}


@dataclass
class ModelResult:
    name: str
    source: str
    metrics: dict = field(default_factory=dict)  # name -> (mean, standard error)
    r_seq: np.ndarray | None = None  # implicit reward per prompt (for win rates)


def _mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def _seq_logp(scorer, seqs) -> np.ndarray:
    return np.array([float(np.sum(r["realized_logp"], dtype=np.float64)) for r in scorer.score(seqs)])


def evaluate(models: dict[str, str], teacher: str, reference: str, pairs: list, tok, reward: str | None,
             baseline: str, out_dir: Path, max_new_tokens: int, token_budget: int = 8192, say=print) -> list[ModelResult]:
    """`models`: display name -> loadable folder or spec; `pairs`: Encoded held-out pairs."""
    import torch

    from stages import models as model_sources
    from stages.generation import generate
    from stages.scoring import HFScorer, Sequence

    out_dir = Path(out_dir)
    (out_dir / "generations").mkdir(parents=True, exist_ok=True)
    load = lambda spec: model_sources.load_model(model_sources.resolve(spec), torch.float32, "cpu")  # noqa: E731
    vocab = len(tok)
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    prompts = [e.prompt_ids for e in pairs]
    texts = [e.pair.prompt[-1]["content"] for e in pairs]
    judge = {role: HFScorer(load(spec), vocab, token_budget) for role, spec in (("dpo", teacher), ("ref", reference))}
    gens, results = {}, []
    for name, spec in models.items():
        model = load(spec)
        outs = generate(model, prompts, eos, pad, max_new_tokens, token_budget)
        gens[name] = [ids for ids, _ in outs]
        seqs = [Sequence(p + (ids or [eos]), len(p)) for p, ids in zip(prompts, gens[name])]
        r_seq = _seq_logp(judge["dpo"], seqs) - _seq_logp(judge["ref"], seqs)
        n_tok = np.array([s.n for s in seqs])
        scorer = HFScorer(model, vocab, token_budget)
        margin = _seq_logp(scorer, [Sequence(e.prompt_ids + e.chosen_ids, len(e.prompt_ids)) for e in pairs]) - \
            _seq_logp(scorer, [Sequence(e.prompt_ids + e.rejected_ids, len(e.prompt_ids)) for e in pairs])
        decoded = [tok.decode(ids, skip_special_tokens=True).strip() for ids in gens[name]]
        res = ModelResult(name, str(spec), {"implicit_reward": _mean_se(r_seq),
                                            "implicit_reward_per_token": _mean_se(r_seq / n_tok),
                                            "preference_accuracy": _mean_se(margin > 0)}, r_seq)
        if reward:
            res.metrics["reward"] = _mean_se([REWARDS[reward](t, d) for t, d in zip(texts, decoded)])
        with open(out_dir / "generations" / f"{name}.jsonl", "w") as f:
            for e, t, d in zip(pairs, texts, decoded):
                f.write(json.dumps({"instruction": t, "output": d, "generator": name, "id": e.pair.pair_id}) + "\n")
        results.append(res)
        say(f"  evaluated {name}")
    base = next(r for r in results if r.name == baseline).r_seq
    for r in results:
        r.metrics["win_rate_vs_" + baseline] = _mean_se(np.where(r.r_seq > base, 1.0,
                                                                 np.where(r.r_seq == base, 0.5, 0.0)))
    (out_dir / "eval.json").write_text(json.dumps(
        {"prompts": len(pairs), "teacher": teacher, "reference": reference, "baseline": baseline, "reward": reward,
         "models": [{"name": r.name, "source": r.source,
                     **{k: {"mean": m, "se": s} for k, (m, s) in r.metrics.items()}} for r in results]}, indent=1))
    plot(results, out_dir / "eval.png", len(pairs))
    return results


COLUMNS = [("reward", "reward", "{:.3f}"), ("implicit_reward", "r(y) seq", "{:+.3f}"),
           ("implicit_reward_per_token", "r(y)/tok", "{:+.3f}"), ("win_rate_vs_", "win vs base", "{:.3f}"),
           ("preference_accuracy", "pref acc", "{:.3f}")]


def _metric(r: ModelResult, prefix: str):
    return next(((k, v) for k, v in r.metrics.items() if k.startswith(prefix)), (None, None))


def table(results: list[ModelResult], n: int) -> str:
    cols = [c for c in COLUMNS if _metric(results[0], c[0])[0]]
    head = f"{'model':18}" + "".join(f"{title:>18}" for _, title, _ in cols)
    lines = [head]
    for r in results:
        cells = ""
        for prefix, _, fmt in cols:
            m, s = _metric(r, prefix)[1]
            cells += f"{fmt.format(m) + ' ± ' + f'{s:.3f}':>18}"
        lines.append(f"{r.name:18}{cells}")
    lines.append(f"(means over {n} held-out prompts ± standard error; r(y) = log pi_dpo(y|x) - log pi_ref(y|x) of "
                 f"greedy generations; win rate by r against the baseline's generation of the same prompt)")
    return "\n".join(lines)


def bar_chart(names: list[str], panels: list[tuple[str, list[float], list[float]]], title: str, path: Path) -> Path:
    """One bar panel per metric (title, means, error bars); teachers grey, students blue."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.8), squeeze=False)
    for ax, (panel, means, errs) in zip(axes[0], panels):
        ax.bar(range(len(names)), means, yerr=errs, capsize=3,
               color=["#888888" if "teacher" in nm else "#3b75af" for nm in names])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(results: list[ModelResult], path: Path, n: int) -> Path:
    cols = [c for c in COLUMNS if _metric(results[0], c[0])[0]]
    panels = [(title, [_metric(r, prefix)[1][0] for r in results], [_metric(r, prefix)[1][1] for r in results])
              for prefix, title, _ in cols]
    return bar_chart([r.name for r in results], panels, f"held-out evaluation ({n} prompts, bars: mean ± standard error)",
                     path)


def heldout_pairs(recipe, store, tok) -> list:
    """The recipe's held-out pairs (data.eval_source / eval_split), rendered like stage one renders."""
    import copy

    from stages.render import Encoded
    from stages.teacher_cache import prepare
    r = copy.deepcopy(recipe)
    r.data.source = recipe.data.eval_source or recipe.data.source
    r.data.split = recipe.data.eval_split
    r.data.limit = None
    prepared, _, _ = prepare(r, store, tok, False)
    return [e for e in prepared if isinstance(e, Encoded)]


def run_eval(recipe, store, students: dict[str, str], out_dir: Path, say=print) -> list[ModelResult]:
    """The recipe's teachers and student init, plus `students` (name -> folder), on its held-out pairs."""
    from stages import models as model_sources
    roles = {r: model_sources.resolve(getattr(recipe.models, r), store) for r in ("teacher", "reference", "student")}
    tok = model_sources.load_tokenizer(roles["student"])
    pairs = heldout_pairs(recipe, store, tok)
    if not pairs:
        raise ValueError(f"{recipe.data.eval_source or recipe.data.source}: no usable held-out pairs")
    models = {"teacher-sft": roles["reference"].source, "teacher-dpo": roles["teacher"].source,
              "student-sft": roles["student"].source} | students
    say(f"eval: {len(models)} models on {len(pairs)} held-out pairs")
    return evaluate(models, roles["teacher"].source, roles["reference"].source, pairs, tok, recipe.data.reward,
                    "student-sft", out_dir, recipe.teacher_cache.max_new_tokens, recipe.teacher_cache.token_budget, say)
