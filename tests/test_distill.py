"""`adpa distill` as users run it, on real stage-one artifacts of the built-in models (12 pairs).

Outputs a person and transformers can use; reuse of a finished student; a real SIGKILL in the
middle of training, then --resume, ending with the weights of an uninterrupted run; 2 processes
(torchrun, gloo) against 1 at the same global batch; and the caches it must refuse, each in
one line naming the cache.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from adpa.artifacts import Store, verify_artifact
from adpa.schemas.keys import artifact_key
from conftest import write_recipe
from helpers import linked_store, wandb_history
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.orchestrate import teacher_cache as run_teacher_cache
from adpa.stages.common.ranks import silent

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

ADPA = str(Path(sys.executable).parent / "adpa")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
PAIRS = 12


@pytest.fixture(scope="module")
def world(model_store, tmp_path_factory):
    """A store with the built-in models and every stage-one artifact of a 12-pair recipe."""
    d = tmp_path_factory.mktemp("distill")
    st = linked_store(model_store, d / "store")
    recipe = write_recipe(d / "recipe.yaml", "builtin:tiny-pairs", k=8, max_length=128, max_new_tokens=12)
    recipe.write_text(recipe.read_text().replace("data:\n", f"data:\n  limit: {PAIRS}\n"))
    results = run_teacher_cache(load_recipe(str(recipe)), st, say=silent)
    return {"dir": d, "store": st, "recipe": recipe, "keys": {r.kind if r.kind != "seq-logp" else f"seq-{r.role}": r.key
                                                              for r in results}}


def adpa(*args, store, env=None, cwd=None, popen=False):
    e = dict(os.environ, ADPA_STORE=str(store.root), OMP_NUM_THREADS="1", **(env or {}))
    cmd = [ADPA, *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=cwd)
    return subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=cwd)


def fresh_store(world, name):
    return linked_store(world["store"], world["dir"] / name, kinds=("model-", "dataset-", "teacher-topk-",
                                                                    "seq-logp-", "generations-", "advantage-"))


def weights(run_dir):
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def test_distill_writes_a_student_people_and_transformers_can_use(world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    st = fresh_store(world, "outputs")
    run = tmp_path / "run"
    r = adpa("distill", "-r", world["recipe"], "--loss", "dckd", "--set", "distill.batch_pairs=4", "--output", run, store=st)
    assert r.returncode == 0, r.stderr
    assert "dckd     built" in r.stdout
    model = AutoModelForCausalLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    init_dir = next(d for d in st.root.iterdir() if d.name.startswith("model-") and
                    json.loads((d / "manifest.json").read_text())["inputs"].get("layers") == 6)
    init_tok = AutoTokenizer.from_pretrained(init_dir)
    assert tok.chat_template == init_tok.chat_template and tok.get_vocab() == init_tok.get_vocab()
    init = load_file(str(init_dir / "model.safetensors"))
    trained = weights(run)
    assert max((trained[n] - init[n]).abs().max().item() for n in init) > 0  # it learned something
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]

    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["pairs"] == 4 and m["tokens"] > 0 and m["loss"] > 0 for m in metrics)
    assert metrics[0]["lr"] < metrics[1]["lr"]  # warm-up, then cosine decay
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (run / "model" / "README.md").read_text()
    assert world["keys"]["teacher-topk"] in card and "dckd" in card and "alpha" in card
    key = r.stdout.split("student-")[1].split()[0]
    verify_artifact(st.path(f"student-{key}"))

    again = adpa("distill", "-r", world["recipe"], "--loss", "dckd", "--set", "distill.batch_pairs=4", "--output", run, store=st)
    assert again.returncode == 0 and f"complete artifact student-{key} reused" in again.stdout
    elsewhere = adpa("distill", "-r", world["recipe"], "--loss", "dckd", "--set", "distill.batch_pairs=4", "--output",
                     tmp_path / "elsewhere", store=st)
    assert elsewhere.returncode == 0 and "reused" in elsewhere.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "elsewhere" / "model") is not None  # the reused student
    reused = weights(tmp_path / "elsewhere")
    assert reused.keys() == trained.keys() and all(torch.equal(reused[n], trained[n]) for n in trained)


def test_report_to_tensorboard_and_wandb_hold_the_metrics(world, tmp_path):
    """`distill.report_to`: real TensorBoard event files and an offline W&B run, read back with their own
    readers, hold every train scalar of metrics.jsonl at its step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run = tmp_path / "run"
    r = adpa("distill", "-r", world["recipe"], "--loss", "kd", "--set", "distill.batch_pairs=4", "--set",
             "distill.report_to=[tensorboard, wandb]", "--output", run, store=fresh_store(world, "report"),
             env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert r.returncode == 0, r.stderr
    metrics = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    names = [k for k, v in metrics[0].items() if k != "step" and isinstance(v, (int, float))]
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(names)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {f"train/{n}" for n in names}
    history = {row["_step"]: row for row in wandb_history(run)}
    for n in names:
        tb = events.Scalars(f"train/{n}")
        assert [e.step for e in tb] == [m["step"] for m in metrics] == sorted(history)
        assert [e.value for e in tb] == pytest.approx([m[n] for m in metrics], rel=1e-6)  # float32 in the event file
        assert [history[m["step"]][f"train/{n}"] for m in metrics] == [m[n] for m in metrics]


def test_a_lora_student_trains_its_adapters_only_and_loads_merged_and_as_an_adapter(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    st = fresh_store(world, "lora")
    run = tmp_path / "run"
    lora = ["--set", "distill.lora.r=4", "--set", "distill.lora.target_modules=[q_proj, v_proj]"]
    r = adpa("distill", "-r", world["recipe"], "--loss", "dckd", "--set", "distill.batch_pairs=4", "--set",
             "distill.lr=1e-3", *lora, "--output", run, store=st)
    assert r.returncode == 0, r.stderr
    key = r.stdout.split("student-")[1].split()[0]
    m = json.loads((st.path(f"student-{key}") / "manifest.json").read_text())
    assert m["inputs"]["settings"]["lora"] == {"r": 4, "alpha": 32.0, "dropout": 0.05,
                                               "target_modules": ["q_proj", "v_proj"]}
    adapter = m["stats"]["adapter"]
    verify_artifact(st.path(adapter))
    verify_artifact(st.path(f"student-{key}"))
    init_dir = next(d for d in st.root.iterdir() if d.name.startswith("model-") and
                    json.loads((d / "manifest.json").read_text())["inputs"].get("layers") == 6)
    init, merged = load_file(str(init_dir / "model.safetensors")), weights(run)
    assert merged.keys() == init.keys()  # a plain transformers model: no LoRA tensors left
    changed = {n for n in init if not torch.equal(init[n], merged[n])}
    assert changed and all(".q_proj." in n or ".v_proj." in n for n in changed), sorted(changed)[:5]
    again = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(init_dir), st.path(adapter))
    folded = again.merge_and_unload().state_dict()
    assert max((folded[n] - merged[n]).abs().max().item() for n in changed) <= 1e-6
    assert (run / "adapter" / "adapter_config.json").exists() and not (run / "model" / "adapter_config.json").exists()

    full = adpa("distill", "-r", world["recipe"], "--loss", "dckd", "--set", "distill.batch_pairs=4", "--set",
                "distill.lr=1e-3", "--output", tmp_path / "full", store=st)
    assert full.returncode == 0 and key not in full.stdout  # the LoRA settings are in the key
    bad = adpa("distill", "-r", world["recipe"], "--set", "distill.lora.target_modules=[no_such_proj]", "--output",
               tmp_path / "bad", store=st)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "no_such_proj" in bad.stderr


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(world, tmp_path):
    args = ["distill", "-r", world["recipe"], "--loss", "adpa", "--set", "distill.batch_pairs=2", "--set", "distill.save_every=1"]
    whole = adpa(*args, "--output", tmp_path / "whole", store=fresh_store(world, "whole"))
    assert whole.returncode == 0, whole.stderr

    st = fresh_store(world, "killed")
    run = tmp_path / "killed"
    p = adpa(*args, "--output", run, store=st, popen=True)
    ckpt = run / "checkpoints"
    while p.poll() is None and not any(c.is_dir() and not c.name.endswith(".tmp") for c in
                                       (ckpt.glob("step-*") if ckpt.exists() else [])):
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "model").exists()

    refused = adpa(*args, "--output", run, store=st)
    assert refused.returncode == 1 and "--resume" in refused.stderr

    resumed = adpa(*args, "--output", run, "--resume", store=st)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a, b = weights(tmp_path / "whole"), weights(run)
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-6
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, PAIRS // 2 + 1))  # each step logged once across the kill


