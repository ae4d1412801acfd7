"""Stage one on Ray Data (`--engine ray`) for real: a local Ray cluster of 2 CPU workers, real processes,
one SIGKILLed mid-block, against a local run of the same recipe."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsspec
import numpy as np
import pytest

from adpa.artifacts import ArtifactReader, Store, verify_artifact
from helpers import linked_store
from test_teacher_cache_cli import good

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

BIN = Path(sys.executable).parent
PAIRS = 32
COMMON = ["--recipe", "smollm2", "--backend", "hf", "--set", "teacher_cache.k=4", "--set",
          "teacher_cache.max_new_tokens=8", "--set", "teacher_cache.shard_rows=4", "--set", "data.holdout=0"]
RAY = ["--engine", "ray", "--set", "teacher_cache.ray_workers=2", "--set", "teacher_cache.ray_block_rows=16"]


def cmd(data, *extra):
    return [str(BIN / "adpa"), "teacher-cache", "--data", str(data), *COMMON, *extra]


def env(store):
    return dict(os.environ, ADPA_STORE=str(store.root), OMP_NUM_THREADS="1", RAY_DISABLE_USAGE_STATS="1")


def keys_of(stdout: str) -> dict:
    return {ln.split()[0] + ":" + ln.split()[1]: ln.split()[-1] for ln in stdout.splitlines()
            if ln.split() and ln.split()[0] in ("teacher-topk", "seq-logp", "generations", "advantage")
            and ln.split()[-1].startswith(ln.split()[0])}


def rows(store, key) -> dict:
    out = {}
    for r in ArtifactReader(store.location(key)):
        k = (str(r.pair_id), str(r.side))
        assert k not in out, f"{key}: row {k} twice"
        out[k] = r
    return out


def same_rows(a, b, key):
    ra, rb = rows(a, key), rows(b, key)
    assert ra.keys() == rb.keys()
    for k in ra:
        assert ra[k].token_ids.tolist() == rb[k].token_ids.tolist()
        for name in ("realized_logp", "topk_logp", "ref_topk_logp"):
            if getattr(ra[k], name, None) is not None:  # one thread here, one per worker there: up to float rounding
                np.testing.assert_allclose(getattr(ra[k], name), getattr(rb[k], name), atol=2e-3,
                                           err_msg=f"{key} {k} {name}")


@pytest.fixture(scope="module")
def local_run(model_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("ray")
    data = d / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(good(i)) for i in range(PAIRS)))
    st = linked_store(model_store, d / "local")
    p = subprocess.run(cmd(data), capture_output=True, text=True, env=env(st))
    assert p.returncode == 0, p.stderr[-3000:]
    return d, data, st, keys_of(p.stdout)


def _holder(lock: Path) -> int | None:
    """The pid holding a flock on `lock` (from /proc/locks), if any."""
    inode = os.stat(lock).st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 5 and f[1] == "FLOCK" and int(f[5].split(":")[-1]) == inode:
            return int(f[4])
    return None


def test_ray_with_a_worker_killed_mid_block_gives_the_keys_and_rows_of_a_local_run(local_run, model_store):
    """2 workers, 2 blocks of 16 rows (4 shards each). The Ray worker writing a teacher-topk block is
    SIGKILLed once it has committed that block's first shard: Ray Data starts a new worker and retries
    the block, which keeps the committed shard and resumes after it. Every artifact then has the keys of
    the local run, one writer per block, every input row exactly once, and the local run's values."""
    d, data, local, keys = local_run
    st = linked_store(model_store, d / "ray")
    key = keys["teacher-topk:teacher"]
    proc = subprocess.Popen(cmd(data, *RAY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env(st), start_new_session=True)
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and proc.poll() is None:
            prog = st.path(key) / ".progress"
            for rec in sorted(prog.glob("r*-shard-00000.json")) if prog.is_dir() else ():
                block = rec.name[:4]
                if (prog / f"{block}-of-002.done").exists():
                    continue
                pid = _holder(st.root / ".locks" / f"{key}.{block}.lock")
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert killed, "no worker was caught mid-block"
    assert proc.returncode == 0, out[-3000:]
    assert "32 rows in 2 blocks, 2 workers" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("teacher-topk (teacher): 2 blocks"))
    assert "resumed 1" in line, line  # the retried block kept the shard committed before the kill
    assert keys_of(out) == keys and len(keys) == 5
    table = next(ln for ln in out.splitlines() if ln.startswith("vocabulary table vocab-")).split()[2]
    assert st.manifest(table) is not None  # what a student of another tokenizer reads, on this engine too
    for name, k in keys.items():
        m = verify_artifact(st.path(k))
        assert m["input_rows"] == PAIRS and m["rows_used"] == PAIRS, name
        assert {s["file"][:9] for s in m["shards"]} == {"shard-000", "shard-001"}, name  # a writer per block
        same_rows(local, st, k)


def test_a_driver_killed_on_s3_resumes_on_another_machine_and_stage_two_trains_from_s3(local_run, model_store,
                                                                                      s3_server, tmp_path):
    """The store is a real S3-compatible server. SIGKILL the driver (its whole process group: the local
    Ray cluster it started goes with it) once a block of the first pass is on the store, then run the
    same command with another, empty working copy (as if the machine were lost): that block reports
    itself finished ("reused", none of its rows scored again) from the records on the store, and every
    artifact equals the local run's. Then `adpa distill`, with a third working copy, pulls the student's
    init from the store, streams the caches from it and publishes the student there."""
    d, data, local, keys = local_run
    url = f"{s3_server['bucket']}/ray-{os.getpid()}"
    s3 = {k: v for k, v in s3_server.items() if k != "bucket"}
    first = linked_store(model_store, tmp_path / "machine-1")  # the built-in models, pushed to S3 as they are used
    store_env = lambda wc: dict(env(first), **s3, ADPA_STORE=url, ADPA_WORKDIR=str(wc))  # noqa: E731
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    pattern = f"{url.removeprefix('s3://')}/*/.progress/r*-of-002.done"

    def done_blocks():
        fs.invalidate_cache()
        return fs.glob(pattern)
    proc = subprocess.Popen(cmd(data, *RAY), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=store_env(first.root), start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not done_blocks():
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before a block was done: " + proc.stdout.read()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done = done_blocks()
    assert done and not any(fs.exists(p.split("/.progress/")[0] + "/manifest.json") for p in done)
    p = subprocess.run(cmd(data, *RAY), capture_output=True, text=True, env=store_env(tmp_path / "machine-2"),
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert any(" blocks on " in ln and "reused" in ln for ln in p.stdout.splitlines()), p.stdout
    assert keys_of(p.stdout) == keys
    st = Store(url, tmp_path / "reader")
    for k in keys.values():
        m = verify_artifact(st.location(k))
        assert m["input_rows"] == PAIRS and m["rows_used"] == PAIRS
        same_rows(local, st, k)

    t = subprocess.run([str(BIN / "adpa"), "distill", "--recipe", "smollm2", "--loss", "dckd", "--output",
                        str(tmp_path / "run"), "--set", f"data.source={data}", *COMMON[4:],
                        "--set", "distill.batch_pairs=16"],
                       capture_output=True, text=True, env=store_env(tmp_path / "machine-3"), timeout=600)
    assert t.returncode == 0, t.stderr[-3000:]
    student = next(w for w in t.stdout.split() if w.startswith("student-"))
    m = verify_artifact(Store(url, tmp_path / "reader").location(student))
    assert m["kind"] == "student" and "model.safetensors" in {s["file"] for s in m["shards"]}
