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

from adpa.artifacts import ArtifactReader, Store, StoreError
from adpa.artifacts.shards import ShardError
from adpa.artifacts.store import MANIFEST
from helpers import assert_complete_and_exact
from synthetic import produce

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

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
    from adpa.artifacts import writer
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
    # A terminal's Ctrl-C: SIGINT at its default (a test runner's worker may ignore it, and children inherit that).
    p = subprocess.Popen([ADPA, "demo", "--output", str(tmp_path / "demo")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


def forge(st, m, seed=7):
    """Another team's trick: other values under the same key, shards and sha256s recomputed."""
    other, _ = produce(st.root / "elsewhere", N, seed=seed, max_shard_rows=8)
    d, src = st.path(m["key"]), st.root / "elsewhere" / other["key"]
    for s in m["shards"]:
        (d / s["file"]).unlink()
    for s in other["shards"]:
        shutil.copy(src / s["file"], d / s["file"])
    forged = json.loads((d / MANIFEST).read_text()) | {"shards": other["shards"], "totals": other["totals"]}
    (d / MANIFEST).write_text(json.dumps(forged))
    shutil.rmtree(st.root / "elsewhere")


def test_a_signature_tells_a_forged_artifact_from_the_producers(built, tmp_path):
    st, m, good = built
    key, keys, trust = m["key"], tmp_path / "keys", tmp_path / "trust"
    trust.mkdir()
    for who in ("team-a", "mallory"):
        rc, out, err = adpa("cache", "keygen", who, "--out", keys)
        assert rc == 0, err
        assert (keys / f"{who}.key").stat().st_mode & 0o077 == 0  # private key readable by its owner only
    shutil.copy(keys / "team-a.pub", trust)
    rc, out, err = adpa("cache", "sign", good / key, "--key", keys / "team-a.key")
    assert rc == 0 and "signed" in out and "team-a" in out, err
    rc, out, _ = adpa("cache", "verify", good / key, "--trust", trust)
    assert rc == 0 and "signed by team-a" in out

    remote = tmp_path / "remote"
    assert adpa("cache", "push", key, remote, store=good)[0] == 0  # the signature travels with the artifact
    shutil.rmtree(st.path(key))
    rc, out, err = adpa("cache", "pull", remote / key, "--trust", trust, store=st.root)
    assert rc == 0 and "pulled and verified" in out, err
    assert adpa("cache", "verify", key, "--trust", trust, store=st.root)[0] == 0

    forge(st, m)  # shards and sha256s recomputed: plain verification cannot tell
    assert adpa("cache", "verify", key, store=st.root)[0] == 0
    rc, _, err = adpa("cache", "verify", key, "--trust", trust, store=st.root)
    one_line_error(rc, err, "signature of team-a does not verify")
    assert adpa("cache", "sign", key, "--key", keys / "mallory.key", store=st.root)[0] == 0  # re-signed by mallory
    (st.path(key) / "signatures.json").write_text(json.dumps(
        {"format": "adpa.signatures", "signatures": [s for s in json.loads(
            (st.path(key) / "signatures.json").read_text())["signatures"] if s["signer"] == "mallory"]}))
    rc, _, err = adpa("cache", "verify", key, "--trust", trust, store=st.root)
    one_line_error(rc, err, "signed by mallory, none of them a key of the trust folder")

    forged_remote = tmp_path / "forged"
    assert adpa("cache", "push", key, forged_remote, store=st.root)[0] == 0
    fresh = tmp_path / "fresh"
    rc, _, err = adpa("cache", "pull", forged_remote / key, "--trust", trust, store=fresh)
    one_line_error(rc, err, "none of them a key of the trust folder")
    assert not Store(fresh).keys()  # a refused artifact never becomes visible
    rc, out, _ = adpa("cache", "pull", remote / key, "--trust", trust, store=st.root)  # a trusted copy replaces it
    assert rc == 0 and "pulled and verified" in out
    assert_complete_and_exact(st.path(key), N)
