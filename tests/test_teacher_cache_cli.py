"""`adpa teacher-cache` as users run it: bad rows, --strict, vocabulary mismatch, hub recipes offline,
and a real SIGKILL in the middle of a run followed by a resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adpa.artifacts import ArtifactReader, Store, verify_artifact
from conftest import write_recipe

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

ADPA = str(Path(sys.executable).parent / "adpa")
U = lambda t: {"role": "user", "content": t}  # noqa: E731
A = lambda t: {"role": "assistant", "content": t}  # noqa: E731


def adpa(*args, store, env=None, **kw):
    e = dict(os.environ, ADPA_STORE=str(store.root), **(env or {}))
    return subprocess.run([ADPA, *map(str, args)], capture_output=True, text=True, env=e, **kw)


def good(i):
    return {"id": f"g{i}", "chosen": [U(f"What is {i} + {i}?"), A(f"{i} + {i} = {2 * i}.")],
            "rejected": [U(f"What is {i} + {i}?"), A(f"{i} + {i} = {2 * i + 1}.")]}


BAD = [
    ({"id": "b1", "chosen": [U("Hi"), A("Hello")], "rejected": [U("Hey"), A("Yo")]}, "no_shared_prompt"),
    ({"id": "b2", "chosen": [U("Hi"), A("Same")], "rejected": [U("Hi"), A("Same")]}, "identical_responses"),
    ({"id": "b3", "chosen": [U("Hi"), A("Hello")]}, "missing_field"),
    ({"id": "b4", "chosen": [U("Hi"), A("Hello")], "rejected": "just a string"}, "not_text"),
    ({"id": "b5", "chosen": [U("word " * 400), A("a")], "rejected": [U("word " * 400), A("b")]}, "prompt_too_long"),
]


@pytest.fixture(scope="module")
def bad_rows_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    rows = [good(0), BAD[0][0], good(1), BAD[1][0], BAD[2][0], good(2), BAD[3][0], BAD[4][0], good(3)]
    f = d / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    return f, write_recipe(d / "recipe.yaml", f, k=4, max_length=128, states="chosen")


def test_bad_rows_are_counted_by_reason_in_every_artifact(model_store, bad_rows_file):
    data, recipe = bad_rows_file
    p = adpa("teacher-cache", "--recipe", recipe, "--set", "data.format=messages", store=model_store)
    assert p.returncode == 0, p.stderr
    assert "dropped input rows by reason" in p.stdout
    keys = [line.split()[-1] for line in p.stdout.splitlines() if line.split() and line.split()[-1].count("-") >= 1
            and line.split()[0] in ("teacher-topk", "seq-logp", "advantage")]
    assert len(keys) == 4, p.stdout  # states=chosen: no generations
    want = {reason: 1 for _, reason in BAD}
    for key in keys:
        m = verify_artifact(model_store.path(key))
        assert m["dropped"] == want and m["input_rows"] == 9 and m["rows_used"] == 4
        assert sorted({r.pair_id for r in ArtifactReader(model_store.path(key))}) == ["g0", "g1", "g2", "g3"]
    show = adpa("cache", "show", keys[0], store=model_store)
    assert "dropped no_shared_prompt: 1" in show.stdout and "9 = 4 used + 5 dropped" in show.stdout


def test_strict_stops_at_the_first_bad_row_naming_it(model_store, bad_rows_file):
    _, recipe = bad_rows_file
    p = adpa("teacher-cache", "--recipe", recipe, "--strict", "--set", "teacher_cache.k=5", store=model_store)
    assert p.returncode == 1 and "row 1: no shared prompt" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_a_run_that_would_use_no_row_fails_with_the_drop_counts(model_store, bad_rows_file):
    _, recipe = bad_rows_file
    p = adpa("teacher-cache", "--recipe", recipe, "--set", "teacher_cache.max_length=3", store=model_store)
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "no usable row of 9 (dropped: " in p.stderr and "prompt_too_long" in p.stderr
    assert not [k for k in model_store.keys() if not model_store.is_complete(k)]  # nothing half-made left


def test_a_student_with_another_vocabulary_is_refused_before_any_model_work(model_store, tmp_path, bad_rows_file):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from adpa.pipeline.builtin import resolve_model as resolve
    tok = AutoTokenizer.from_pretrained(resolve("builtin:smollm2-135m-instruct", model_store).source)
    tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    _, recipe = bad_rows_file
    text = Path(recipe).read_text().replace("builtin:smollm2-135m-instruct-l6", str(tmp_path / "student"))
    (tmp_path / "r.yaml").write_text(text)
    before = set(Store(model_store.root).keys())
    p = adpa("teacher-cache", "--recipe", tmp_path / "r.yaml", store=model_store)
    assert p.returncode == 1
    assert "tokenizers differ" in p.stderr and "first differing id 49152" in p.stderr and "<|extra|>" in p.stderr
    assert set(Store(model_store.root).keys()) == before  # nothing was scored


@pytest.mark.parametrize("recipe,model", [("danube3-500m", "HuggingFaceH4/zephyr-7b-beta"),
                                          ("danube2-1.8b", "HuggingFaceH4/zephyr-7b-beta"),
                                          ("llama2-7b", "allenai/tulu-2-dpo-13b")])
@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_the_paper_recipes_fail_fast_offline_naming_the_model(tmp_path, recipe, model, offline):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))  # an empty cache
    env.update({"HF_HUB_OFFLINE": "1"} if offline == "HF_HUB_OFFLINE" else {"HF_ENDPOINT": "http://127.0.0.1:9"})
    for stage in ("teacher-cache", "distill"):
        p = subprocess.run([ADPA, stage, "--recipe", recipe, "--store", str(tmp_path / "store")],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert model in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert ("HF_HUB_OFFLINE" if offline == "HF_HUB_OFFLINE" else "cannot be reached") in p.stderr


def test_sigkill_mid_run_then_resume(model_store, tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(good(i)) for i in range(40)))
    recipe = write_recipe(tmp_path / "recipe.yaml", f, k=4, max_length=128, states="chosen", shard_rows=4)
    store = model_store  # the built models are shared; these outputs have their own keys
    before = set(store.root.glob("teacher-topk-*"))
    env = dict(os.environ, ADPA_STORE=str(store.root))
    p = subprocess.Popen([ADPA, "teacher-cache", "--recipe", str(recipe)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not [d for d in set(store.root.glob("teacher-topk-*")) - before if (d / "shard-000-00001.arrow").exists()]:
        assert time.time() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    (new,) = set(store.root.glob("teacher-topk-*")) - before
    key = new.name
    assert not store.is_complete(key)
    q = adpa("teacher-cache", "--recipe", recipe, store=store)
    assert q.returncode == 0, q.stderr
    assert f"resuming {key} at input row" in q.stdout
    m = verify_artifact(store.path(key))
    rows = sorted((r.input_index, r.side) for r in ArtifactReader(store.path(key)))
    assert rows == [(i, s) for i in range(40) for s in ("chosen", "rejected")] and m["rows_used"] == 40


def _planned_lines(stdout: str) -> dict[str, list[str]]:
    """The dry run's artifact lines by name: [state, tokens, bytes, seconds, key]."""
    names = ("teacher_topk", "reference_logp", "student_logp", "generations", "advantage")
    return {ln.split()[0]: ln.split()[1:] for ln in stdout.splitlines() if ln.split() and ln.split()[0] in names}


