"""Selection without the oracle: a reward model the user names (models.reward_model) scores the greedy answers
on the validation prompts (metric rm), against an independent float64 computation of the same classifier; a
recipe that selects by rm without one is refused; the reward model is part of the student's key."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from adpa.artifacts import Store
from adpa.pipeline import orchestrate
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.worlds import tiny as tiny_world
from adpa.stages.common.models import load_model, resolve
from adpa.stages.distill.training import Selection
from adpa.stages.evaluate.reward_model import RewardModel


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny world's untrained init models, its validation pairs, and a random 2-layer Llama reward model with
    the world's tokenizer (a sequence classifier with one output)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
    d = tmp_path_factory.mktemp("rm")
    st = Store(d / "store")
    teacher, student = (tiny_world.init_model(st, tiny_world.V3, role, 0) for role in ("teacher", "student"))
    tok = AutoTokenizer.from_pretrained(student)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, num_labels=1,
                      pad_token_id=tok.pad_token_id)
    rm = d / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(rm)
    tok.save_pretrained(rm)
    valid = tiny_world.dataset(st, tiny_world.V3, "valid", 0)
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "rm", "models": {"teacher": str(teacher), "reference": str(student), "student": str(student),
                                 "reward_model": str(rm)},
        "data": {"source": str(valid), "format": "strings", "valid_source": str(valid), "valid_split": "train"},
        "teacher_cache": {"backend": "hf", "k": 4, "max_length": 32, "max_new_tokens": 8},
        "distill": {"eval_every": 1, "select_by": "rm"}}))
    return st, load_recipe(str(recipe)), rm


def float64_scores(folder, conversations) -> np.ndarray:
    """The classifier by hand: the base model's last hidden state at the last token, times the score head."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification
    model = LlamaForSequenceClassification.from_pretrained(folder).double().eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    for conv in conversations:
        ids = torch.tensor([tok.apply_chat_template(conv, tokenize=True, return_dict=False)])
        with torch.no_grad():
            h = model.model(input_ids=ids).last_hidden_state[0, -1]
            out.append(float(h @ model.score.weight[0]))
    return np.array(out)


def test_the_reward_model_scores_conversations_as_its_classifier_does_in_float64(world):
    _, _, rm = world
    convs = [[{"role": "user", "content": "sort 3 1 2"}, {"role": "assistant", "content": a}]
             for a in ("1 2 3", "3 2 1", "1 1 2 3")]
    got = RewardModel(resolve(str(rm)), "cpu").score(convs)
    np.testing.assert_allclose(got, float64_scores(rm, convs), rtol=1e-4, atol=1e-5)
    assert len(set(np.round(got, 6))) == 3  # other answers, other scores: the answer is read


def test_validation_reports_rm_and_selection_keeps_its_best(world):
    st, recipe, rm = world
    validation = orchestrate.validator(recipe, recipe.distill, st)
    assert validation.identity["reward_model"] == resolve(str(rm)).identity
    model = load_model(resolve(recipe.models.student), torch.float32, "cpu")
    values = validation(model)
    pairs = validation.judge.pairs
    _, decoded = validation.judge.score(model)
    want = float64_scores(rm, [e.pair.prompt + [{"role": "assistant", "content": d}] for e, d in zip(pairs, decoded)])
    assert values["rm"] == pytest.approx(float(np.mean(want)), rel=1e-4, abs=1e-5)
    sel = Selection("rm")
    sel.offer(1, values, model)
    sel.offer(2, values | {"rm": values["rm"] - 1.0}, model)  # worse: the first stays
    assert sel.step == 1 and sel.value == values["rm"]


def test_selecting_by_rm_without_a_reward_model_is_refused(world):
    st, recipe, _ = world
    recipe = copy.deepcopy(recipe)
    recipe.models.reward_model = None
    with pytest.raises(ValueError, match="select_by rm needs a reward model: set models.reward_model"):
        orchestrate.validator(recipe, recipe.distill, st)


def test_eval_reports_the_reward_models_score_of_every_model(world, tmp_path):
    st, recipe, rm = world
    results = orchestrate.evaluate(recipe, st, {}, tmp_path / "eval", say=lambda *_: None)
    assert [r.name for r in results] == ["teacher-sft", "teacher-dpo", "student-sft"]
    assert all("rm" in r.metrics for r in results)
    from adpa.stages.evaluate.report import table
    assert "RM score" in table(results, 1).splitlines()[0]
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert all("rm" in m for m in saved["models"])
