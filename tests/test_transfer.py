"""push / pull through fsspec: local paths, file:// and memory:// URLs; nothing bad becomes visible."""

import json
import shutil

import fsspec
import pytest

from adpa.artifacts import Store, StoreError, verify_artifact
from adpa.artifacts.store import INCOMING, MANIFEST
from adpa.artifacts.transfer import pull, push
from helpers import assert_complete_and_exact
from synthetic import produce

N = 30


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    m, _ = produce(root, N)
    return Store(root), m


@pytest.mark.parametrize("scheme", ["path", "file"])
def test_push_then_pull_between_local_stores(source, tmp_path, scheme):
    st, m = source
    remote = tmp_path / "shared-store"
    url = str(remote) if scheme == "path" else f"file://{remote}"
    pushed = push(st, m["key"], url)
    assert (remote / m["key"] / MANIFEST).exists()
    mine = Store(tmp_path / "mine")
    key, reused = pull(mine, pushed)
    assert key == m["key"] and not reused
    assert verify_artifact(mine.path(key))["shards"] == m["shards"]
    assert_complete_and_exact(mine.path(key), N)
    assert pull(mine, pushed) == (key, True)
    assert not any((mine.root / INCOMING).iterdir())


def test_memory_filesystem_roundtrip(source, tmp_path):
    st, m = source
    push(st, m["key"], "memory://team-a/store")
    assert fsspec.filesystem("memory").exists(f"/team-a/store/{m['key']}/{MANIFEST}")
    key, _ = pull(Store(tmp_path), f"memory://team-a/store/{m['key']}")
    assert_complete_and_exact(Store(tmp_path).path(key), N)


def remote_copy(source, tmp_path):
    st, m = source
    remote = tmp_path / "remote" / m["key"]
    shutil.copytree(st.path(m["key"]), remote)
    return remote, m


def assert_nothing_visible(store: Store):
    assert store.keys() == []
    inc = store.root / INCOMING
    assert not inc.exists() or not any(inc.iterdir())


def test_pull_refuses_a_corrupt_remote(source, tmp_path):
    remote, m = remote_copy(source, tmp_path)
    f = remote / m["shards"][1]["file"]
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))
    mine = Store(tmp_path / "mine")
    with pytest.raises(StoreError, match="sha256"):
        pull(mine, str(remote))
    assert_nothing_visible(mine)


def test_pull_refuses_a_shard_longer_than_declared(source, tmp_path):
    remote, m = remote_copy(source, tmp_path)
    with open(remote / m["shards"][0]["file"], "ab") as f:
        f.write(b"\0" * 4096)
    mine = Store(tmp_path / "mine")
    with pytest.raises(StoreError, match="larger than"):
        pull(mine, str(remote))
    assert_nothing_visible(mine)


def test_pull_refuses_traversal_and_misnamed_folders(source, tmp_path):
    remote, m = remote_copy(source, tmp_path)
    j = json.loads((remote / MANIFEST).read_text())
    j["shards"][0]["file"] = "../../outside"
    (remote / MANIFEST).write_text(json.dumps(j))
    mine = Store(tmp_path / "mine")
    with pytest.raises(StoreError, match="plain file name"):
        pull(mine, str(remote))
    other = remote.with_name("teacher-topk-" + "a" * 20)
    shutil.copytree(source[0].path(m["key"]), other)
    with pytest.raises(StoreError, match="named"):
        pull(mine, str(other))
    with pytest.raises(StoreError, match="no manifest.json"):
        pull(mine, str(tmp_path))
    assert_nothing_visible(mine)