def test_a_dry_run_writes_nothing_and_foretells_the_real_runs_rows_tokens_and_bytes(model_store, bad_rows_file):
    """issue 27 item 8: before a large stage one, rows, tokens, what is reused or built, bytes and a time from a
    measured probe; the store is left as it was (the probe writes into a temporary one)."""
    data, recipe = bad_rows_file
    # max_length enters every artifact's key: none of them is in the module's store yet (k would leave seq-logp)
    args = ("teacher-cache", "--recipe", recipe, "--set", "data.format=messages", "--set", "teacher_cache.max_length=120")
    listing = lambda: sorted(str(p.relative_to(model_store.root)) for p in model_store.root.rglob("*")  # noqa: E731
                             if p.suffix != ".lock")
    before = listing()
    dry = adpa(*args, "--dry-run", "--probe-rows", "4", store=model_store)
    assert dry.returncode == 0, dry.stderr
    assert listing() == before
    assert "9 rows, 4 usable (dropped: " in dry.stdout and "probe of 4 rows" in dry.stdout
    planned = _planned_lines(dry.stdout)
    assert set(planned) == {"teacher_topk", "reference_logp", "student_logp", "advantage"}  # states=chosen
    assert all(v[0] == "missing" and float(v[3]) >= 0 for v in planned.values())  # (a fast one prints 0.0 s)
    assert sum(float(v[3]) for v in planned.values()) > 0 and "to build: 4 of 4 artifacts" in dry.stdout

    real = adpa(*args, store=model_store)
    assert real.returncode == 0, real.stderr
    for name, (_, tokens, size, _, key) in planned.items():
        t = model_store.manifest(key)["totals"]  # the planned keys are the ones the real run made
        assert int(tokens.replace(",", "")) == t["tokens"], name  # counted exactly (no generated states here)
        assert abs(int(size.replace(",", "")) - t["bytes"]) <= 0.25 * t["bytes"], (name, size, t["bytes"])
    again = adpa(*args, "--dry-run", store=model_store)
    assert again.returncode == 0 and "probe" not in again.stdout and "nothing to build" in again.stdout
    assert all(v[0] == "complete" for v in _planned_lines(again.stdout).values())
