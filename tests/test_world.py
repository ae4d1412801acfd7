"""The built-in world end to end, and the integrity checks that would catch a wrong sign or mask.

Builds the world (tokenizer, data, SFT teacher, DPO teacher, SFT student: trained by our trainer),
runs stage one with the transformers backend (vLLM's engines take ~25 s each to start; the vLLM
path has its own tests), trains ADPA and ADPA with the advantage's sign flipped, evaluates.
"""

import copy
import json

import numpy as np
import pytest

from artifacts import Store
from pipeline.recipe import load_recipe
from pipeline.worlds import sorting_task
from pipeline.orchestrate import distill as run_distill
from pipeline.orchestrate import evaluate as run_eval
from pipeline.orchestrate import teacher_cache as run_teacher_cache
from stages.common.ranks import silent


def test_task_reward_policy_and_splits():
    T = sorting_task
    assert T.reward("sort 3 1 2 5", "1 2 3 5") == 1.0
    assert T.reward("sort 3 1 2 5", "1 2 5 3") == 0.5  # partial credit
    assert T.reward("sort 3 1 2 5", "1 2 3 5 5") == 0.8 and T.reward("sort 3 1 2 5", "one two") == 0.0
    sizes = {"test": 64, "valid": 64, "train": 300, "dpo": 300, "sft": 300}
    prompts = [r["prompt"] for s in T.SPLITS for r in T.split_rows(0, sizes, s)]
    assert len(prompts) == sum(sizes.values()) == len(set(prompts))  # disjoint splits
    pairs = T.split_rows(0, sizes, "train")
    assert pairs == T.split_rows(0, sizes, "train") and pairs != T.split_rows(1, sizes, "train")  # pure in the seed
    rc = np.array([T.reward(p["prompt"], p["chosen"]) for p in pairs])
    rr = np.array([T.reward(p["prompt"], p["rejected"]) for p in pairs])
    assert (rc >= rr).all() and all(p["chosen"] != p["rejected"] for p in pairs)
    assert 0.6 < rc.mean() < 0.95  # good, not perfect: the better of two mediocre samples
    eligible = [p for p in pairs if T.last_pair_swapped(T.digits(p["prompt"]))]
    swapped = np.mean([T.digits(p["chosen"])[-2:] == T.last_pair_swapped(T.digits(p["prompt"]))[-2:] for p in eligible])
    assert swapped > 0.5  # the chosen answers' mode is the systematic mistake


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    store = Store(d / "store")
    recipe = load_recipe("tiny")
    recipe.teacher_cache.backend = "hf"  # the vLLM path has its own tests
    run_teacher_cache(recipe, store, say=silent)
    students = {"sft-on-chosen": str(run_distill(recipe, store, "sft", d / "sft", say=silent)[-1].model_dir)}
    for name, mode in (("adpa", "signed"), ("adpa-flipped", "flipped")):
        r = copy.deepcopy(recipe)
        r.distill.advantage = mode
        students[name] = str(run_distill(r, store, "adpa", d / name, say=silent)[-1].model_dir)
    results = run_eval(recipe, store, students, d / "eval", say=silent)
    gens = {r.name: [json.loads(ln) for ln in (d / "eval" / "generations" / f"{r.name}.jsonl").read_text().splitlines()]
            for r in results}
    return {"dir": d, "store": store, "recipe": recipe, "results": {r.name: r.metrics for r in results}, "r_seq": {r.name: r.r_seq for r in results},
            "reward": {n: np.array([sorting_task.reward(x["instruction"], x["output"]) for x in g])
                       for n, g in gens.items()}}


def clearly_greater(a, b):
    """Paired over the same held-out prompts: mean(a - b) above three standard errors of that mean."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return diff.mean() > 3 * diff.std(ddof=1) / len(diff) ** 0.5


def test_dpo_teacher_beats_its_sft_reference_on_the_ground_truth(world):
    r = world["reward"]
    assert clearly_greater(r["teacher-dpo"], r["teacher-sft"]), (r["teacher-dpo"].mean(), r["teacher-sft"].mean())


def test_dpo_teacher_knows_more_than_the_distillation_pairs_show(world):
    """The teacher beats a student trained by SFT on the distillation pairs' chosen answers."""
    r = world["reward"]
    assert clearly_greater(r["teacher-dpo"], r["sft-on-chosen"]), (r["teacher-dpo"].mean(), r["sft-on-chosen"].mean())


def test_adpa_raises_the_teacher_implicit_reward_and_the_flipped_sign_lowers_it(world):
    r = world["r_seq"]
    assert clearly_greater(r["adpa"], r["student-sft"]), (r["adpa"].mean(), r["student-sft"].mean())
    assert clearly_greater(r["student-sft"], r["adpa-flipped"]), (r["adpa-flipped"].mean(), r["student-sft"].mean())


def test_eval_writes_a_report_a_chart_and_judge_ready_generations(world):
    d = world["dir"] / "eval"
    report = json.loads((d / "eval.json").read_text())
    assert {m["name"] for m in report["models"]} == {"teacher-sft", "teacher-dpo", "student-sft", "sft-on-chosen",
                                                      "adpa", "adpa-flipped"}
    assert report["prompts"] == 256 and report["reward"] == "sorting"
    assert (d / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(ln) for ln in (d / "generations" / "adpa.jsonl").read_text().splitlines()]
    assert len(rows) == 256 and set(rows[0]) >= {"instruction", "output", "generator"}
    assert rows[0]["instruction"].startswith("sort ") and rows[0]["generator"] == "adpa"
    acc = sum(sorting_task.reward(x["instruction"], x["output"]) for x in rows) / len(rows)
    assert acc == pytest.approx(world["results"]["adpa"]["reward"][0])  # the table is the exported outputs


def test_demo_prints_one_table_with_the_teachers_as_reference_rows(world):
    from pipeline.demo import run_demo
    lines = []
    out = run_demo(world["store"], world["recipe"], world["dir"] / "demo", methods=("sft", "dckd"), say=lines.append)
    text = "\n".join(lines)
    for row in ("teacher-sft", "teacher-dpo", "student-sft", "sft", "dckd"):
        assert any(ln.startswith(row + " ") for ln in text.splitlines()), row
    assert "reused" in text  # stage one's artifacts and the world come from the store
    assert (world["dir"] / "demo" / "eval.png").exists() and set(out["students"]) == {"sft", "dckd"}