def test_two_processes_match_one(world, tmp_path):
    args = ["distill", "-r", world["recipe"], "--loss", "dckd", "--set", "distill.batch_pairs=4", "--set", "distill.lr=1e-4"]
    one = adpa(*args, "--output", tmp_path / "one", store=fresh_store(world, "one"))
    assert one.returncode == 0, one.stderr
    st = fresh_store(world, "two")
    e = dict(os.environ, ADPA_STORE=str(st.root), OMP_NUM_THREADS="1")
    two = subprocess.run([TORCHRUN, "--nproc_per_node", "2", "--master_port", "29517", "--no-python", ADPA, *map(str, args),
                          "--output", tmp_path / "two"], capture_output=True, text=True, env=e)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    init_change = max((a[n]).abs().max().item() for n in a)
    assert init_change > 0
    assert max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-5
    la = [json.loads(ln)["loss"] for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(ln)["loss"] for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-5)


def test_fsdp_on_two_processes_killed_and_resumed_ends_with_the_weights_of_one(world, tmp_path):
    """distill.fsdp under torchrun (gloo, 2 processes, FSDP2 shards): a real SIGKILL of the whole launch after
    its first checkpoint (torch.distributed.checkpoint), then --resume; the exported student and every step's
    loss equal a plain 1-process run's."""
    args = ["distill", "-r", world["recipe"], "--loss", "adpa", "--set", "distill.batch_pairs=2", "--set",
            "distill.lr=1e-4"]
    one = adpa(*args, "--output", tmp_path / "one", store=fresh_store(world, "fsdp-one"))
    assert one.returncode == 0, one.stderr
    st = fresh_store(world, "fsdp-two")
    run = tmp_path / "two"
    e = dict(os.environ, ADPA_STORE=str(st.root), OMP_NUM_THREADS="1")
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", "29531", "--no-python", ADPA, *map(str, args), "--set",
           "distill.fsdp=true", "--set", "distill.save_every=1", "--output", str(run)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    ckpt = run / "checkpoints"
    while p.poll() is None and not any(c.is_dir() and not c.name.endswith(".tmp") for c in
                                       (ckpt.glob("step-*") if ckpt.exists() else [])):
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be killed"
    launch = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]  # workers: own groups
    for proc in launch:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(launch)
    assert not (run / "model").exists() and any((c / "dcp").is_dir() for c in ckpt.glob("step-*"))
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=e)
    assert resumed.returncode == 0, [ln for ln in resumed.stderr.splitlines() if "error" in ln.lower()][:5]
    assert "resuming from" in resumed.stdout
    a, b = weights(tmp_path / "one"), weights(run)
    assert a.keys() == b.keys() and max((a[n] - b[n]).abs().max().item() for n in a) <= 1e-5
    la = [json.loads(ln)["loss"] for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lb) == PAIRS // 2 and la == pytest.approx(lb, rel=1e-5)  # each step logged once across the kill


