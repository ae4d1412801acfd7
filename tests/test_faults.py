"""Faults for real: damaged shards and manifests, SIGKILLed producers, concurrent producers."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adpa.artifacts import Incomplete, Store, VerifyError, verify_artifact
from adpa.artifacts.store import MANIFEST
from helpers import assert_complete_and_exact
from synthetic import produce

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

ADPA = str(Path(sys.executable).parent / "adpa")
PRODUCER = str(Path(__file__).parent / "synthetic.py")
N = 40


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    m, _ = produce(root, N)
    return Store(root).path(m["key"]), m


@pytest.fixture
def artifact(pristine, tmp_path):
    d, m = pristine
    dest = tmp_path / "store" / d.name
    shutil.copytree(d, dest)
    return dest, m


def cli_verify(path):
    p = subprocess.run([ADPA, "cache", "verify", str(path)], capture_output=True, text=True)
    return p.returncode, (p.stdout + p.stderr).strip()


def rewrite_manifest(d, fn):
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m))


def test_sound_artifact_verifies(artifact):
    d, m = artifact
    code, out = cli_verify(d)
    assert code == 0 and out.startswith(f"ok {m['key']}"), out


def test_corrupt_byte(artifact):
    d, m = artifact
    f = d / m["shards"][2]["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x01
    f.write_bytes(bytes(data))
    code, out = cli_verify(d)
    assert code == 1 and m["shards"][2]["file"] in out and "sha256" in out and len(out.splitlines()) == 1


def test_truncated_shard(artifact):
    d, m = artifact
    f = d / m["shards"][1]["file"]
    f.write_bytes(f.read_bytes()[:-100])
    code, out = cli_verify(d)
    assert code == 1 and m["shards"][1]["file"] in out and "truncated" in out


def test_missing_shard(artifact):
    d, m = artifact
    (d / m["shards"][-1]["file"]).unlink()
    code, out = cli_verify(d)
    assert code == 1 and f"{m['shards'][-1]['file']}: missing" in out


def test_manifest_with_a_traversal_path(artifact):
    d, m = artifact
    outside = d.parent / "secret.arrow"
    shutil.copy(d / m["shards"][0]["file"], outside)
    rewrite_manifest(d, lambda j: j["shards"][0].update(file="../secret.arrow"))
    code, out = cli_verify(d)
    assert code == 1 and "not a plain file name" in out
    with pytest.raises(Exception, match="plain file name"):
        from adpa.artifacts import ArtifactReader
        ArtifactReader(d)


def test_manifest_with_a_wrong_checksum(artifact):
    d, m = artifact
    rewrite_manifest(d, lambda j: j["shards"][0].update(sha256="0" * 64))
    code, out = cli_verify(d)
    assert code == 1 and m["shards"][0]["file"] in out and "sha256" in out


def test_unknown_schema_versions(artifact):
    d, m = artifact
    rewrite_manifest(d, lambda j: j.update(format_version="7.1"))
    code, out = cli_verify(d)
    assert code == 1 and "'7.1'" in out and "1.x" in out
    rewrite_manifest(d, lambda j: j.update(format_version="1.0"))
    assert cli_verify(d)[0] == 0
    # A shard schema version this adpa does not know (changes the key, as it must).
    from adpa.schemas.keys import artifact_key

    def bump(j):
        j["shard_schema"]["version"] = "9.0"
        j["key"] = artifact_key(j["kind"], j["inputs"], j["shard_schema"])
    rewrite_manifest(d, bump)
    new = d.with_name(json.loads((d / MANIFEST).read_text())["key"])
    d.rename(new)
    code, out = cli_verify(new)
    assert code == 1 and "version 9.0 is not supported" in out and f"{m['shard_schema']['version'][0]}.x" in out


def test_incomplete_is_reported_as_such(artifact):
    d, _ = artifact
    (d / MANIFEST).unlink()
    code, out = cli_verify(d)
    assert code == 1 and "incomplete" in out


def test_sigkill_at_random_points_then_resume(tmp_path):
    """At least 10 kills at random times: verify passes or says incomplete; a re-run finishes exactly."""
    rng = np.random.default_rng(20261127)
    n, outcomes = 80, []
    for trial in range(12):
        root = tmp_path / f"t{trial}"
        # A first run killed at a random moment, then a second one killed too, then one that finishes.
        for _ in range(2):
            p = subprocess.Popen([sys.executable, PRODUCER, str(root), str(n), "--max-shard-rows", "8"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            time.sleep(float(rng.uniform(0.3, 3.0)))
            p.send_signal(signal.SIGKILL)
            p.wait()
            keys = Store(root).keys()
            if not keys:
                outcomes.append("before any write")
                continue
            try:
                verify_artifact(Store(root).path(keys[0]))
                outcomes.append("complete")
            except Incomplete:
                outcomes.append("incomplete")
        done = subprocess.run([sys.executable, PRODUCER, str(root), str(n), "--max-shard-rows", "8"],
                              capture_output=True, text=True, check=True)
        key = done.stdout.split()[-1]
        verify_artifact(Store(root).path(key))
        assert_complete_and_exact(Store(root).path(key), n)
    assert outcomes.count("incomplete") >= 5, outcomes  # the kills did land mid-production


def test_two_concurrent_producers_end_with_one_artifact(tmp_path):
    n = 60
    procs = [subprocess.Popen([sys.executable, PRODUCER, str(tmp_path), str(n)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    verdicts = sorted(o[0].split()[0] for o in outs)
    assert verdicts == ["published", "reused"], outs
    st = Store(tmp_path)
    assert len(st.keys()) == 1
    verify_artifact(st.path(st.keys()[0]))
    assert_complete_and_exact(st.path(st.keys()[0]), n)


def test_concurrent_producers_that_publish_after_the_writer_both_succeed(tmp_path):
    """Stage one's pattern (finish inside the writer, assemble after it) with two processes of one key,
    started at random offsets over many trials: both exit 0, one complete artifact with exact values.
    Before the fix the second deleted the first's done record between its rank lock and its key lock."""
    rng = np.random.default_rng(20261202)
    n, seen = 17, []  # row 16, the last, is a drop: it is counted in the done record, not in a shard's
    for trial in range(12):
        root = tmp_path / f"t{trial}"
        cmd = [sys.executable, PRODUCER, str(root), str(n), "--assemble-after", "--max-shard-rows", "8",
               "--sleep", "0.02", "--load-time", "0.5",
               "--pause-before-assemble", str(float(rng.choice([0.0, 0.3, 1.0])))]
        first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(float(rng.uniform(0.0, 2.5)))
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outs = [p.communicate(timeout=300) for p in (first, second)]
        assert [p.returncode for p in (first, second)] == [0, 0], (trial, outs)
        seen += [o[0].split()[0] for o in outs]
        st = Store(root)
        assert len(st.keys()) == 1
        verify_artifact(st.path(st.keys()[0]))
        assert_complete_and_exact(st.path(st.keys()[0]), n)
    assert "published" in seen and "reused" in seen, seen


def test_verify_rejects_a_shard_swapped_for_a_valid_but_different_one(artifact):
    """Checksums bind content: a well-formed shard from elsewhere in the same slot is caught."""
    d, m = artifact
    a, b = (d / m["shards"][0]["file"]), (d / m["shards"][1]["file"])
    a.write_bytes(b.read_bytes())
    with pytest.raises(VerifyError, match=m["shards"][0]["file"]):
        verify_artifact(d)
