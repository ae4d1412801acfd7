"""The Distiller in this process, on stage one's real artifacts of 16 tiny-sort pairs (the unit layer).

The models are the tiny world's untrained initialisations (a 3-layer teacher, a 2-layer student, the
world's 17-token tokenizer), so nothing here waits for a world to be trained. A step over several
micro-batches against the plain step over all of its pairs; every loss through `run()` for 4 steps, then
reused; an interrupted run resumed to the uninterrupted weights; a diverging run stopped; selection.
"""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from adpa.artifacts import Store
from helpers import linked_store
from adpa.pipeline import orchestrate
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.worlds import tiny as tiny_world
from adpa.stages.common.lm import OutputLayer
from adpa.stages.common.models import resolve
from adpa.stages.common.ranks import silent
from adpa.stages.distill.distiller import Distiller, Job, Place
from adpa.stages.distill.objective import collate, micro_loss
from adpa.stages.distill.settings import Distill
from adpa.stages.distill.training import NotFinite, Selection
from adpa.stages.teacher_cache.run import Request, plan

PAIRS = 16


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    d = tmp_path_factory.mktemp("distiller")
    st = Store(d / "store")
    teacher, student = (tiny_world.init_model(st, tiny_world.V3, role, 0) for role in ("teacher", "student"))
    recipe = d / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "unit", "models": {"teacher": str(teacher), "reference": str(student), "student": str(student)},
        "data": {"source": str(tiny_world.dataset(st, tiny_world.V3, "train", 0)), "format": "strings", "limit": PAIRS,
                 "holdout": 0},
        "teacher_cache": {"backend": "hf", "k": 4, "max_length": 32, "max_new_tokens": 12},
        "distill": {"lr": 1e-3, "sft_lr": 1e-3, "batch_pairs": 4}}))
    r = load_recipe(str(recipe))
    said = []
    orchestrate.teacher_cache(r, st, say=said.append)
    models = {role: resolve(getattr(r.models, role)) for role in ("teacher", "reference", "student")}
    return {"store": st, "recipe": r, "init": models["student"], "dir": d, "said": said,
            "keys": plan(Request(models, r.data, r.teacher_cache))}


def test_stage_one_says_where_it_is_over_its_artifacts(unit):
    """issue 27 item 7: one overall progress for stage one's five artifacts, besides each one's own."""
    overall = [ln.split(" (")[0] for ln in unit["said"] if ln.startswith("stage one [")]
    assert overall == ["stage one [1/5] teacher-topk", "stage one [2/5] seq-logp", "stage one [3/5] seq-logp",
                       "stage one [4/5] generations", "stage one [5/5] advantage"]


