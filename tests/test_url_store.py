"""The store at an fsspec URL: memory:// in-process, and a real S3-compatible server (moto's, in its
own process) with producers in real processes, each with its own working copy as on two machines."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest

from adpa.artifacts import ArtifactReader, Store, StoreError, VerifyError, verify_artifact
from adpa.artifacts.shards import ShardError
from adpa.artifacts.writer import assemble
from helpers import assert_complete_and_exact
from synthetic import spec

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

N = 60
SYNTHETIC = str(Path(__file__).parent / "synthetic.py")


def produce(url, workdir, **kw):
    """synthetic.produce against the store at `url` with its own working copy."""
    import synthetic
    old = os.environ.get("ADPA_WORKDIR")
    os.environ["ADPA_WORKDIR"] = str(workdir)
    try:
        return synthetic.produce(url, N, **kw)
    finally:
        os.environ.pop("ADPA_WORKDIR") if old is None else os.environ.__setitem__("ADPA_WORKDIR", old)


def objects(url, key):
    fs, path = fsspec.core.url_to_fs(f"{url}/{key}")
    fs.invalidate_cache(path)
    return {e["name"].rsplit("/", 1)[-1]: e["size"] for e in fs.ls(path, detail=True) if e["type"] == "file"}


@pytest.fixture
def url():
    return f"memory://adpa-{uuid.uuid4().hex[:8]}/store"


def test_shards_go_straight_to_the_url_and_a_failed_run_resumes_there(url, tmp_path):
    with pytest.raises(RuntimeError, match="injected"):
        produce(url, tmp_path / "wc", fail_at=45)
    st = Store(url, tmp_path / "wc")
    key = st.keys()[0]
    assert not st.is_complete(key) and st.manifest(key) is None
    first = {n: s for n, s in objects(url, key).items() if n.endswith(".arrow")}
    assert first and all(n.count("-") == 3 for n in first), first  # shard-RRR-IIIII-<content hash>.arrow
    assert not list((tmp_path / "wc").rglob("*.arrow")), "the working copy keeps no shard"
    m, reused = produce(url, tmp_path / "wc")
    assert not reused and set(first) <= {s["file"] for s in m["shards"]}  # the committed shards were kept
    assert objects(url, key)["manifest.json"] > 0
    rows = assert_complete_and_exact(st.location(key), N)
    assert len(rows) == m["totals"]["rows"]
    assert verify_artifact(st.location(key))["key"] == key
    assert produce(url, tmp_path / "elsewhere") == (m, True)  # another machine reuses it
    other = Store(url, tmp_path / "x")
    assert other.keys() == [key] and other.entry(key)["complete"] and str(other.location(key)) == f"{url}/{key}"


def test_ranks_on_two_machines_publish_one_manifest(url, tmp_path):
    assert produce(url, tmp_path / "a", rank=0, world_size=2) == (None, False)
    with pytest.raises(StoreError, match=r"ranks \[1\] of 2 have not finished"):
        assemble(Store(url, tmp_path / "a"), spec(0, N))
    assert produce(url, tmp_path / "b", rank=1, world_size=2) == (None, False)
    m = assemble(Store(url, tmp_path / "c"), spec(0, N))
    assert {s["file"][:9] for s in m["shards"]} == {"shard-000", "shard-001"}
    assert_complete_and_exact(Store(url, tmp_path / "d").location(m["key"]), N)


def test_a_damaged_object_is_named_by_the_reader_and_by_verify(url, tmp_path):
    m, _ = produce(url, tmp_path / "wc")
    st, key = Store(url, tmp_path / "wc"), m["key"]
    fs, path = fsspec.core.url_to_fs(f"{url}/{key}/{m['shards'][1]['file']}")
    good = fs.cat_file(path)
    fs.pipe_file(path, good[:100] + bytes([good[100] ^ 1]) + good[101:])  # same size, one bit
    with pytest.raises(ShardError, match=rf"{m['shards'][1]['file']}: sha256 does not match"):
        list(ArtifactReader(st.location(key)))
    with pytest.raises(VerifyError, match="sha256"):
        verify_artifact(st.location(key))
    fs.pipe_file(path, good[:-10])
    with pytest.raises(StoreError, match="damaged"):  # a producer refuses to reuse it, naming the repair
        produce(url, tmp_path / "wc")
    assert not list((tmp_path / "wc").rglob("*.arrow")), "fetched shards are removed, good or bad"


def test_two_producers_of_one_key_at_once_on_s3_end_with_one_complete_artifact(s3_server, tmp_path):
    url = f"{s3_server['bucket']}/race-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, **{k: v for k, v in s3_server.items() if k != "bucket"})
    # Other batch sizes, so the two write other bytes for the same shards: were names shared, one
    # producer's manifest would name the other's bytes and fail its sha256.
    procs = [subprocess.Popen([sys.executable, SYNTHETIC, url, str(N), "--sleep", "0.02", "--max-shard-rows", "8",
                               "--batch-tokens", str(100 + 100 * i)],
                              env=dict(env, ADPA_WORKDIR=str(tmp_path / f"machine-{i}")), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert all(o[0].split()[0] in ("published", "reused") for o in outs), outs
    st = Store(url, tmp_path / "reader")
    key = st.keys()[0]
    m = st.manifest(key)
    assert all(objects(url, key)[s["file"]] == s["bytes"] for s in m["shards"])
    assert_complete_and_exact(st.location(key), N)
    adpa = [str(Path(sys.executable).parent / "adpa"), "cache"]
    cli_env = dict(env, ADPA_STORE=url, ADPA_WORKDIR=str(tmp_path / "cli"))
    ls = subprocess.run(adpa + ["ls", "--json"], capture_output=True, text=True, env=cli_env)
    assert ls.returncode == 0 and [(e["key"], e["complete"]) for e in json.loads(ls.stdout)] == [(key, True)]
    ok = subprocess.run(adpa + ["verify", key], capture_output=True, text=True, env=cli_env)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok {key}"), ok.stderr


def test_gc_removes_what_no_manifest_names_and_abandoned_artifacts_only(url, tmp_path):
    m, _ = produce(url, tmp_path / "wc")
    key = m["key"]
    fs, root = fsspec.core.url_to_fs(f"{url}/{key}")
    fs.pipe_file(f"{root}/shard-000-00000-{'0' * 16}.arrow", b"a producer that lost a race")
    with pytest.raises(RuntimeError, match="injected"):
        produce(url, tmp_path / "wc", seed=1, fail_at=30)  # another key, abandoned mid-way
    st = Store(url, tmp_path / "wc")
    (abandoned,) = [k for k in st.keys() if k != key]
    assert st.gc(3600) == []  # everything is recent
    removed = [str(r) for r in st.gc(0)]  # the working copy's leftovers (local paths) and the URL's
    listed = {s["file"] for s in m["shards"]}
    assert f"{url}/{key}/shard-000-00000-{'0' * 16}.arrow" in removed and f"{url}/{key}/manifest.json" not in removed
    assert any(r.startswith(f"{url}/{abandoned}/") for r in removed)
    assert not any(r.startswith(url) and r.rsplit("/", 1)[-1] in listed for r in removed)
    assert set(objects(url, key)) == listed | {"manifest.json"}  # the progress records went too
    assert st.keys() == [key]
    assert_complete_and_exact(st.location(key), N)
