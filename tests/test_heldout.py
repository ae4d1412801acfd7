"""A real held-out split (issue 27, item 2): with no data.eval_source, a fraction of the source's prompts,
chosen by a hash of the prompt, is held out of both stages and is what `adpa eval` scores; with holdout 0
the evaluation says it scores training rows."""

import dataclasses
import json
import random

import pytest
import yaml

from adpa.artifacts import Store
from adpa.pipeline import builtin, orchestrate
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.worlds import tiny as tiny_world
from adpa.stages.common.models import load_tokenizer, resolve
from adpa.stages.common.ranks import silent
from adpa.stages.teacher_cache.pairs import Drop
from adpa.stages.teacher_cache.run import prepare


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("heldout")
    st = Store(d / "store")
    teacher, student = (tiny_world.init_model(st, tiny_world.V3, role, 0) for role in ("teacher", "student"))
    rows = [json.loads(ln) for ln in tiny_world.dataset(st, tiny_world.V3, "train", 0).read_text().splitlines()]
    data = d / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:400]))
    models = {"teacher": str(teacher), "reference": str(student), "student": str(student)}
    return d, st, models, data, rows[:400]


def recipe(world, **data):
    d, _, models, source, _ = world
    f = d / f"recipe-{len(list(d.glob('recipe-*')))}.yaml"
    f.write_text(yaml.safe_dump({"name": "mine", "models": models, "data": {"source": str(source)} | data,
                                 "teacher_cache": {"backend": "hf", "k": 4, "max_length": 32, "max_new_tokens": 6}}))
    return load_recipe(str(f))


def split(world, r):
    """The rows stage one reads and the rows eval reads, as encoded-or-drop lists."""
    tok = load_tokenizer(resolve(world[2]["student"]))
    train = prepare(builtin.resolve_data(r.data, world[1]), r.teacher_cache, tok, False)[0]
    held = prepare(builtin.heldout(r.data, world[1]), r.teacher_cache, tok, False)[0]
    return train, held


def test_the_held_out_rows_are_out_of_stage_one_and_are_what_eval_reads(world):
    r = recipe(world)
    assert r.data.holdout == 0.05 and r.data.eval_source is None and orchestrate.eval_rows(r) == "held-out"
    train, held = split(world, r)
    n = len(world[4])
    assert len(train) == len(held) == n
    out = [i for i, e in enumerate(train) if e == Drop.held_out]
    evaluated = [i for i, e in enumerate(held) if not isinstance(e, Drop)]
    assert out == evaluated and 0.02 * n < len(out) < 0.09 * n  # the same rows, about 5% of them
    assert all(held[i] == Drop.not_held_out for i in range(n) if i not in set(out))
    used = sum(not isinstance(e, Drop) for e in train)
    assert used + len(out) + sum(isinstance(e, Drop) and e != Drop.held_out for e in train) == n


def test_the_split_is_by_prompt_whatever_the_order_and_is_in_the_keys(world):
    d, st, _, source, rows = world
    r = recipe(world)
    _, held = split(world, r)
    chosen = {rows[i]["prompt"] for i, e in enumerate(held) if not isinstance(e, Drop)}
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    other = d / "shuffled.jsonl"
    other.write_text("".join(json.dumps(x) + "\n" for x in shuffled))
    r2 = recipe(world)
    r2.data = dataclasses.replace(r2.data, source=str(other))
    _, held2 = split(world, r2)
    assert {shuffled[i]["prompt"] for i, e in enumerate(held2) if not isinstance(e, Drop)} == chosen

    keys = [orchestrate.planned(recipe(world, **x), st) for x in ({}, {"holdout": 0.1}, {"holdout": 0})]
    assert len({k["teacher_topk"] for k in keys}) == 3
    with_eval = recipe(world, eval_source=str(source))
    assert orchestrate.planned(with_eval, st) == orchestrate.planned(recipe(world, eval_source=str(source),
                                                                            holdout=0.2), st)


def test_stage_one_counts_the_held_out_rows_and_eval_says_when_it_scores_training_rows(world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d, st, _, _, rows = world
    r = recipe(world, limit=60)
    results = orchestrate.teacher_cache(r, st, say=silent)
    m = st.manifest(results[0].key)
    assert m["input_rows"] == 60 and m["rows_used"] + sum(m["dropped"].values()) == 60 and m["dropped"]["held_out"] > 0
    lines = []
    zero = recipe(world, limit=8, holdout=0)
    assert orchestrate.eval_rows(zero) == "training"
    orchestrate.evaluate(zero, st, {}, tmp_path / "eval", say=lines.append)
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["rows"] == "training" and report["prompts"] == 8
    assert any("8 training pairs" in ln and "trained on" in ln for ln in lines), lines


def test_eval_generations_keep_a_multi_turn_conversation(world, tmp_path):
    """issue 27 item 12: generations/NAME.jsonl kept only the last user turn."""
    d, st, models, _, rows = world
    U, A = (lambda t: {"role": "user", "content": t}), (lambda t: {"role": "assistant", "content": t})
    history = [U("sort 3 1"), A("1 3")]
    f = d / "turns.jsonl"
    f.write_text("".join(json.dumps({"chosen": history + [U(r["prompt"]), A(r["chosen"])],
                                     "rejected": history + [U(r["prompt"]), A(r["rejected"])]}) + "\n"
                         for r in rows[:3]))
    r = recipe(world, eval_source=str(f), format="messages")
    orchestrate.evaluate(r, st, {}, tmp_path / "eval", say=silent)
    out = [json.loads(ln) for ln in (tmp_path / "eval" / "generations" / "student-sft.jsonl").read_text().splitlines()]
    assert len(out) == 3 and out[0]["instruction"] == rows[0]["prompt"]
    assert out[0]["conversation"] == history + [U(rows[0]["prompt"])]
