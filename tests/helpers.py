"""Checks shared by the store tests: what a store returns against the originals."""

import os
from pathlib import Path

import numpy as np

from adpa.artifacts import ArtifactReader, Store
from adpa.schemas import token_topk as tt
from synthetic import drop_reason, make_row


def assert_complete_and_exact(artifact_dir, n: int, seed: int = 0, with_ref: bool = False):
    """Every usable input row exactly once per side, every dropped one absent, values as produced."""
    rows = list(ArtifactReader(artifact_dir))
    seen = sorted((r.input_index, r.side) for r in rows)
    want = sorted((i, s) for i in range(n) if drop_reason(i) is None for s in ("chosen", "rejected"))
    assert seen == want, "rows missing, duplicated or unexpected"
    for r in rows[:: max(1, len(rows) // 25)]:
        o = make_row(seed, r.input_index, r.side, with_ref=with_ref)
        np.testing.assert_array_equal(r.topk_ids, o.topk_ids)
        np.testing.assert_array_equal(r.token_ids, o.token_ids)
        assert np.abs(r.topk_logp - o.topk_logp).max() <= tt.LOGP_STEP / 2 + 1e-6
    return rows


def linked_store(source: Store, path, kinds=("model-", "dataset-")) -> Store:
    """A new store sharing `source`'s complete artifacts of these kinds by hard links (fast, no copies)."""
    st = Store(path)
    for d in source.root.iterdir():
        if d.name.startswith(tuple(kinds)) and (d / "manifest.json").exists():
            (st.root / d.name).mkdir(parents=True)
            for f in d.iterdir():
                os.link(f, st.root / d.name / f.name)
    return st


def wandb_history(run_dir) -> list[dict]:
    """The history rows of the offline W&B run in `run_dir`, read from its .wandb file (a LevelDB-style log
    of protobuf records: 7-byte file header, 32 KiB blocks, records of crc32 / length / type)."""
    import glob
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    path, = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "*.wandb"))
    data = open(path, "rb").read()
    assert data[:4] == b":W&B", path
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's trailer: too short for a record header
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # full, or last of a split record
            r = pb.Record()
            r.ParseFromString(buf)
            buf = b""
            if r.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return rows


BARE_CUDA_MACHINE = ("torch", "transformers", "pyarrow", "numpy", "numba")  # what a lent CUDA machine has


def bare_venv(path: Path, roots=BARE_CUDA_MACHINE) -> Path:
    """A venv holding only `roots` and what they require (their installed copies, linked from this venv): a
    machine without package registries, such as the lent CUDA machine. Returns its python."""
    import re
    import subprocess
    import sys
    from importlib import metadata

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(Path(path).glob("lib/python3*/site-packages"))
    seen, todo = set(), list(roots)
    while todo:
        name = re.split(r"[^A-Za-z0-9._-]", todo.pop())[0].lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += [r.split(";")[0].strip() for r in dist.requires or [] if "extra ==" not in r]
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith(("..", "bin"))}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site / top).exists():
                os.symlink(src, site / top)
    return Path(path) / "bin" / "python"
