"""Stage one on real SmolLM2-135M weights, checked against plain float64 full-vocabulary computations.

Teacher: the real SmolLM2-135M-Instruct; reference: the same weights cut to 20 layers (a real,
different distribution); student: cut to 6 layers. Tolerances, and why:
* log-probs stored as codes: 0.0095 nats (half the 0.019 step), plus float32-vs-float64 compute
  error, measured at about 3e-5 here: bound 0.0095 + 1e-3.
* realized log-probs are stored as fine codes (within 7.4e-5 nats) of a float32 computation: bound 1e-3.
* an advantage is a difference of two coded values: bound 0.019 + 2e-3.
* top-k ids: every stored id must be a float64 top-k member up to 1e-3 (near-ties may swap).
"""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from adpa.artifacts import ArtifactReader, verify_artifact
from benchmarks.real_text import real_text
from conftest import write_recipe
from adpa.pipeline.recipe import load_recipe
from adpa.schemas.token_topk import LOGP_STEP
from adpa.pipeline.orchestrate import teacher_cache as run_teacher_cache
from adpa.stages.common.ranks import silent

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

K = 8


def real_pairs(n=6):
    """Questions about Python topics; chosen = the real documentation passage, rejected = another topic's."""
    paras = [p.strip() for p in real_text().split("\n\n") if 200 < len(p.strip()) < 400][: 2 * n]
    return [{"prompt": f"Explain this part of the Python language (passage {i}).", "chosen": paras[i],
             "rejected": paras[n + i]} for i in range(n)]


@pytest.fixture(scope="module")
def world(model_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    data = d / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in real_pairs()))
    recipe = load_recipe(str(write_recipe(d / "recipe.yaml", data, k=K, max_length=160, max_new_tokens=12,
                                          shard_rows=4)))
    results = run_teacher_cache(recipe, model_store, say=silent)
    return model_store, recipe, {(r.kind, r.role.split(",")[0]): r for r in results}


def f64(store, role_spec):
    from adpa.pipeline.builtin import resolve_model as resolve
    return AutoModelForCausalLM.from_pretrained(resolve(role_spec, store).source, dtype=torch.float64).eval()


def full_logp(model, ids, prompt_len):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return lp[prompt_len - 1:-1]


def test_every_kind_of_artifact_is_produced_and_verifies(world):
    store, _, res = world
    kinds = sorted(k for k, _ in res)
    assert kinds == ["advantage", "generations", "seq-logp", "seq-logp", "teacher-topk"]
    for r in res.values():
        m = verify_artifact(store.path(r.key))
        assert m["input_rows"] == 6 and m["rows_used"] == 6
        assert m["producer"]["backend"] == "hf" and "torch" in m["producer"]
    assert res[("teacher-topk", "teacher")].manifest["totals"]["shards"] >= 3  # 12 rows, 4 per shard


def test_teacher_topk_matches_float64_full_vocabulary(world):
    store, recipe, res = world
    teacher = f64(store, recipe.models.teacher)
    rows = list(ArtifactReader(store.path(res[("teacher-topk", "teacher")].key)))
    assert sorted((r.input_index, r.side) for r in rows) == [(i, s) for i in range(6) for s in ("chosen", "rejected")]
    for r in rows:
        lp = full_logp(teacher, r.token_ids.tolist(), r.prompt_len)
        check_topk(r, lp)
        realized = lp.gather(1, torch.as_tensor(r.token_ids[r.prompt_len:])[:, None])[:, 0].numpy()
        assert np.abs(r.realized_logp - realized).max() <= 1e-3


def check_topk(r, lp):
    top = lp.topk(K + 1)
    kth = top.values[:, K - 1].numpy()
    at_ids = lp.gather(1, torch.as_tensor(r.topk_ids))
    assert (at_ids.numpy() >= kth[:, None] - 1e-3).all(), "a stored id is not a top-k member"
    assert all(len(set(row)) == K for row in r.topk_ids.tolist())
    assert np.abs(r.topk_logp - at_ids.numpy()).max() <= LOGP_STEP / 2 + 1e-3
    tail = torch.log1p(-at_ids.exp().sum(-1)).numpy()
    assert np.abs(r.tail_logp - tail).max() <= LOGP_STEP / 2 + 1e-3


def test_advantages_match_float64_log_ratio_at_the_same_ids(world):
    store, recipe, res = world
    teacher, ref = f64(store, recipe.models.teacher), f64(store, recipe.models.reference)
    adv = res[("advantage", "states=student")]
    assert adv.manifest["inputs"]["reference_role"] == "teacher-sft"
    assert adv.manifest["inputs"]["reference_gather"] == "exact"
    assert adv.manifest["stats"]["reference_exact_mass_fraction"] == 1.0
    rows = list(ArtifactReader(store.path(adv.key)))
    assert len(rows) == 6 and {r.side for r in rows} == {"generated"}
    for r in rows:
        ids, p = r.token_ids.tolist(), r.prompt_len
        lt, lr = full_logp(teacher, ids, p), full_logp(ref, ids, p)
        check_topk(r, lt)
        at = torch.as_tensor(r.topk_ids)
        want = (lt.gather(1, at) - lr.gather(1, at)).numpy()
        got = r.topk_logp - r.ref_topk_logp
        assert np.abs(got - want).max() <= LOGP_STEP + 2e-3
        realized = torch.as_tensor(ids[p:])[:, None]
        assert np.abs(r.ref_realized_logp - lr.gather(1, realized)[:, 0].numpy()).max() <= 1e-3


