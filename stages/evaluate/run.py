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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adpa.artifacts.fsutil import fingerprint_files
from adpa.stages.common.device import pad_id, pick_device
from adpa.stages.common.lm import HFScorer, Sequence, generate
from adpa.stages.common.models import ResolvedModel, load_model, load_tokenizer, resolve
from adpa.stages.evaluate.reward_model import RewardModel
from adpa.stages.common.tokenizers import vocab_sha256
from adpa.stages.common.chat import render_prompt, render_response
from adpa.stages.teacher_cache.render import Encoded, encode_pair
from adpa.stages.teacher_cache.run import Request, prepare
from adpa.stages.teacher_cache.settings import Data, TeacherCache


@dataclass
class ModelResult:
    name: str
    source: str
    metrics: dict = field(default_factory=dict)  # name -> (mean, standard error)
    r_seq: np.ndarray | None = None  # implicit reward per prompt (for win rates)
    weights_sha256: str | None = None  # of model.safetensors: tells whether two runs scored the same model


def weights_sha256(spec: str) -> str | None:
    """sha256 of a local model folder's model.safetensors (None for a hub id or sharded weights)."""
    p = Path(spec) / "model.safetensors"
    return fingerprint_files([p], root=p.parent)["model.safetensors"] if p.is_file() else None


def _mean_se(x) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0


def _seq_logp(scorer, seqs) -> np.ndarray:
    return np.array([float(np.sum(r.realized_logp, dtype=np.float64)) for r in scorer.score(seqs)])


@dataclass(frozen=True)
class View:
    """The Judge's pairs as one tokenizer reads them: each model answers and is scored in its own ids."""
    tok: object
    pairs: list[Encoded]
    fp: str  # vocab_sha256 of `tok`

    def scorer(self, model, token_budget: int) -> HFScorer:
        return HFScorer(model, len(self.tok), pad_id(self.tok), token_budget)


