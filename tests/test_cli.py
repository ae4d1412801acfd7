"""The `adpa` command line as a user runs it: real subprocesses of the installed console script."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adpa.artifacts import Store
from synthetic import produce

ADPA = str(Path(sys.executable).parent / "adpa")
COMMANDS = [[], ["teacher-cache"], ["distill"], ["eval"], ["demo"], ["cache"], ["cache", "ls"], ["cache", "show"],
            ["cache", "verify"], ["cache", "push"], ["cache", "pull"], ["cache", "gc"], ["recipe"], ["recipe", "ls"],
            ["recipe", "show"]]


def adpa(*args, store=None, env=None):
    e = dict(os.environ, **(env or {}))
    if store is not None:
        e["ADPA_STORE"] = str(store)
    return subprocess.run([ADPA, *map(str, args)], capture_output=True, text=True, env=e)


@pytest.mark.slow
@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "adpa")
def test_every_command_has_help(cmd):
    p = adpa(*cmd, "--help")
    assert p.returncode == 0 and "Usage" in p.stdout, p.stderr
    if cmd and cmd != ["cache"] and cmd[0] != "recipe":
        assert "--store" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [["teacher-cache"], ["distill"], ["eval"], ["demo"]], ids=" ".join)
def test_every_stage_command_takes_the_data_flags(cmd, tmp_path):
    """One --data FILE, --format and --limit N on every command that reads pairs: here a file that is not there,
    refused in one line naming it, before a model is built or loaded."""
    p = adpa(*cmd, "-r", "smollm2", "--data", tmp_path / "mine.jsonl", "--format", "strings", "--limit", "3",
             "--output" if cmd[0] in ("eval", "demo") else "--set", tmp_path / "out" if cmd[0] in ("eval", "demo")
             else "data.split=train", store=tmp_path / "store")
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
    assert "mine.jsonl" in p.stderr, p.stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("model-*"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "store"
    m, _ = produce(root, 25)
    return root, m


@pytest.mark.slow
def test_ls_json_lists_complete_and_incomplete(store, tmp_path):
    root, m = store
    (root / ("teacher-topk-" + "b" * 20)).mkdir()
    p = adpa("cache", "ls", "--json", store=root)
    assert p.returncode == 0, p.stderr
    entries = {e["key"]: e for e in json.loads(p.stdout)}
    e = entries[m["key"]]
    assert set(e) >= {"key", "kind", "path", "complete", "rows", "tokens", "bytes", "created"}
    assert e["complete"] is True and e["rows"] == m["totals"]["rows"] and e["tokens"] == m["totals"]["tokens"]
    assert entries["teacher-topk-" + "b" * 20]["complete"] is False
    assert (e["state"], entries["teacher-topk-" + "b" * 20]["state"]) == ("complete", "partial")
    table = adpa("cache", "ls", "--store", root)
    assert m["key"] in table.stdout and " complete " in table.stdout and " partial " in table.stdout


@pytest.mark.slow
def test_show_is_readable(store):
    root, m = store
    p = adpa("cache", "show", m["key"], store=root)
    assert p.returncode == 0, p.stderr
    for text in ("inputs:", "producer:", "pyarrow", "dropped empty_response", f"{m['input_rows']:,} = ", "bytes/token"):
        assert text in p.stdout


@pytest.mark.slow
def test_bad_input_is_one_line_and_nonzero(store, tmp_path):
    root, _ = store
    for args in (["cache", "show", "nonsense"], ["cache", "verify", "teacher-topk-" + "c" * 20],
                 ["cache", "pull", str(tmp_path / "nowhere")], ["cache", "push", "teacher-topk-" + "d" * 20, str(tmp_path)],
                 ["teacher-cache", "--recipe", "nope"], ["teacher-cache", "--set", "teacher_cache.k=0"], ["distill", "--loss", "bogus"],
                 ["distill", "--cache", "nonsense"], ["eval", "--model", "nonsense"],
                 ["cache", "gc", "--older-than", "soon"]):
        p = adpa(*args, store=root)
        assert p.returncode != 0, args
        assert "Traceback" not in p.stderr and p.stderr.strip(), args
        if args[0] != "cache" or args[1] != "gc":
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.slow
def test_gc_removes_only_old_incomplete_leftovers(tmp_path):
    m, _ = produce(tmp_path, 10)
    st = Store(tmp_path)
    old = st.path("teacher-topk-" + "e" * 20)
    old.mkdir()
    (old / "shard-00000.arrow").write_bytes(b"partial")
    past = time.time() - 3 * 86400
    for p in (old / "shard-00000.arrow", old):
        os.utime(p, (past, past))
    fresh = st.path("teacher-topk-" + "f" * 20)
    fresh.mkdir()
    complete = st.path(m["key"])
    os.utime(complete, (past, past))
    p = adpa("cache", "gc", "--older-than", "1d", "--dry-run", store=tmp_path)
    assert "would remove" in p.stdout and old.exists()
    p = adpa("cache", "gc", "--older-than", "1d", store=tmp_path)
    assert p.returncode == 0, p.stderr
    assert not old.exists() and fresh.exists() and complete.exists()
    with st.lock(f"{fresh.name}.r001"):  # a leftover whose producer (rank 1 here) holds its lock is in use
        os.utime(fresh, (past, past))
        adpa("cache", "gc", "--older-than", "0s", store=tmp_path)
        assert fresh.exists()
    adpa("cache", "gc", "--older-than", "0s", store=tmp_path)
    assert not fresh.exists() and complete.exists()