def _tampered_copy(st: Store, key: str, edit) -> str:
    """A copy of an artifact whose manifest `edit` changes, under the key its new inputs hash to."""
    m = json.loads((st.path(key) / "manifest.json").read_text())
    edit(m)
    m["inputs"] = dict(m["inputs"], tampered=True)
    m["key"] = artifact_key(m["kind"], m["inputs"], m["shard_schema"])
    d = st.path(m["key"])
    shutil.copytree(st.path(key), d)
    (d / "manifest.json").write_text(json.dumps(m))
    return m["key"]


def test_refuses_caches_that_cannot_train_this_student(world, tmp_path):
    st = fresh_store(world, "refuse")
    recipe = world["recipe"]
    topk = world["keys"]["teacher-topk"]

    def run(*extra, recipe=recipe):
        r = adpa("distill", "-r", recipe, "--output", tmp_path / "r", *extra, store=st)
        assert r.returncode == 1 and not (tmp_path / "r" / "model").exists()
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr

    newer = _tampered_copy(st, topk, lambda m: m["shard_schema"].update(version="9.0"))
    err = run("--loss", "kd", "--cache", f"teacher_topk={newer}")
    assert newer in err and "version 9.0 is not supported" in err

    gens = world["keys"]["generations"]
    def as_seq_logp(m):  # noqa: E306 - a generations artifact relabelled: no realized_logp column
        m["kind"] = "seq-logp"
    fake = _tampered_copy(st, gens, as_seq_logp)
    err = run("--loss", "dpo", "--cache", f"student_logp={fake}")
    assert fake in err and "no realized_logp column" in err

    err = run("--loss", "kd", "--cache", "teacher_topk=teacher-topk-00000000000000000000")
    assert "teacher-topk-00000000000000000000" in err and "not complete" in err

    # other data (here: fewer rows) than stage one ran on: the error names the data and the command to run
    err = run("--loss", "kd", "--limit", "3")
    assert "stage one has not run on data" in err and "(first 3 rows)" in err, err
    assert "adpa teacher-cache -r" in err and "--set data.limit=3" in err, err

    # a student whose tokenizer has one more token than the one the cache was made with
    from transformers import AutoTokenizer
    init_dir = next(d for d in st.root.iterdir() if d.name.startswith("model-") and
                    json.loads((d / "manifest.json").read_text())["inputs"].get("layers") == 6)
    other = tmp_path / "other-student"
    shutil.copytree(init_dir, other)
    (other / "manifest.json").unlink()
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<extra-token>"])
    tok.save_pretrained(other)
    raw = Path(recipe).read_text().replace("builtin:smollm2-135m-instruct-l6", str(other))
    (tmp_path / "other.yaml").write_text(raw)
    err = run("--loss", "kd", "--cache", f"teacher_topk={topk}", recipe=tmp_path / "other.yaml")
    assert topk in err and "another vocabulary" in err and "49153" in err


