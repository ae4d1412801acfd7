"""`adpa cache export --text TOKENIZER` (issue 27, item 9): the decoded prompt and response beside the ids, only
with the tokenizer the artifact was made with."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from adpa.artifacts import Store
from adpa.pipeline import orchestrate
from adpa.pipeline.recipe import load_recipe
from adpa.pipeline.worlds import tiny as tiny_world
from adpa.stages.common.ranks import silent

ADPA = str(Path(sys.executable).parent / "adpa")
pytestmark = pytest.mark.slow  # the command line, in processes


def test_text_columns_with_the_artifacts_tokenizer_only(tmp_path):
    st = Store(tmp_path / "store")
    teacher, student = (tiny_world.init_model(st, tiny_world.V3, role, 0) for role in ("teacher", "student"))
    data = tiny_world.dataset(st, tiny_world.V3, "train", 0)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "t", "models": {"teacher": str(teacher), "reference": str(student), "student": str(student)},
        "data": {"source": str(data), "format": "strings", "limit": 4, "holdout": 0},
        "teacher_cache": {"backend": "hf", "k": 4, "max_length": 32, "max_new_tokens": 6}}))
    topk = orchestrate.teacher_cache(load_recipe(str(tmp_path / "r.yaml")), st, say=silent)[0].key
    env = dict(os.environ, ADPA_STORE=str(st.root))
    ok = subprocess.run([ADPA, "cache", "export", topk, str(tmp_path / "a.parquet"), "--text", str(student)],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    rows = pq.read_table(tmp_path / "a.parquet").to_pylist()
    first = json.loads(data.read_text().splitlines()[0])
    assert first["prompt"] in rows[0]["prompt"]  # the rendered sequence: the chat template's tokens are in the text
    assert rows[0]["response"].startswith((first["chosen"], first["rejected"]))
    other = tmp_path / "other"
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(student))
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    bad = subprocess.run([ADPA, "cache", "export", topk, str(tmp_path / "b.parquet"), "--text", str(other)],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "is not the artifact's" in bad.stderr
    assert not (tmp_path / "b.parquet").exists()

    # --text table: the vocabulary table stage one put beside the artifact, no tokenizer needed; each top-k id's
    # text too, the same by either route
    ok = subprocess.run([ADPA, "cache", "export", topk, str(tmp_path / "c.jsonl"), "--text", "table"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    by_table = [json.loads(ln) for ln in (tmp_path / "c.jsonl").read_text().splitlines()]
    words = lambda s: "".join(s.split())  # noqa: E731 (a word-level tokenizer without a decoder: spacing differs)
    assert [words(r["response"]) for r in by_table] == [words(r["response"]) for r in rows]
    assert [[[w.strip() for w in p] for p in r["topk_text"]] for r in by_table] == \
           [[[w.strip() for w in p] for p in r["topk_text"]] for r in rows]
    assert len(by_table[0]["topk_text"]) == len(by_table[0]["token_ids"]) - by_table[0]["prompt_len"]
    assert all(len(p) == 4 for p in by_table[0]["topk_text"])
    empty = Store(tmp_path / "empty")  # the artifact alone, without its table
    import shutil
    shutil.copytree(st.root / topk, empty.root / topk)
    bad = subprocess.run([ADPA, "cache", "export", topk, str(tmp_path / "d.jsonl"), "--text", "table"],
                         capture_output=True, text=True, env=dict(env, ADPA_STORE=str(empty.root)))
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "no vocabulary table" in bad.stderr, bad.stderr
    assert not (tmp_path / "d.jsonl").exists()
