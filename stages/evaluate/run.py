"""`adpa eval`: did alignment transfer? Measured on held-out pairs for any set of models.

Per model, on the held-out prompts:

1. ground-truth reward of its greedy generations, when the recipe names a reward;
2. the DPO teacher's implicit reward of those generations, r = log pi_dpo(y|x) - log pi_ref(y|x),
   per sequence and per token, and the win rate against a baseline model's generations by r
   (ties count half);
3. held-out preference accuracy: how often log pi(y_w|x) - log pi(y_l|x) > 0;
4. the generations as JSON lines an external judge takes (AlpacaEval: instruction, output, generator).

Error bars are standard errors over prompts. Writes eval.json, eval.png and generations/NAME.jsonl
(the table and the chart: `report.py`). A ground-truth reward is a function (prompt, response) ->
float that the caller passes (the built-in worlds declare theirs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.common.device import pad_id, pick_device
from stages.common.lm import HFScorer, Sequence, generate
from stages.common.models import ResolvedModel, load_model, load_tokenizer, resolve
from stages.teacher_cache.render import Encoded
from stages.teacher_cache.run import prepare
from stages.teacher_cache.settings import Data, TeacherCache


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


def evaluate(models: dict[str, str], teacher: str, reference: str, pairs: list, tok,
             reward: tuple[str, Callable[[str, str], float]] | None, baseline: str, out_dir: Path,
             max_new_tokens: int, token_budget: int = 8192, say=print) -> list[ModelResult]:
    """`models`: display name -> loadable folder or hub id; `pairs`: Encoded held-out pairs;
    `reward`: (name, function of prompt and response text) or None."""
    import torch

    from stages.evaluate.report import plot

    out_dir = Path(out_dir)
    (out_dir / "generations").mkdir(parents=True, exist_ok=True)
    device = pick_device()
    load = lambda spec: load_model(resolve(spec), torch.float32, device)  # noqa: E731
    vocab = len(tok)
    eos, pad = tok.eos_token_id, pad_id(tok)
    prompts = [e.prompt_ids for e in pairs]
    texts = [e.pair.prompt[-1]["content"] for e in pairs]
    judge = {role: HFScorer(load(spec), vocab, pad, token_budget) for role, spec in (("dpo", teacher), ("ref", reference))}
    gens, results = {}, []
    for name, spec in models.items():
        model = load(spec)
        outs = generate(model, prompts, eos, pad, max_new_tokens, token_budget)
        gens[name] = [ids for ids, _ in outs]
        seqs = [Sequence(p + (ids or [eos]), len(p)) for p, ids in zip(prompts, gens[name])]
        r_seq = _seq_logp(judge["dpo"], seqs) - _seq_logp(judge["ref"], seqs)
        n_tok = np.array([s.n for s in seqs])
        scorer = HFScorer(model, vocab, pad, token_budget)
        margin = _seq_logp(scorer, [Sequence(e.prompt_ids + e.chosen_ids, len(e.prompt_ids)) for e in pairs]) - \
            _seq_logp(scorer, [Sequence(e.prompt_ids + e.rejected_ids, len(e.prompt_ids)) for e in pairs])
        decoded = [tok.decode(ids, skip_special_tokens=True).strip() for ids in gens[name]]
        res = ModelResult(name, str(spec), {"implicit_reward": _mean_se(r_seq),
                                            "implicit_reward_per_token": _mean_se(r_seq / n_tok),
                                            "preference_accuracy": _mean_se(margin > 0)}, r_seq)
        if reward:
            res.metrics["reward"] = _mean_se([reward[1](t, d) for t, d in zip(texts, decoded)])
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
        {"prompts": len(pairs), "teacher": teacher, "reference": reference, "baseline": baseline, "reward": reward[0] if reward else None,
         "models": [{"name": r.name, "source": r.source,
                     **{k: {"mean": m, "se": s} for k, (m, s) in r.metrics.items()}} for r in results]}, indent=1))
    plot(results, out_dir / "eval.png", len(pairs))
    return results


def heldout_pairs(heldout: Data, tc: TeacherCache, tok) -> list[Encoded]:
    """The held-out pairs, rendered exactly as stage one renders its pairs (same template, same cuts)."""
    prepared, _, _ = prepare(heldout, tc, tok, False)
    return [e for e in prepared if isinstance(e, Encoded)]


def run_eval(models: dict[str, ResolvedModel], heldout: Data, tc: TeacherCache, students: dict[str, str],
             out_dir: Path, reward=None, say=print) -> list[ModelResult]:
    """The teachers (`models`: teacher, reference, student) and the student init, plus `students`
    (name -> folder), on the held-out pairs (`heldout.source` a file or hub id)."""
    tok = load_tokenizer(models["student"])
    pairs = heldout_pairs(heldout, tc, tok)
    if not pairs:
        raise ValueError(f"{heldout.source}: no usable held-out pairs")
    named = {"teacher-sft": models["reference"].source, "teacher-dpo": models["teacher"].source,
             "student-sft": models["student"].source} | students
    say(f"eval: {len(named)} models on {len(pairs)} held-out pairs")
    return evaluate(named, models["teacher"].source, models["reference"].source, pairs, tok, reward, "student-sft",
                    out_dir, tc.max_new_tokens, tc.token_budget, say)