def test_vllm_loads_a_distilled_student(world, tmp_path):
    """The saved folder is what vLLM serves: its greedy tokens equal transformers' on the same prompt."""
    pytest.importorskip("vllm")
    st = fresh_store(world, "vllm")
    run = tmp_path / "run"
    r = adpa("distill", "-r", world["recipe"], "--loss", "sft", "--output", run, store=st)
    assert r.returncode == 0, r.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adpa.stages.common.models import resolve
    from adpa.stages.teacher_cache.backends import EngineSpec
    from adpa.stages.teacher_cache.backends.vllm import VLLMBackend
    tok = AutoTokenizer.from_pretrained(run / "model")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 4 + 4?"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    engine = VLLMBackend(EngineSpec(resolve(str(run / "model")), tok, len(tok), "float32", "cpu", 1024,
                                    max_model_len=256, max_logprobs=4))
    try:
        (got, _), = engine.generate([prompt], 8)
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(run / "model", dtype=torch.float32)
    want = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, len(prompt):].tolist()
    assert got[:len(want)] == want[:len(got)] and len(got) > 0


def test_a_new_loss_is_its_function_and_its_declaration(world, tmp_path, monkeypatch):
    """A toy loss added as a contributor would (one function, one declaration) is checked by the recipe,
    streamed, trained, logged, plotted, carded, keyed and listed by the demo with no other change."""
    from adpa.pipeline import demo, orchestrate
    from adpa.stages.distill import losses as L

    def kl_rejected(b, d):
        r = b.parts["rejected"]
        kl = L.kd_loss(r.topk_logp, r.tail_logp, b.at_ids["rejected"], r.pair, b.n)
        return kl, {"kl_rejected": kl}

    monkeypatch.setitem(L.LOSSES, "kd-rejected", L.Loss(
        "kd-rejected", "L = (1/|y_l|) sum_t KL(pi_dpo || pi_theta) on rejected responses",
        {"rejected": L.Reads("teacher_topk", "rejected", ("topk",))}, kl_rejected, ("kl_rejected",)))
    recipe = load_recipe(str(world["recipe"]), ["distill.loss=kd-rejected", "distill.batch_pairs=4"])
    st = fresh_store(world, "toy")
    (run,) = orchestrate.distill(recipe, st, output=tmp_path / "run", say=silent)
    assert run.status == "built" and run.loss == "kd-rejected"
    metrics = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["kl_rejected"] == m["loss"] > 0 for m in metrics)
    assert all(m["grad_norm"] > 0 for m in metrics)
    assert (tmp_path / "run" / "loss.png").exists()
    assert "on rejected responses" in (tmp_path / "run" / "model" / "README.md").read_text()
    manifest = verify_artifact(st.path(run.key))
    assert manifest["inputs"]["caches"] == {"teacher_topk": world["keys"]["teacher-topk"]}
    assert not {"alpha", "gamma", "beta"} & set(manifest["inputs"]["settings"])
    assert "kd-rejected" in demo.default_methods()