class Judge:
    """Scores any model on a fixed set of pairs: its greedy answers' ground-truth reward and the DPO
    teacher's implicit reward of them, its preference accuracy and chosen-response NLL, and the
    per-token KL(model || student init) on its own answers (the over-optimisation guard).
    Loads the teacher, its reference and the init once; used by `evaluate` and by checkpoint selection.
    A model of another tokenizer than the student's (the teachers of a `distill.cross_tokenizer` student, or
    such a student beside them) reads the same conversations rendered with its own tokenizer; the teachers
    score its answers' text rendered with theirs; its KL to the init (another vocabulary) is not defined."""

    def __init__(self, models: dict[str, ResolvedModel], pairs: list, tok,
                 reward: tuple[str, Callable[[str, str], float]] | None, tc: TeacherCache,
                 reward_model: ResolvedModel | None = None):
        """`models`: the recipe's teacher (DPO), reference (its SFT) and student (the init); `pairs`: Encoded
        with `tok`, the student's tokenizer; `tc`: generation length, token budget, max_length;
        `reward_model`: a sequence classifier that scores the answers (metric rm)."""
        import torch
        self.device = pick_device()
        self.pairs, self.reward, self.tc = pairs, reward, tc
        self.mine = View(tok, pairs, vocab_sha256(tok))
        self.views = {self.mine.fp: self.mine}  # by vocabulary: each other tokenizer's pairs encoded once
        self.load = lambda m: load_model(m, torch.float32, self.device)  # noqa: E731 (a ResolvedModel)
        teacher_tok = load_tokenizer(models["teacher"])  # its tok and fp; its pairs: view(teacher_tok), if asked
        self.theirs = View(teacher_tok, [], vocab_sha256(teacher_tok))
        self.dpo, self.ref = (self.theirs.scorer(self.load(models[role]), tc.token_budget)
                              for role in ("teacher", "reference"))
        self.init = self.mine.scorer(self.load(models["student"]), tc.token_budget)
        self.rm = RewardModel(reward_model, self.device) if reward_model is not None else None

    def view(self, tok) -> View:
        """The pairs as `tok` reads them (the student's own when it is the student's vocabulary); a pair that
        tokenizer cannot render stays None there (`unanswerable` says which)."""
        fp = vocab_sha256(tok)
        if fp not in self.views:
            pairs = [encode_pair(tok, e.pair, self.tc.max_length) for e in self.pairs]
            self.views[fp] = View(tok, [e if isinstance(e, Encoded) else None for e in pairs], fp)
        return self.views[fp]

    def unanswerable(self, tok) -> str | None:
        """Why models of `tok` cannot be scored on these pairs (a pair its rendering drops), else None."""
        missing = sum(e is None for e in self.view(tok).pairs)
        return f"{missing} of the {len(self.pairs)} pairs do not fit teacher_cache.max_length " \
               f"({self.tc.max_length}) in their tokenizer's ids" if missing else None

    def teachers_view(self, v: View, seqs: list[Sequence], answers: list[str]) -> list[Sequence]:
        """The answers as the teachers read them: the same ids, or, from a model of another tokenizer, the
        conversation of each answer's text rendered with the teachers' tokenizer."""
        if v.fp == self.theirs.fp:
            return seqs
        tok, out = self.theirs.tok, []
        for e, text in zip(self.pairs, answers):
            prompt = render_prompt(tok, e.pair.prompt)
            out.append(Sequence(prompt + (render_response(tok, e.pair.prompt, prompt, text) or []), len(prompt)))
        return out

    def score(self, model, tok=None) -> tuple[dict[str, np.ndarray], list[str]]:
        """Per-prompt values of every metric, and the decoded greedy answers; `tok`: the model's tokenizer
        (default: the student's)."""
        v = self.mine if tok is None else self.view(tok)
        was_training, cache = model.training, model.config.use_cache
        model.eval()
        model.config.use_cache = True  # a trainer turns the KV cache off; generation wants it
        eos, budget = v.tok.eos_token_id, self.tc.token_budget
        prompts = [e.prompt_ids for e in v.pairs]
        outs = generate(model, prompts, eos, pad_id(v.tok), self.tc.max_new_tokens, budget)
        seqs = [Sequence(p + (ids or [eos]), len(p)) for p, (ids, _) in zip(prompts, outs)]
        decoded = [v.tok.decode(ids, skip_special_tokens=True).strip() for ids, _ in outs]
        theirs = self.teachers_view(v, seqs, decoded)
        r_seq = _seq_logp(self.dpo, theirs) - _seq_logp(self.ref, theirs)
        me = v.scorer(model, budget)
        chosen = [Sequence(e.prompt_ids + e.chosen_ids, len(e.prompt_ids)) for e in v.pairs]
        lp_chosen = _seq_logp(me, chosen)
        margin = lp_chosen - _seq_logp(me, [Sequence(e.prompt_ids + e.rejected_ids, len(e.prompt_ids))
                                            for e in v.pairs])
        per_token = r_seq / np.array([max(s.n, 1) for s in theirs])
        values = {"implicit_reward": r_seq, "implicit_reward_per_token": per_token,
                  "preference_accuracy": (margin > 0).astype(float),
                  "chosen_nll": -lp_chosen / np.array([c.n for c in chosen])}
        if v is self.mine:  # KL to the init needs the init's vocabulary
            values["kl_to_init"] = np.array([k.mean() for k in me.kl_to(self.init, seqs)])
        values |= self.graded(decoded)
        model.train(was_training)
        model.config.use_cache = cache
        return values, decoded

    def graded(self, decoded: list[str]) -> dict[str, np.ndarray]:
        """The answers' text graded by the recipe's reward and the reward model, where there are."""
        values = {}
        if self.reward:
            texts = [e.pair.prompt[-1]["content"] for e in self.pairs]
            values["reward"] = np.array([self.reward[1](t, d) for t, d in zip(texts, decoded)])
        if self.rm:
            values["rm"] = self.rm.score([e.pair.prompt + [{"role": "assistant", "content": d}]
                                          for e, d in zip(self.pairs, decoded)])
        return values


OUTPUTS = ("eval.json", "eval.png", "generations")  # what evaluate writes into its folder


BASELINE = "student-sft"  # the win rate's: the student init's generations


