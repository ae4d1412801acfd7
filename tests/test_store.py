"""The store end to end in-process: write, reuse, resume, read with shuffling, ranks and budgets."""

import numpy as np
import pytest

from adpa.artifacts import ArtifactReader, ArtifactSpec, ArtifactWriter, Store, StoreError, verify_artifact
from helpers import assert_complete_and_exact
from adpa.schemas import token_topk as tt
from synthetic import K, VOCAB, drop_reason, make_row, produce

N = 60


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    m, reused = produce(root, N)
    return root, m, reused


def test_produce_then_reuse(built):
    root, m, reused = built
    assert not reused
    assert verify_artifact(Store(root).path(m["key"]))["key"] == m["key"]
    dropped = sum(1 for i in range(N) if drop_reason(i))
    assert m["input_rows"] == N and m["rows_used"] == N - dropped and sum(m["dropped"].values()) == dropped
    assert m["totals"]["shards"] > 2  # bounded shards
    assert all(s["rows"] <= 2 * 16 + 1 for s in m["shards"])
    m2, reused2 = produce(root, N)
    assert reused2 and m2 == m
    assert_complete_and_exact(Store(root).path(m["key"]), N)


def test_shards_are_ipc_streams_and_ipc_files_of_earlier_versions_still_read(built, tmp_path):
    """A shard holds its schema (and the codec's id table) once; earlier versions wrote the IPC file
    format, whose footer repeats the schema: a store may still hold those (e.g. seq-logp 1.0)."""
    import json
    import shutil

    import pyarrow as pa

    from adpa.artifacts.fsutil import sha256_file
    root, m, _ = built
    d = shutil.copytree(Store(root).path(m["key"]), tmp_path / m["key"])
    for entry in m["shards"]:
        f = d / entry["file"]
        assert f.read_bytes()[:6] != b"ARROW1"  # a stream starts with a message, not the file magic
        table = pa.ipc.open_stream(f.read_bytes()).read_all()
        with pa.ipc.new_file(str(f), table.schema) as w:
            for batch in table.to_batches():
                w.write_batch(batch)
    mm = json.loads((d / "manifest.json").read_text())
    for entry in mm["shards"]:
        entry["bytes"], entry["sha256"] = (d / entry["file"]).stat().st_size, sha256_file(d / entry["file"])
    mm["totals"]["bytes"] = sum(e["bytes"] for e in mm["shards"])
    (d / "manifest.json").write_text(json.dumps(mm))
    assert verify_artifact(d)["key"] == m["key"]
    assert_complete_and_exact(d, N)


def test_resume_after_failure_keeps_finished_shards(tmp_path):
    with pytest.raises(RuntimeError, match="injected"):
        produce(tmp_path, N, fail_at=45)
    st = Store(tmp_path)
    key = st.keys()[0]
    assert not st.is_complete(key)
    finished = sorted(p.name for p in st.path(key).glob("shard-*.arrow"))
    mtimes = {p: (st.path(key) / p).stat().st_mtime_ns for p in finished}
    assert finished, "shards before the failure were committed"
    m, reused = produce(tmp_path, N)
    assert not reused
    for p, t in mtimes.items():
        assert (st.path(key) / p).stat().st_mtime_ns == t, f"{p} was rewritten instead of kept"
    assert_complete_and_exact(st.path(key), N)


def test_rows_go_in_order_and_all_must_be_accounted(tmp_path):
    w = ArtifactWriter(Store(tmp_path), ArtifactSpec("teacher-topk", {"t": 1}, tt.Codec, {"k": K, "vocab_size": VOCAB}, 3))
    with w:
        w.add(0, [make_row(0, 0, "chosen")])
        with pytest.raises(StoreError, match="expected row 1"):
            w.add(2, [make_row(0, 2, "chosen")])
        with pytest.raises(StoreError, match="no sequences"):
            w.add(1, [])
        w.drop(1, "too_long")
        with pytest.raises(StoreError, match="produced rows up to 2, its slice ends at 3"):
            w.publish()
        w.add(2, [make_row(0, 2, "chosen")])
        with pytest.raises(StoreError, match="beyond"):
            w.drop(3, "x")
        m = w.publish()
    assert m["dropped"] == {"too_long": 1} and m["rows_used"] == 2


def test_reader_gives_every_row_in_manifest_order(built):
    root, m, _ = built
    rows = [(r.input_index, r.side) for r in ArtifactReader(Store(root).path(m["key"]))]
    assert len(rows) == m["totals"]["rows"] and rows == sorted(rows, key=lambda x: x[0])


def test_reader_raises_on_corruption_found_while_streaming(built, tmp_path):
    import shutil
    root, m, _ = built
    d = tmp_path / m["key"]
    shutil.copytree(Store(root).path(m["key"]), d)
    last = d / m["shards"][-1]["file"]
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    it = iter(ArtifactReader(d))
    next(it)  # the first shards are sound and stream before the bad one is reached
    with pytest.raises(Exception, match="sha256"):
        list(it)


def test_advantage_rows_round_trip(tmp_path):
    m, _ = produce(tmp_path, 20, with_ref=True)
    rows = assert_complete_and_exact(Store(tmp_path).path(m["key"]), 20, with_ref=True)
    r = rows[0]
    o = make_row(0, r.input_index, r.side, with_ref=True)
    assert np.abs(r.ref_topk_logp - o.ref_topk_logp).max() <= tt.LOGP_STEP / 2 + 1e-6


@pytest.mark.slow
def test_ranks_write_disjoint_slices_then_one_manifest(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from adpa.artifacts.writer import assemble
    from synthetic import spec
    script = str(Path(__file__).parent / "synthetic.py")
    procs = [subprocess.Popen([sys.executable, script, str(tmp_path), str(N), "--rank", str(r), "--world-size", "3"],
                              stdout=subprocess.PIPE, text=True) for r in range(3)]
    outs = sorted(p.communicate()[0].strip() for p in procs)
    assert outs == ["rank 0 done", "rank 1 done", "rank 2 done"]
    st = Store(tmp_path)
    key = st.keys()[0]
    assert not st.is_complete(key)
    m = assemble(st, spec(0, N))
    assert assemble(st, spec(0, N)) == m  # idempotent
    assert {s["file"][:9] for s in m["shards"]} == {"shard-000", "shard-001", "shard-002"}
    assert [s["input_start"] for s in m["shards"]] == sorted(s["input_start"] for s in m["shards"])
    verify_artifact(st.path(key))
    assert_complete_and_exact(st.path(key), N)


def test_a_dead_rank_blocks_the_manifest_and_resumes_with_the_same_world_size(tmp_path):
    from adpa.artifacts.writer import assemble
    from synthetic import spec
    produce(tmp_path, N, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="injected"):
        produce(tmp_path, N, rank=1, world_size=2, fail_at=45)
    with pytest.raises(StoreError, match=r"ranks \[1\] of 2 have not finished"):
        assemble(Store(tmp_path), spec(0, N))
    with pytest.raises(StoreError, match="started with world size 2"):
        produce(tmp_path, N)
    assert produce(tmp_path, N, rank=1, world_size=2) == (None, False)
    m = assemble(Store(tmp_path), spec(0, N))
    assert_complete_and_exact(Store(tmp_path).path(m["key"]), N)
