"""Data-parallel stage one for real: `torchrun --nproc_per_node 2` against one process, both backends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adpa.artifacts import ArtifactReader, verify_artifact
from test_teacher_cache_cli import good
from helpers import linked_store

pytestmark = pytest.mark.slow  # processes, real models, servers: `make test`, not `make test-fast`

BIN = Path(sys.executable).parent


def run(store, data, backend, nproc):
    cmd = [str(BIN / "adpa")] if nproc == 1 else [str(BIN / "torchrun"), "--nproc_per_node", str(nproc),
                                                  "--no-python", str(BIN / "adpa")]
    p = subprocess.run(cmd + ["teacher-cache", "--recipe", "smollm2", "--data", str(data), "--backend", backend, "--set",
                              "teacher_cache.k=4", "--set", "teacher_cache.max_new_tokens=8", "--set",
                              "teacher_cache.shard_rows=4", "--set", "data.holdout=0"],
                       capture_output=True, text=True, env=dict(os.environ, ADPA_STORE=str(store.root)))
    assert p.returncode == 0, p.stderr[-3000:]
    return {line.split()[0] + ":" + line.split()[1]: line.split()[-1] for line in p.stdout.splitlines()
            if line.split() and line.split()[0] in ("teacher-topk", "seq-logp", "generations", "advantage")
            and not line.split()[1].startswith("(")}  # the summary table's rows, not the progress lines


def content(store, key):
    return sorted((r.pair_id, r.side, tuple(r.token_ids.tolist())) for r in ArtifactReader(store.path(key)))


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_two_processes_give_the_rows_of_one(model_store, tmp_path, backend):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(good(i)) for i in range(10)))
    one, two = linked_store(model_store, tmp_path / "one"), linked_store(model_store, tmp_path / "two")
    k1, k2 = run(one, data, backend, 1), run(two, data, backend, 2)
    assert k1 == k2 and len(k1) == 5  # same inputs, same keys: the world size is not an input
    for name, key in k2.items():
        m = verify_artifact(two.path(key))
        assert m["stats"]["world_size"] == 2 and m["rows_used"] == 10
        assert {s["file"][:9] for s in m["shards"]} == {"shard-000", "shard-001"}
        assert content(one, key) == content(two, key), name