def distiller(unit, run_dir, loss="dckd", store=None, resume=False, **settings) -> Distiller:
    s = Distill(loss=loss, **({"lr": 1e-3, "sft_lr": 1e-3, "batch_pairs": 4} | settings))
    return Distiller(store or unit["store"], Job(loss, unit["init"], s, unit["keys"]),
                     Place(run_dir, resume=resume, say=silent))


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("loss", ["dckd", "adpa", "dpo"])
def test_a_step_over_micro_batches_is_the_plain_step_over_all_its_pairs(unit, tmp_path, loss):
    """A token budget that splits the step's 8 pairs into several micro-batches, each weighted by its share,
    gives the optimizer the clipped gradient of one backward pass over all 8; the record holds its loss."""
    run = distiller(unit, tmp_path / "run", loss, batch_pairs=8, token_budget=60, max_grad_norm=0.5)
    run.check()
    run.setup()
    plain = copy.deepcopy(run.model)
    step, n_step, micro, _ = next(run._batches())
    assert n_step == 8 and len(micro) > 2
    applied = {}
    run.opt.register_step_pre_hook(lambda *_: applied.update({n: p.grad.clone() for n, p in run.model.named_parameters()}))
    rec = run.step(step, micro, n_step)

    pairs = next(run.stream.steps(1))[1]
    value, _ = micro_loss(plain, OutputLayer(plain, run.vocab), collate(pairs, loss, run.pad), loss, run.settings)
    value.backward()
    norm = torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
    assert rec["loss"] == pytest.approx(value.item(), rel=1e-5)
    assert rec["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
    assert rec["pairs"] == 8 and rec["step"] == 1 and rec["lr"] == pytest.approx(1e-3 / 2)  # warm-up step 1 of 1
    scale = max(float(p.grad.abs().max()) for p in plain.parameters())
    for n, p in plain.named_parameters():
        torch.testing.assert_close(applied[n], p.grad, rtol=1e-4, atol=1e-5 * scale)
    assert any(not torch.equal(a, b) for a, b in zip(run.model.parameters(), plain.parameters()))  # it stepped


@pytest.mark.parametrize("loss", ["sft", "kd", "dpo", "dckd", "adpa", "adpa+"])
def test_every_loss_trains_4_steps_publishes_and_is_reused(unit, tmp_path, monkeypatch, loss):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    runs = orchestrate.distill(unit["recipe"], unit["store"], loss, output=out, say=silent)
    final = runs[-1]  # (adpa+'s first step is the dckd student, built by that case when it ran first)
    assert final.status == "built"
    assert final.summary["steps"] == PAIRS // 4 and final.summary["pairs_per_epoch"] == PAIRS
    records = [ln for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    assert (out / "model" / "model.safetensors").exists() and (out / "loss.png").exists()
    assert not (out / "checkpoints").exists()
    again = orchestrate.distill(unit["recipe"], unit["store"], loss, output=out, say=silent)
    assert [r.status for r in again] == ["reused"] * len(runs) and again[-1].key == final.key


def test_a_chains_first_step_is_the_plain_student_of_its_own_settings(unit, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = copy.copy(unit["recipe"])
    r.per_loss = {"dckd": {"lr": 5e-4}, "adpa+": {"lr": 2e-3, "gamma": 0.5}}
    first, second = orchestrate.distill(r, unit["store"], "adpa+", output=tmp_path / "chain", say=silent)
    plain = orchestrate.distill(r, unit["store"], "dckd", output=tmp_path / "dckd", say=silent)[0]
    assert plain.status == "reused" and plain.key == first.key  # the DCKD half: dckd's entry, one student
    inputs = [unit["store"].manifest(t.key)["inputs"] for t in (first, second)]
    assert inputs[0]["settings"]["lr"] == 5e-4 and inputs[0]["loss"] == "dckd"
    assert inputs[1]["settings"]["lr"] == 2e-3 and inputs[1]["settings"]["gamma"] == 0.5
    # the adpa step on the DCKD student's states is one student, whatever the run is called
    job = Job("adpa", resolve(str(first.model_dir)), r.distill_for("adpa+"), inputs[1]["caches"])
    assert inputs[1]["loss"] == "adpa" and Distiller(unit["store"], job, Place(tmp_path / "x", say=silent)).check() == second.key


def test_default_run_folders_are_named_by_the_students_key_and_never_replace_another_run(unit, tmp_path, monkeypatch):
    """issue 27 item 5: `runs/RECIPE-LOSS` ignored data and settings, so a rerun with another lr replaced the
    earlier run's model/ and metrics.jsonl. Each run gets runs/RECIPE-LOSS-KEY8; the same inputs find their own."""
    monkeypatch.chdir(tmp_path)
    r = copy.copy(unit["recipe"])
    r.per_loss = {"sft": {"sft_lr": 7e-4}}  # learning rates no other test trains with: both students are built here
    a = orchestrate.distill(r, unit["store"], "sft", say=silent)[0]
    r.per_loss = {"sft": {"sft_lr": 3.5e-4}}
    b = orchestrate.distill(r, unit["store"], "sft", say=silent)[0]
    assert a.key != b.key and a.run_dir != b.run_dir and a.status == b.status == "built"
    lrs = []
    for t in (a, b):
        assert t.run_dir == Path("runs") / f"unit-sft-{t.key.rsplit('-', 1)[1][:8]}"
        lrs.append([json.loads(ln)["lr"] for ln in (t.run_dir / "metrics.jsonl").read_text().splitlines()])
    assert len(lrs[0]) == 4 and lrs[1] == pytest.approx([x / 2 for x in lrs[0]])  # each folder its own run
    assert {p.name for p in (tmp_path / "runs").iterdir()} == {a.run_dir.name, b.run_dir.name}
    again = orchestrate.distill(r, unit["store"], "sft", say=silent)[0]
    assert again.status == "reused" and again.run_dir == b.run_dir
    chain = orchestrate.distill(r, unit["store"], "adpa+", say=silent)
    assert [t.run_dir.name.rsplit("-", 1)[0] for t in chain] == ["unit-dckd", "unit-adpa+"]


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(unit, tmp_path, monkeypatch):
    whole = distiller(unit, tmp_path / "whole", seed=3).run()
    # the same student again, in a store that has the caches but not it
    st = linked_store(unit["store"], tmp_path / "store", kinds=("teacher-topk-", "seq-logp-", "advantage-"))
    real_step = Distiller.step

    def step_then_stop(self, step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(self, step, *args)

    monkeypatch.setattr(Distiller, "step", step_then_stop)
    with pytest.raises(KeyboardInterrupt):
        distiller(unit, tmp_path / "cut", store=st, seed=3, save_every=2).run()
    monkeypatch.setattr(Distiller, "step", real_step)
    with pytest.raises(ValueError, match="pass --resume"):
        distiller(unit, tmp_path / "cut", store=st, seed=3, save_every=2).run()
    resumed = distiller(unit, tmp_path / "cut", store=st, resume=True, seed=3, save_every=2).run()
    assert resumed.status == "resumed" and resumed.summary["steps_this_run"] == 2
    # save_every is not in the key: the same student, trained again from step 2, with the same weights
    assert resumed.key == whole.key
    from safetensors.torch import load_file
    a, b = (load_file(str(p / "model" / "model.safetensors")) for p in (tmp_path / "whole", tmp_path / "cut"))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_diverging_run_stops_before_the_step_is_applied(unit, tmp_path):
    run = distiller(unit, tmp_path / "run", lr=1e30, max_grad_norm=0.0)
    with pytest.raises(NotFinite, match="nothing was published"):
        run.run()
    assert not (tmp_path / "run" / "model").exists()


def test_selection_keeps_the_best_state_under_its_metric():
    model = torch.nn.Linear(2, 1)
    sel = Selection("chosen_nll")
    for step, nll in ((0, 2.0), (1, 1.0), (2, 1.5)):
        with torch.no_grad():
            model.weight.fill_(step)
        sel.offer(step, {"chosen_nll": nll}, model)
    assert sel.step == 1 and float(sel.state["weight"][0, 0]) == 1.0
    assert Selection.from_extra("chosen_nll", sel.as_extra()).value == 1.0
    last = Selection("last")
    last.offer(0, {"reward": 1.0}, model)
    assert last.as_extra() is None


def test_push_to_hub_sends_the_runs_student_and_card_in_one_commit(unit, tmp_path, monkeypatch):
    """issue 27 item 4: `adpa push-to-hub RUN REPO`, up to the requests it sends (a local server answers the
    hub's API; no hub is reachable here): the repository created, every file of model/ committed once, with
    the token, the model card's YAML metadata intact; a folder that is no finished run is refused first."""
    from fake_hub import COMMIT, FakeHub
    from adpa.pipeline.hub import PushRefused, push
    monkeypatch.chdir(tmp_path)
    run = orchestrate.distill(unit["recipe"], unit["store"], "dckd", output=tmp_path / "run", say=silent)[0]
    with pytest.raises(PushRefused, match="not a distill run folder"):
        push(tmp_path, "me/student", token="hf_test")
    with pytest.raises(PushRefused, match="repository 'me/stu dent'"):
        push(run.run_dir, "me/stu dent", token="hf_test")
    with FakeHub() as hub:
        monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", hub.url)
        info = push(run.run_dir, "me/student", private=True, token="hf_test")
    assert info.oid == COMMIT  # the commit the server answered
    assert hub.repos["me/student"]["private"] is True
    sent = hub.repos["me/student"]["files"]
    model = run.run_dir / "model"
    assert sent == {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}  # every file, byte for byte
    card = sent["README.md"].decode()
    assert card.startswith("---\n") and "tags: [adpa, distillation, preference-alignment]" in card and run.key in card
    # (huggingface_hub 2.4 also asks /api/agent-harnesses, without the token, whatever the command)
    calls = [(r["path"].split("?")[0], r["headers"].get("authorization")) for r in hub.requests
             if not r["path"].startswith("/api/agent-harnesses")]
    assert calls == [(p, "Bearer hf_test") for p in ("/api/repos/create", "/api/validate-yaml",
                                                       "/api/models/me/student/preupload/main",
                                                       "/api/models/me/student/commit/main")]


def test_a_student_of_another_tokenizer_trains_from_the_unchanged_cache(unit, tmp_path):
    """issue 29: the world's caches (its word-level tokenizer) train a student whose tokenizer reads two digits
    at once, with distill.cross_tokenizer; without it the cache is refused in one line that says how."""
    from adpa.stages.distill.caches import CacheRefused
    st = unit["store"]
    init = resolve(str(tiny_world.init_model(st, tiny_world.V3, "student", 0, paired=True)))
    assert any(ln.startswith("vocabulary table vocab-") for ln in unit["said"])

    def run(loss, **settings):
        s = Distill(loss=loss, **({"lr": 1e-3, "sft_lr": 1e-3, "batch_pairs": 4} | settings))
        return Distiller(st, Job(loss, init, s, unit["keys"]), Place(tmp_path / loss, say=silent))

    with pytest.raises(CacheRefused, match="another vocabulary .* --set distill.cross_tokenizer=true"):
        run("dckd").check()
    with pytest.raises(CacheRefused, match="cross_tokenizer trains sft, kd, dckd, adpa; loss dpo"):
        run("dpo", cross_tokenizer=True).check()
    other = tmp_path / "other-template"  # the same student under another chat template: its own rendering differs
    shutil.copytree(init.source, other)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(other)
    tok.chat_template = tok.chat_template.replace("{{ m['role'] }}", "{{ m['role'] }} {{ m['role'] }}").replace(
        "<|im_start|>assistant\n", "<|im_start|>assistant assistant\n")
    tok.save_pretrained(other)
    s = Distill(loss="dckd", cross_tokenizer=True, batch_pairs=4)
    with pytest.raises(CacheRefused, match="rendered with another chat template than the student's .* re-renders it"):
        Distiller(st, Job("dckd", resolve(str(other)), s, unit["keys"]), Place(tmp_path / "o", say=silent)).check()
    # with the recipe's data (the cache's own), adpa distill re-renders each conversation in the student's template
    r = unit["recipe"]
    models = {role: resolve(getattr(r.models, role)) for role in ("teacher", "reference")} | {"student": resolve(str(other))}
    conv = orchestrate.conversations(r, st, models, unit["keys"])
    assert conv is not None and len(conv.prompts) == PAIRS
    assert orchestrate.conversations(r, st, models | {"student": init}, unit["keys"]) is None  # the cache's template
    re = Distiller(st, Job("dckd", resolve(str(other)), s, unit["keys"], conversations=conv), Place(tmp_path / "o2", say=silent))
    re.check()
    bridge, data = re._bridge(), [json.loads(ln) for ln in Path(r.data.source).read_text().splitlines()]
    from adpa.artifacts import ArtifactReader
    for row in ArtifactReader(st.location(unit["keys"]["teacher_topk"])):
        messages = [{"role": "user", "content": data[row.input_index]["prompt"]}]
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        x = bridge.row(row)
        assert list(x.token_ids[:x.prompt_len]) == list(prompt) and x.aligned.all()
        text = tok.decode(x.token_ids[x.prompt_len:-1]).replace(" ", "")
        assert text == data[row.input_index][row.side].replace(" ", "")[:len(text)]  # the response (maybe cut)
    assert re.run().status == "built"
    limited = copy.deepcopy(r)
    limited.data.limit = PAIRS - 1
    with pytest.raises(ValueError, match="re-rendering reads their messages from the recipe's data, which is not theirs"):
        orchestrate.conversations(limited, st, models, unit["keys"])
    for loss in ("sft", "dckd", "adpa"):
        t = run(loss, cross_tokenizer=True).run()
        assert t.status == "built" and t.summary["steps"] == PAIRS // 4
        records = [json.loads(ln) for ln in (tmp_path / loss / "metrics.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r["loss"]) for r in records)
        if loss != "sft":  # each two-digit token starts where a teacher token does: every position aligned
            assert all(r["aligned_share"] == 1 and 0 < r["matched_mass"] <= 1 for r in records)
            card = (tmp_path / loss / "model" / "README.md").read_text()
            mean = np.mean([r["matched_mass"] for r in records])
            assert t.summary["alignment"]["matched_mass"] == pytest.approx(mean, abs=1e-4)
            assert f"{t.summary['alignment']['matched_mass']:.4f} of the teacher's probability mass" in card
    chain = copy.deepcopy(unit["recipe"])
    chain.distill.cross_tokenizer = True
    with pytest.raises(ValueError, match="adpa\\+ trains on states its first student generates"):
        orchestrate.distill(chain, st, "adpa+", output=tmp_path / "chain", say=silent)
    keys = {run("dckd", cross_tokenizer=True).check(), run("dckd", cross_tokenizer=True, uld_weight=0.5).check()}
    assert len(keys) == 2  # the alignment's settings are the student's: another weight, another student


def test_push_and_pull_carry_a_caches_vocabulary_table(unit, tmp_path):
    """A cache pushed to a shared store takes its tokenizer's vocabulary table along; pulling the cache fetches
    the table beside it, verified, so a student of another tokenizer can read the pulled cache."""
    from typer.testing import CliRunner

    from adpa.pipeline.cli import app
    from adpa.schemas.vocab import vocab_key
    from adpa.stages.common.vocab_artifact import load_vocab
    key = unit["keys"]["teacher_topk"]
    fp = unit["store"].manifest(key)["inputs"]["render"]["tokenizer"]
    shared, mine = tmp_path / "shared", tmp_path / "mine"
    pushed = CliRunner().invoke(app, ["cache", "push", key, str(shared), "--store", str(unit["store"].root)])
    assert pushed.exit_code == 0 and f"{vocab_key(fp)} (its vocabulary table)" in pushed.output, pushed.output
    pulled = CliRunner().invoke(app, ["cache", "pull", str(shared / key), "--store", str(mine)])
    assert pulled.exit_code == 0 and f"pulled and verified {vocab_key(fp)} (its vocabulary table)" in pulled.output
    assert load_vocab(Store(mine), fp, "pulled").pieces == load_vocab(unit["store"], fp, "local").pieces
    alone = tmp_path / "alone"  # a shared store without the table: the cache still pulls, the table is named
    shutil.copytree(shared / key, alone / key)
    lone = CliRunner().invoke(app, ["cache", "pull", str(alone / key), "--store", str(tmp_path / "lone")])
    assert lone.exit_code == 0 and f"no vocabulary table {vocab_key(fp)} pulled" in lone.output


def test_bench_cross_counts_what_the_alignment_keeps(unit):
    """`make bench-cross`'s measure on the unit cache: the matched mass never exceeds the stored top-k mass."""
    from transformers import AutoTokenizer

    from benchmarks.cross_tokenizer import measure, table
    paired = AutoTokenizer.from_pretrained(tiny_world.tokenizer(unit["store"], tiny_world.V3.words, paired=True))
    r = measure(unit["store"], unit["keys"]["teacher_topk"], paired)
    assert r["rows"] == 2 * PAIRS and r["aligned_share"] == 1 and 0 < r["teacher_used"] < 1
    assert 0 < r["one_to_one_share"] < 1 and 0 < r["matched_mass"] <= r["topk_mass"] + 1e-6
    assert "| unit | 17 / 117 |" in table({"unit": r})


def test_a_student_of_another_tokenizer_is_judged_on_its_texts(unit, tmp_path):
    """Evaluation and checkpoint selection of a student of another tokenizer: its greedy answers are decoded and
    the teachers score their text rendered with their own tokenizer (implicit reward); checked against the
    teachers' log-probs of each answer's conversation computed here with transformers alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adpa.pipeline.worlds import sorting_task
    from adpa.stages.evaluate.run import Judge
    from adpa.stages.teacher_cache.run import prepare
    r = unit["recipe"]
    student = resolve(str(tiny_world.init_model(unit["store"], tiny_world.V3, "student", 0, paired=True)))
    models = {"teacher": resolve(r.models.teacher), "reference": resolve(r.models.reference), "student": student}
    tok = AutoTokenizer.from_pretrained(student.source)
    pairs = [e for e in prepare(r.data, r.teacher_cache, tok, False)[0] if hasattr(e, "pair")][:6]
    judge = Judge(models, pairs, tok, ("sorting", sorting_task.reward), r.teacher_cache)
    values, answers = judge.score(AutoModelForCausalLM.from_pretrained(student.source))
    world_tok = AutoTokenizer.from_pretrained(r.models.teacher)
    dpo, ref = (AutoModelForCausalLM.from_pretrained(getattr(r.models, role)) for role in ("teacher", "reference"))

    def logp(model, ids, start):
        with torch.no_grad():
            lq = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        return sum(float(lq[j - 1, ids[j]]) for j in range(start, len(ids)))

    for e, text, got in zip(pairs, answers, values["implicit_reward"]):
        p = world_tok.apply_chat_template(e.pair.prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        full = world_tok.apply_chat_template(e.pair.prompt + [{"role": "assistant", "content": text}], tokenize=True,
                                             return_dict=False)
        full = full[:full.index(world_tok.eos_token_id, len(p)) + 1]
        assert got == pytest.approx(logp(dpo, full, len(p)) - logp(ref, full, len(p)), abs=1e-4)
    assert np.isfinite(values["kl_to_init"]).all() and "reward" in values

    # the teachers answer in their own ids: the same figures, bit for bit, as a Judge of a world student gives them
    same_tok = {e.pair.pair_id: e for e in prepare(r.data, r.teacher_cache, world_tok, False)[0] if hasattr(e, "pair")}
    same = Judge(models | {"student": resolve(r.models.student)}, [same_tok[e.pair.pair_id] for e in pairs], world_tok,
                 ("sorting", sorting_task.reward), r.teacher_cache)
    assert judge.unanswerable(world_tok) is None and judge.view(world_tok).pairs == same.pairs
    got, got_answers = judge.score(dpo, world_tok)
    want, want_answers = same.score(dpo)
    assert got_answers == want_answers and set(got) == set(want) - {"kl_to_init"}  # KL to an init of other ids
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)

    # `adpa eval` of such a recipe: the teachers are rows of its table (KL to the paired init: "-")
    from adpa.stages.evaluate.report import table
    from adpa.stages.evaluate.run import run_eval
    from adpa.stages.teacher_cache.run import Request
    said = []
    results = run_eval(Request(models, r.data, r.teacher_cache), {}, tmp_path / "eval", ("sorting", sorting_task.reward),
                       said.append)
    assert [x.name for x in results] == ["teacher-sft", "teacher-dpo", "student-sft"] and "left out" not in said[0]
    assert ["kl_to_init" in x.metrics for x in results] == [False, False, True]
    rows = table(results, len(results[0].r_seq), "training").splitlines()
    assert rows[2].startswith("teacher-dpo") and rows[2].split()[-1] == "-" and rows[3].split()[-1] != "-"
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher-sft", "teacher-dpo", "student-sft"]