class _Planted:
    def __reduce__(self):
        return (os.system, ("touch planted-code-ran",))


def test_a_planted_checkpoint_is_refused_without_running_its_code(tmp_path, monkeypatch):
    """Checkpoints load as data only (weights_only): a pickle that would run code is refused, and nothing runs."""
    from adpa.stages.common.ranks import Ranks
    from adpa.stages.distill import checkpoints
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "run" / "checkpoints" / "step-00000001"
    d.mkdir(parents=True)
    torch.save({"key": "k", "step": 1, "evil": _Planted()}, d / "state.pt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        checkpoints.load(d, checkpoints.Trainee("k", None, None, None, Ranks()))
    assert not (tmp_path / "planted-code-ran").exists()


def test_a_planted_sharded_checkpoint_is_refused_without_running_its_code(tmp_path, monkeypatch):
    """A sharded (FSDP) checkpoint's DCP `.metadata` is a pickle: only checkpoint records come out of it."""
    import pickle

    from adpa.stages.distill.sharding import _reader
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dcp").mkdir()
    (tmp_path / "dcp" / ".metadata").write_bytes(pickle.dumps(_Planted()))
    with pytest.raises(pickle.UnpicklingError, match="not checkpoint data"):
        _reader(tmp_path / "dcp").read_metadata()
    assert not (tmp_path / "planted-code-ran").exists()


def test_a_second_run_into_a_folder_in_use_refuses_in_one_line(world, tmp_path):
    """Two `adpa distill` into one --output never interleave metrics.jsonl: while a process holds the run
    folder (here this test, by the same lock a running distill holds), another refuses at once, naming it."""
    from adpa.artifacts.fsutil import exclusive_folder
    st, run = fresh_store(world, "busy"), tmp_path / "run"
    with exclusive_folder(run, "run folder"):
        r = adpa("distill", "-r", world["recipe"], "--loss", "sft", "--output", run, store=st)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"run folder {run} is in use by another process (pid {os.getpid()})" in r.stderr
    assert not (run / "metrics.jsonl").exists()
    r = adpa("distill", "-r", world["recipe"], "--loss", "sft", "--output", run, store=st)
    assert r.returncode == 0 and "sft      built" in r.stdout, r.stdout + r.stderr


def _student_dirs(st: Store) -> list[Path]:
    return [d for d in st.root.iterdir() if d.name.startswith("student-") and (d / "manifest.json").exists()]


def test_a_diverging_run_stops_at_the_step_and_publishes_nothing(world, tmp_path):
    """3a: lr 1e30 made every weight NaN from step 3, exit 0, published as a complete student."""
    st = fresh_store(world, "diverge")
    r = adpa("distill", "-r", world["recipe"], "--loss", "kd", "--set", "distill.batch_pairs=2", "--set",
             "distill.lr=1e30", "--set", "distill.save_every=1", "--output", tmp_path / "run", store=st)
    assert r.returncode == 1, r.stdout[-2000:]
    line = r.stderr.strip().splitlines()[-1]  # after the progress bar
    assert line.startswith("adpa: error: step ") and ("is nan" in line or "is inf" in line), r.stderr[-2000:]
    assert "learning rate 1e+30" in line and "nothing was published" in line, line
    assert not _student_dirs(st) and not (tmp_path / "run" / "model").exists()
    kept = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    state = torch.load(kept[-1] / "state.pt", weights_only=True)["model"]
    assert all(torch.isfinite(t).all() for t in state.values())  # the last checkpoint is a finite one


def test_run_folders_are_the_users_copies_and_a_damaged_student_is_never_reused(world, tmp_path):
    """3c: run folders were hard links into the store, so a user's save_pretrained over one changed the shared
    artifact; 4a: --output at an existing folder of the user's deleted what was under its model/ and
    checkpoints/; 3b: a truncated student in the store was 'reused' into the run folder."""
    from transformers import AutoModelForCausalLM
    st = fresh_store(world, "folders")
    args = ["distill", "-r", world["recipe"], "--loss", "sft", "--set", "distill.batch_pairs=4"]
    first = adpa(*args, "--output", tmp_path / "a", store=st)
    assert first.returncode == 0, first.stderr
    d, = _student_dirs(st)
    assert all(not (f.stat().st_mode & 0o222) for f in d.iterdir())  # published artifacts are read-only
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model")
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path / "a" / "model")  # what users do with their run folder
    verify_artifact(d)  # the store's copy is untouched

    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights-i-care-about.bin").write_bytes(b"precious")
    (mine / "notes.txt").write_text("mine")
    refused = adpa(*args, "--output", mine, store=st)
    assert refused.returncode == 1 and "--overwrite" in refused.stderr.strip().splitlines()[-1], refused.stderr
    assert sorted(p.name for p in mine.rglob("*")) == ["model", "notes.txt", "weights-i-care-about.bin"]
    ok = adpa(*args, "--output", mine, "--overwrite", store=st)
    assert ok.returncode == 0 and "reused" in ok.stdout, ok.stderr
    assert (mine / "notes.txt").read_text() == "mine" and (mine / "model" / "model.safetensors").exists()
    other = adpa(*args, "--set", "distill.sft_lr=1e-4", "--output", mine, store=st)
    assert other.returncode == 1 and "holds the output of student-" in other.stderr

    os.truncate(d / "model.safetensors", 1000)
    again = adpa(*args, "--output", tmp_path / "b", store=st)
    assert again.returncode == 1 and "reused" not in again.stdout
    assert f"complete artifact {d.name} is damaged" in again.stderr and f"adpa cache repair {d.name}" in again.stderr
    assert not (tmp_path / "b" / "model").exists()


def test_a_kill_after_the_last_step_resumes_with_nothing_to_retrain(world, tmp_path):
    """4b: SIGKILL once the end checkpoint is written (saving or publishing the student), then --resume: all
    steps were retrained; 4c: a torn last metrics line blocked --resume naming no file; 4f: resuming from the
    final step's checkpoint crashed in the summary table."""
    st = fresh_store(world, "end")
    run = tmp_path / "run"
    args = ["distill", "-r", world["recipe"], "--loss", "sft", "--set", "distill.batch_pairs=4", "--output", run]
    p = adpa(*args, store=st, popen=True)
    end = run / "checkpoints" / "step-00000003"
    while p.poll() is None and not end.is_dir():
        time.sleep(0.01)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not _student_dirs(st)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a write torn by the kill (or a full disk)
    resumed = adpa(*args, "--resume", store=st)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "(step 3 of 3)" in resumed.stdout
    assert f"{run / 'metrics.jsonl'}: dropped its torn last line" in resumed.stdout + resumed.stderr
    row = next(ln for ln in resumed.stdout.splitlines() if ln.startswith("sft "))
    assert row.split()[:5] == ["sft", "resumed", "3", "12", "0"], row
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    d, = _student_dirs(st)
    verify_artifact(d)
