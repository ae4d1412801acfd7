"""The built-in world end to end, and the integrity checks that would catch a wrong sign or mask.

Builds the world (tokenizer, data, SFT teacher, DPO teacher, SFT student: trained by our trainer),
runs stage one with the transformers backend (vLLM's engines take ~25 s each to start; the vLLM
path has its own tests), trains ADPA and ADPA with the advantage's sign flipped, evaluates.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from adpa.artifacts import Store
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.worlds import sorting_task
from adpa.pipeline.orchestrate import distill as run_distill
from adpa.pipeline.orchestrate import evaluate as run_eval
from adpa.pipeline.orchestrate import teacher_cache as run_teacher_cache
from adpa.stages.common.ranks import silent

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`


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


# The integrity checks' students: one shared setting, 2 epochs, no selection (cheaper than the protocol's
# per-method choices, and a student the teacher must beat without tuning in its favour).
CHECKS = ["distill.epochs=2", "distill.eval_every=0", "distill.select_by=last", "distill.sft_lr=2e-4",
          "distill.lr=2e-4", "distill.gamma=1.5"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    store = Store(d / "store")
    recipe = load_recipe("tiny", CHECKS)
    run_teacher_cache(recipe, store, say=silent)
    students = {"sft-on-chosen": str(run_distill(recipe, store, "sft", d / "sft", say=silent)[-1].model_dir)}
    for name, mode in (("adpa", "signed"), ("adpa-flipped", "flipped")):
        r = load_recipe("tiny", CHECKS + [f"distill.advantage={mode}"])
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
    import hashlib
    for m in report["models"]:  # which weights were scored, so that two runs can tell if they had one world
        assert m["weights_sha256"] == hashlib.sha256((Path(m["source"]) / "model.safetensors").read_bytes()).hexdigest()


def test_demo_prints_one_table_with_the_teachers_as_reference_rows(world):
    from adpa.pipeline.demo import run_demo
    lines = []
    out = run_demo(world["store"], world["recipe"], world["dir"] / "demo", methods=("sft", "dckd"), say=lines.append)
    text = "\n".join(lines)
    for row in ("teacher-sft", "teacher-dpo", "student-sft", "sft", "dckd"):
        assert any(ln.startswith(row + " ") for ln in text.splitlines()), row
    assert "reused" in text  # stage one's artifacts and the world come from the store
    world_line = next(ln for ln in lines if ln.startswith("the world's models, sha256 of their weights"))
    assert all(f"{name} " in world_line for name in ("teacher-sft", "teacher-dpo", "student-sft"))
    assert (world["dir"] / "demo" / "eval.png").exists() and set(out["students"]) == {"sft", "dckd"}


def test_selection_keeps_the_checkpoint_best_on_validation(world, tmp_path):
    """With eval_every and select_by, the student is the state with the best validation value: measured
    again, it gives exactly that value; the curve is in metrics.jsonl and loss.png, the step in the card."""
    from adpa.pipeline.orchestrate import validator

    recipe = load_recipe("tiny", CHECKS + ["distill.eval_every=16", "distill.select_by=reward"])
    (run,) = run_distill(recipe, world["store"], "kd", tmp_path / "kd", say=silent)
    valid = [json.loads(ln) for ln in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()
             if '"split": "valid"' in ln]
    assert [v["step"] for v in valid] == [0, 16, 32, 48, 64]
    best = max(valid, key=lambda v: (v["reward"], -v["step"]))  # the first of equals is kept
    assert run.summary["selected"] == {"by": "reward", "step": best["step"], "value": best["reward"]}
    from transformers import AutoModelForCausalLM
    again = validator(recipe, recipe.distill_for("kd"), world["store"])(AutoModelForCausalLM.from_pretrained(run.model_dir))
    assert again == {k: v for k, v in best.items() if k not in ("step", "split")}
    assert f"step {best['step']}, the best on the validation pairs by reward" in (run.model_dir / "README.md").read_text()
    card = (run.model_dir / "README.md").read_text()
    assert f"Reproduce: `{recipe.command('distill', '--loss', 'kd')}`" in card and "--set distill.eval_every=16" in card
    assert "| teacher | `builtin:tiny-teacher-dpo (artifact " in card and "| data | `sha256 " in card


def test_the_guard_marks_students_that_over_optimise():
    from adpa.stages.evaluate.report import over_optimised, table
    from adpa.stages.evaluate.run import ModelResult

    def res(name, r, reward):
        return ModelResult(name, "", {"reward": (reward, 0.01), "implicit_reward": (r, 0.1),
                                      "kl_to_init": (0.1, 0.01)})
    results = [res("teacher-dpo", 4.0, 0.9), res("student-sft", -5.0, 0.72), res("hacker", 7.7, 0.59),
               res("good", 5.0, 0.8), res("meek", 1.0, 0.6)]
    assert over_optimised(results) == {"hacker"}
    text = table(results, 256)
    assert any(ln.startswith("hacker") and ln.endswith("  !") for ln in text.splitlines())
    assert "KL(init)/tok" in text and "over-optimised" in text


def test_a_world_model_trains_to_the_same_bits_under_other_thread_counts(tmp_path):
    """Reproducible: the SFT student of the world, trained in two processes with 1 and 2 OpenMP threads
    (each from an empty store), has byte-identical weights."""
    import hashlib
    import os
    import subprocess
    import sys
    code = ("import sys; from adpa.artifacts import Store; from adpa.pipeline.worlds import tiny; "
            "print(tiny.build('tiny-student-sft', Store(sys.argv[1]))[0])")
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        p = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"store-{threads}")], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-2000:]
        folder = p.stdout.strip().splitlines()[-1]
        digests.append(hashlib.sha256((tmp_path / folder / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_audit_passes_the_teachers_own_values_and_catches_a_mislabelled_artifact(world, tmp_path):
    """`adpa cache audit` re-scores sampled rows with the models the manifest names. The real teacher-topk
    passes; the same key holding the SFT reference's top-k (shards and sha256s recomputed, so that plain
    verification passes) is caught, exit 1."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from helpers import linked_store
    adpa = str(Path(sys.executable).parent / "adpa")
    st = linked_store(world["store"], tmp_path / "store", kinds=("student-", "tokenizer-", "dataset-", "teacher-topk-"))
    legit = next(k for k in st.keys() if k.startswith("teacher-topk-"))
    run = lambda *a: subprocess.run([adpa, "cache", *a, "--store", str(st.root)], capture_output=True, text=True)  # noqa: E731
    ok = run("audit", legit, "--sample", "24")
    assert ok.returncode == 0 and "within the stated fidelity" in ok.stdout, ok.stdout + ok.stderr

    wrong = load_recipe("tiny", CHECKS + ["models.teacher=builtin:tiny-teacher-sft"])
    other = next(r for r in run_teacher_cache(wrong, world["store"], say=silent) if r.kind == "teacher-topk")
    d, src = st.path(legit), world["store"].path(other.key)
    forged = json.loads((d / "manifest.json").read_text())
    for s in forged["shards"]:
        (d / s["file"]).unlink()
    for s in other.manifest["shards"]:
        shutil.copy(src / s["file"], d / s["file"])
    (d / "manifest.json").unlink()  # the hard link is shared with the world's store: write a new file
    (d / "manifest.json").write_text(json.dumps(forged | {"shards": other.manifest["shards"],
                                                          "totals": other.manifest["totals"]}))
    assert run("verify", legit).returncode == 0  # checksums cannot tell
    bad = run("audit", legit, "--sample", "24")
    assert bad.returncode == 1 and "BEYOND THE STATED FIDELITY" in bad.stdout, bad.stdout + bad.stderr