def evaluate(models: dict[str, str], judge: Judge, out_dir: Path, say=print, rows: str = "held-out") -> list[ModelResult]:
    """`models`: display name -> loadable folder or hub id, each scored by `judge` on its pairs (`rows`: what
    they are, held-out or training rows); writes eval.json, eval.png and generations/NAME.jsonl."""
    from adpa.stages.evaluate.report import over_optimised, plot

    out_dir = Path(out_dir)
    (out_dir / "generations").mkdir(parents=True, exist_ok=True)
    pairs, results = judge.pairs, []
    texts = [e.pair.prompt[-1]["content"] for e in pairs]
    for i, (name, spec) in enumerate(models.items()):
        t0 = time.perf_counter()
        say(f"  [{i + 1}/{len(models)}] {name}: answering {len(pairs)} prompts, then scoring them")
        m = resolve(spec)  # once: a folder's weights are hashed on each resolve
        values, decoded = judge.score(judge.load(m), load_tokenizer(m))
        res = ModelResult(name, str(spec), {k: _mean_se(v) for k, v in values.items()}, values["implicit_reward"],
                          weights_sha256(str(spec)))
        with open(out_dir / "generations" / f"{name}.jsonl", "w") as f:
            for e, t, d in zip(pairs, texts, decoded):  # AlpacaEval's fields, and the whole conversation
                turns = {"conversation": e.pair.prompt} if len(e.pair.prompt) > 1 else {}
                f.write(json.dumps({"instruction": t, "output": d, "generator": name, "id": e.pair.pair_id} | turns)
                        + "\n")
        results.append(res)
        say(f"  evaluated {name} in {time.perf_counter() - t0:,.1f} s")
    base = next(r for r in results if r.name == BASELINE).r_seq
    for r in results:
        r.metrics["win_rate_vs_" + BASELINE] = _mean_se(np.where(r.r_seq > base, 1.0,
                                                                 np.where(r.r_seq == base, 0.5, 0.0)))
    flagged = over_optimised(results)
    (out_dir / "eval.json").write_text(json.dumps(
        {"prompts": len(pairs), "rows": rows, "baseline": BASELINE, "reward": judge.reward[0] if judge.reward else None,
         "models": [{"name": r.name, "source": r.source, "weights_sha256": r.weights_sha256,
                     "over_optimised": r.name in flagged,
                     **{k: {"mean": m, "se": s} for k, (m, s) in r.metrics.items()}} for r in results]}, indent=1))
    plot(results, out_dir / "eval.png", len(pairs), rows)
    return results


class Validator:
    """Checkpoint selection's measure: a Judge on the validation pairs, as means per metric."""

    def __init__(self, models: dict[str, ResolvedModel], valid: Data, tc: TeacherCache, reward=None,
                 reward_model: ResolvedModel | None = None):
        tok = load_tokenizer(models["student"])
        prepared, fp, _ = prepare(valid, tc, tok, False)
        pairs = [e for e in prepared if isinstance(e, Encoded)]
        if not pairs:
            raise ValueError(f"{valid.source}: no usable validation pairs")
        self.judge = Judge(models, pairs, tok, reward, tc, reward_model)
        self.identity = {"data": fp, "pairs": len(pairs), "reward": reward[0] if reward else None,
                         **{role: models[role].identity for role in ("teacher", "reference", "student")},
                         **({"reward_model": reward_model.identity} if reward_model else {})}

    def __call__(self, model) -> dict[str, float]:
        values, _ = self.judge.score(model)
        return {k: float(np.mean(v)) for k, v in values.items()}


def heldout_pairs(heldout: Data, tc: TeacherCache, tok) -> list[Encoded]:
    """The held-out pairs, rendered exactly as stage one renders its pairs (same template, same cuts)."""
    prepared, _, _ = prepare(heldout, tc, tok, False)
    return [e for e in prepared if isinstance(e, Encoded)]


def run_eval(req: Request, students: dict[str, str], out_dir: Path, reward=None, say=print,
             reward_model: ResolvedModel | None = None) -> list[ModelResult]:
    """The teachers (`req.models`: teacher, reference, student) and the student init, plus `students`
    (name -> folder), on the held-out pairs (`req.data`: a file or hub id); `reward_model` adds its scores."""
    models, heldout, tc = req.models, req.data, req.settings
    tok = load_tokenizer(models["student"])
    pairs = heldout_pairs(heldout, tc, tok)
    if not pairs:
        raise ValueError(f"{heldout.source}: no usable {rows_of(heldout)} pairs")
    judge = Judge(models, pairs, tok, reward, tc, reward_model)
    left_out = judge.unanswerable(judge.theirs.tok)  # the teachers answer in their own ids
    teachers = {} if left_out else {"teacher-sft": models["reference"].source, "teacher-dpo": models["teacher"].source}
    named = teachers | {BASELINE: models["student"].source} | students
    rows = rows_of(heldout)
    say(f"eval: {len(named)} models on {len(pairs)} {rows} pairs" + (
        " (data.eval_source is null and data.holdout is 0: these rows are trained on)" if rows == "training" else "")
        + (f"; the teachers are left out: {left_out}" if left_out else ""))
    return evaluate(named, judge, out_dir, say, rows)


def rows_of(data: Data) -> str:
    """What an evaluation's rows are: "training" when the stages read them too, else "held-out"."""
    return "training" if data.take == "training" else "held-out"