def test_sequence_logprobs_of_reference_and_student(world):
    store, recipe, res = world
    for role, spec in (("reference", recipe.models.reference), ("student", recipe.models.student)):
        model = f64(store, spec)
        for r in ArtifactReader(store.path(res[("seq-logp", role)].key)):
            lp = full_logp(model, r.token_ids.tolist(), r.prompt_len)
            want = lp.gather(1, torch.as_tensor(r.token_ids[r.prompt_len:])[:, None])[:, 0].numpy()
            assert np.abs(r.realized_logp - want).max() <= 1e-3


def test_generations_are_the_students_greedy_continuations(world):
    store, recipe, res = world
    from adpa.pipeline.builtin import resolve_model as resolve
    student = AutoModelForCausalLM.from_pretrained(resolve(recipe.models.student, store).source).eval()
    for r in ArtifactReader(store.path(res[("generations", "student")].key)):
        prompt = r.token_ids[: r.prompt_len]
        with torch.no_grad():
            out = student.generate(torch.as_tensor(prompt)[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=2)
        alone = out[0, len(prompt):].tolist()
        stored = r.token_ids[r.prompt_len:].tolist()
        assert stored == alone[: len(stored)] and r.finish in ("stop", "length")
        assert (r.finish == "stop") == (stored[-1] == 2)


def test_a_second_run_reuses_everything(world):
    store, recipe, res = world
    again = run_teacher_cache(recipe, store, say=silent)
    assert [r.status for r in again] == ["reused"] * 5
    assert {r.key for r in again} == {r.key for r in res.values()}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_prompt_shared_by_its_continuations_scores_as_each_sequence_alone(attn):
    """Prompt sharing (one packed row per prompt, tree-shaped mask) against scoring every sequence on its
    own, on the real SmolLM2 weights: multi-turn chat prompts rendered by its template, one-token
    responses, a one-token prompt, a sequence at max_length, three continuations of one prompt, and
    a token budget small enough that packed rows are batched alone."""
    from adpa.pipeline.worlds.smollm2 import load_smollm2
    from adpa.stages.common.lm import HFScorer, Sequence, pack_by_prompt
    from adpa.stages.teacher_cache.render import render_prompt, render_response
    model, tok = load_smollm2()
    model.config._attn_implementation = attn
    paras = [p.strip() for p in real_text().split("\n\n") if 100 < len(p.strip()) < 250]
    seqs = []
    for i in range(4):
        chat = [{"role": "user", "content": paras[4 * i][:200]}, {"role": "assistant", "content": paras[4 * i + 1]},
                {"role": "user", "content": f"And what about this ({i})?"}]
        prompt = render_prompt(tok, chat)
        for text in (paras[4 * i + 2], paras[4 * i + 3], "Yes.")[: 2 + (i == 0)]:
            seqs.append(Sequence(prompt + render_response(tok, chat, prompt, text), len(prompt)))
    seqs += [Sequence(seqs[0].ids[:seqs[0].prompt_len + 1], seqs[0].prompt_len),  # one-token responses
             Sequence(seqs[3].ids[:seqs[3].prompt_len + 1], seqs[3].prompt_len),
             Sequence([1, 504, 2683], 1), Sequence([1, 4310, 17, 905], 1),  # a one-token prompt
             Sequence(seqs[5].ids[:160], 159)]  # at max_length = 160: a prompt of 159, one response token
    rows = pack_by_prompt(seqs)
    assert len(rows) < len(seqs) and sum(len(r.ids) for r in rows) == (
        sum(s.n for s in seqs) + sum(len(r.ids) - sum(seqs[i].n for i in r.members) for r in rows))
    assert {len(r.members) for r in rows} >= {1, 2, 3, 4}
    gather = [np.random.default_rng(i).integers(0, 49152, (s.n, 5)) for i, s in enumerate(seqs)]
    for budget in (4096, 64) if attn == "sdpa" else (4096,):
        shared = HFScorer(model, 49152, 0, budget)
        alone = HFScorer(model, 49152, 0, budget, share_prompts=False)
        assert shared.share_prompts and not alone.share_prompts
        for task in ({"k": 8, "gather": gather},):  # realized log-probs, top-k, tail and gathers in one pass
            a, b = shared.score(seqs, **task), alone.score(seqs, **task)
            for s, x, y in zip(seqs, a, b):
                assert len(x.realized_logp) == s.n
                for name in ("realized_logp", "topk_ids", "topk_logp", "tail_logp", "gathered_logp"):
                    xs, ys = getattr(x, name), getattr(y, name)
                    if name == "topk_ids":  # near-ties may swap; the values must agree anyway
                        assert (xs[:, 0] == ys[:, 0]).mean() > 0.95
                    else:
                        assert np.abs(xs - ys).max() <= 2e-4, (attn, budget, name)
    if attn == "eager":
        return
    # ... and against plain float64 full-vocabulary log-probs, one sequence at a time
    m64 = model.double()
    for s, x in zip(seqs, a):
        want = full_logp(m64, s.ids, s.prompt_len)
        got = want.gather(1, torch.as_tensor(s.ids[s.prompt_len:])[:, None])[:, 0].numpy()
        assert np.abs(x.realized_logp - got).max() <= 1e-3
