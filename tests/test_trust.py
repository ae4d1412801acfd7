"""Trusting a store another team (or a crash, or a hostile file) touched: damaged artifacts are named
with their key and repaired, hostile manifests are one-line errors that do not break the store, and
every failure of the CLI is one line (real processes, real files, a real tmpfs for disk full)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifacts import ArtifactReader, Store, StoreError, verify_artifact
from artifacts.shards import ShardError
from artifacts.store import MANIFEST
from helpers import assert_complete_and_exact
from synthetic import produce

ADPA = str(Path(sys.executable).parent / "adpa")
N = 40


def adpa(*args, store=None, timeout=120):
    env = dict(os.environ) | ({"ADPA_STORE": str(store)} if store else {})
    p = subprocess.run([ADPA, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def one_line_error(rc, err, *says):
    assert rc == 1, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("adpa: error: "), err
    assert "Traceback" not in err
    for s in says:
        assert s in err, (s, err)


@pytest.fixture
def built(tmp_path):
    root = tmp_path / "store"
    m, _ = produce(root, N, max_shard_rows=8)
    good = tmp_path / "good"  # another team's store with a sound copy
    shutil.copytree(root, good)
    return Store(root), m, good


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)


def test_a_flipped_byte_is_found_on_reuse_named_and_repaired_by_pull(built):
    st, m, good = built
    key, shard = m["key"], st.path(m["key"]) / m["shards"][1]["file"]
    flip_a_byte(shard)
    with pytest.raises(StoreError, match=f"complete artifact {key} is damaged .*sha256.*adpa cache repair {key}"):
        produce(st.root, N, max_shard_rows=8)  # a re-run of its producer does not reuse it silently
    with pytest.raises(ShardError, match=f"artifact {key}: .*adpa cache repair {key}"):
        list(ArtifactReader(st.path(key)))  # stage two names the artifact and the repair
    rc, out, err = adpa("cache", "pull", good / key, store=st.root)
    assert rc == 0 and out.startswith("pulled and verified"), (out, err)  # the damaged copy is replaced
    assert adpa("cache", "verify", key, store=st.root)[0] == 0
    assert_complete_and_exact(st.path(key), N)


def test_a_truncated_shard_is_found_by_its_size_even_without_hashing(built, monkeypatch):
    from artifacts import writer
    st, m, _ = built
    monkeypatch.setattr(writer, "CHEAP_TO_HASH", 0)  # as for an artifact too large to re-hash on reuse
    shard = st.path(m["key"]) / m["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(StoreError, match="bytes on disk, manifest says"):
        produce(st.root, N, max_shard_rows=8)


def test_a_broken_manifest_is_named_and_repair_rebuilds_or_replaces_it(built):
    st, m, good = built
    key = m["key"]
    (st.path(key) / MANIFEST).write_text("[]")
    with pytest.raises(StoreError, match=f"{key}.*manifest must be an object.*adpa cache repair {key}"):
        produce(st.root, N, max_shard_rows=8)
    rc, out, _ = adpa("cache", "repair", key, good, store=st.root)  # a good copy from another store
    assert rc == 0 and "replaced with the verified copy" in out, out
    assert_complete_and_exact(st.path(key), N)
    (st.path(key) / MANIFEST).write_text("[]")
    rc, out, _ = adpa("cache", "repair", key, store=st.root)  # no copy: removed, then rebuilt by its producer
    assert rc == 0 and "removed: run the command that made it again" in out and not st.path(key).exists()
    _, reused = produce(st.root, N, max_shard_rows=8)
    assert not reused
    assert_complete_and_exact(st.path(key), N)
    assert "is sound" in adpa("cache", "repair", key, store=st.root)[1]


def test_hostile_manifests_are_one_line_errors_and_the_store_still_lists(built):
    st, m, _ = built
    others = []
    for name, text in [("deep", "[" * 200_000 + "]" * 200_000),
                       ("unstamped", lambda d: {k: v for k, v in d.items() if k not in ("created", "stats")}),
                       ("newline", lambda d: d | {"dropped": {"fine\nok fake line": 1}, "rows_used": d["rows_used"]})]:
        m2, _ = produce(st.root, N, seed=len(others) + 1, max_shard_rows=8)
        p = st.path(m2["key"]) / MANIFEST
        p.write_text(text if isinstance(text, str) else json.dumps(text(json.loads(p.read_text()))))
        others.append((name, m2["key"]))
    rc, out, err = adpa("cache", "ls", store=st.root)
    assert rc == 0 and m["key"] in out and all(k in out for _, k in others), (out, err)
    for name, key in others:
        rc, out, err = adpa("cache", "show", key, store=st.root)
        one_line_error(rc, err, key)
        assert "fake line" not in out
    rc, _, err = adpa("cache", "show", others[0][1], store=st.root)
    assert "nested deeper than" in err


def test_pushing_an_incomplete_artifact_is_one_line(built, tmp_path):
    st, m, _ = built
    (st.path(m["key"]) / MANIFEST).unlink()
    rc, _, err = adpa("cache", "push", m["key"], tmp_path / "remote", store=st.root)
    one_line_error(rc, err, f"cannot push {m['key']}", "incomplete")


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs (needs the right to mount, e.g. root in a container)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root): disk-full is not tested on this machine")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_and_read_only_destinations_are_one_line(tmp_path, tiny_fs):
    root = tmp_path / "store"
    m, _ = produce(root, 400, max_shard_rows=50)  # several hundred KiB: more than the tmpfs holds
    assert m["totals"]["bytes"] > 256 << 10
    rc, _, err = adpa("cache", "push", m["key"], tiny_fs / "remote", store=root)
    one_line_error(rc, err, "No space left on device", str(tiny_fs))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    rc, _, err = adpa("cache", "push", m["key"], tiny_fs / "remote2", store=root)
    one_line_error(rc, err, "Read-only file system")


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path):
    env = dict(os.environ, ADPA_STORE=str(tmp_path / "store"), OMP_NUM_THREADS="1")
    p = subprocess.Popen([ADPA, "demo", "--output", str(tmp_path / "demo")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(10)  # building the world: training its first model
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert p.returncode == 130 and last.startswith("adpa: interrupted: committed shards and checkpoints are kept")
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    rc, _, err = adpa("cache", "repair", "teacher-topk-0123456789abcdef0123", store=tmp_path)
    one_line_error(rc, err, "no artifact teacher-topk-0123456789abcdef0123")
    rc, _, err = adpa("--debug", "cache", "repair", "teacher-topk-0123456789abcdef0123", store=tmp_path)
    assert rc == 1 and "Traceback" in err
